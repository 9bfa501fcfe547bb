"""The console commands (reszoo_cli): they run from any folder and refuse a foreign package
named training."""

import json
import os
import pathlib
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_console_commands_run_from_any_folder_and_refuse_a_foreign_training_package(tmp_path):
    """reszoo-train, reszoo-export, reszoo-predict, reszoo-serve and reszoo-validate (setup.py's
    entry points)."""
    bin_dir = pathlib.Path(sys.executable).parent
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = lambda command, *args, **extra: subprocess.run([str(bin_dir / command), *map(str, args)], cwd=tmp_path,
                                                        env={**env, **extra}, capture_output=True, text=True,
                                                        timeout=600)
    trained = run("reszoo-train", "--epochs=1", "--model_args=base_width=4", "--model_dir=run")
    assert trained.returncode == 0, trained.stderr[-2000:]
    exported = run("reszoo-export", "--model_dir=run", "--export_dir=saved")
    assert exported.returncode == 0 and (tmp_path / "saved" / "resnet20_digits" / "1" / "saved_model.pb").exists()
    from PIL import Image

    from reszoo.datasets import load_digits

    (_, _), (x, _), _ = load_digits()
    Image.fromarray((x[0, ..., 0] * 15).astype("uint8")).save(tmp_path / "digit.png")
    predicted = run("reszoo-predict", "--saved_model=saved/resnet20_digits", "--top=2", "digit.png")
    assert predicted.returncode == 0 and predicted.stdout.splitlines()[0] == "digit.png"
    assert len(predicted.stdout.splitlines()) == 3
    helped = run("reszoo-serve", "--help")
    assert helped.returncode == 0 and "--model_base_path" in helped.stdout
    validated = run("reszoo-validate", "--model_dir=saved/resnet20_digits", "--results_csv=v.csv")
    assert validated.returncode == 0, validated.stderr[-2000:]
    top1 = json.loads((tmp_path / "run" / "results.json").read_text())["test_accuracy"]
    assert f"top-1 {100 * top1:.2f}%" in validated.stdout
    fake = tmp_path / "elsewhere" / "training"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    shadowed = run("reszoo-train", PYTHONPATH=str(fake.parent))
    assert shadowed.returncode == 1 and "Traceback" not in shadowed.stderr
    assert shadowed.stderr.strip().splitlines()[-1].startswith(
        f"reszoo: error: the package 'training' at {fake / '__init__.py'} is not reszoo's")
