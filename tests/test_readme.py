"""README's generated parts and set-up commands stay true."""

import importlib.util
import re

import pytest

from conftest import ROOT


def _tables_module():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_are_generated_from_the_registry_and_flags(registered):
    tables = _tables_module()
    text = (ROOT / "README.md").read_text()
    fresh = tables.render(text, tables.tables(build=registered))
    assert fresh == text, "README tables are stale: run python scripts/readme_tables.py"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(pip install -e .*)$", readme, re.M)
    assert len(commands) >= 2, "README must give the install+run and install+test commands"
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def _commands_after(heading, page="docs/transfer.md"):
    """The shell commands of the first code block after ``heading``, continuations joined."""
    text = (ROOT / page).read_text()
    block = re.search(r"```\n(.*?)```", text[text.index(heading):], re.S).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_the_fine_tuning_example_runs_as_written(tmp_path):
    """README's set-up command trains the digits model; the fine-tuning example of the docs then trains
    on my_images/, a folder of grey images of another size (upscaled digits of 5 classes)."""
    import os
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    from reszoo.datasets import load_digits

    (x, y), _, _ = load_digits()
    for digit in range(5):
        folder = tmp_path / "my_images" / f"digit{digit}"
        folder.mkdir(parents=True)
        for i, image in enumerate(x[y == digit][:30]):
            Image.fromarray((image[..., 0] * 15).astype("uint8")).resize((20, 20)).save(folder / f"{i}.png")
    readme = (ROOT / "README.md").read_text()
    setup = re.search(r"^pip install -e .* && (python -m training\.train)$", readme, re.M).group(1)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    printed = []
    for command in [setup, *_commands_after("## From the command line")]:
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        printed.append(proc.stdout)
    import json

    import keras

    import reszoo  # noqa: F401

    default = tmp_path / "runs" / "resnet20-digits"  # the main job: 30 epochs of ResNet-20 on the digits
    results = json.loads((default / "results.json").read_text())
    assert results["test_accuracy"] >= 0.95  # 99.2% measured
    assert results["model"] == "resnet20" and results["dataset"] == "digits"
    assert f"test accuracy {results['test_accuracy']:.4f}" in printed[0]
    for name in ("last.keras", "best.keras", "history.csv", "flags.json", "logs"):
        assert (default / name).exists(), name
    assert len((default / "history.csv").read_text().splitlines()) == 1 + 30
    digits = keras.saving.load_model(default / "last.keras", compile=False)
    assert digits.layers[1].name == "preprocess"  # the saved model takes raw pixels
    (_, _), (x_test, y_test), _ = load_digits()
    accuracy = (digits.predict(x_test.astype("float32"), verbose=0).argmax(1) == y_test).mean()
    assert accuracy == pytest.approx(results["test_accuracy"], abs=1e-6)
    results = json.loads((tmp_path / "runs" / "resnet20-my_images" / "results.json").read_text())
    assert results["class_names"] == [f"digit{d}" for d in range(5)]
    assert results["test_accuracy"] >= 0.6  # 73% measured, 20% by chance (and before re-standardising)
    assert "standardisation: this dataset's mean" in printed[1]
    tuned = keras.saving.load_model(tmp_path / "runs" / "resnet20-my_images" / "last.keras", compile=False)
    assert tuned.input_shape == (None, 8, 8, 1) and tuned.output_shape == (None, 5)
    for layer in digits.layers[1:-1]:  # --freeze=backbone: every weight as the digits model has it
        for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    _check_the_serving_example(tmp_path, env)


def _check_the_serving_example(tmp_path, env):
    """README's Serving block, as one shell script after the set-up command (its run folder):
    the export is served, its status and its answer for the digit are printed."""
    import json
    import subprocess

    from training.predict import predict

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", text[text.index("## Serving"):], re.S).group(1)
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + block
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status, _, answer = proc.stdout.partition('{"predictions"')
    assert json.loads(status[status.index("{"):]) == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    served = json.loads('{"predictions"' + answer)["predictions"][0]
    (_, top), = predict(str(tmp_path / "saved_models" / "resnet20_digits"), [str(tmp_path / "digit.png")])
    assert "export: model_int8.xml: int8 top-1 " in proc.stdout
    assert served["top_k_names"][0] == top[0][0]  # OpenVINO's int8 answer, the float32 SavedModel's class
    assert served["top_k_scores"][0] == pytest.approx(top[0][1], abs=0.05)


def _python_blocks(heading, page="docs/transfer.md"):
    """The python code blocks of a page's section ``heading`` (up to the next "## ")."""
    text = (ROOT / page).read_text()
    section = text[text.index(heading):]
    section = section[: section.find("\n## ", len(heading))]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_weights_and_transfer_examples_run_as_written(tmp_path, monkeypatch, capsys):
    """Each block runs in one namespace, from a folder holding the digits run of the set-up
    command (trained 2 epochs here, not 30)."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "training.train", "--epochs=2"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks("## Weights") + _python_blocks("## Transfer learning")
    assert len(blocks) == 3
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.split()
    assert printed[:3] == ["{'num_classes':", "3}", "269267"]  # the comment in README
    assert 0.0 <= float(printed[3]) <= 1.0
    task = namespace["task"]
    assert task.output_shape == (None, 5) and (tmp_path / "digits0to4.npz").stat().st_size > 0
    assert namespace["reszoo"].model_card(task)["adapters"] == "parallel"


def test_the_backbones_example_prints_what_its_comments_say(capsys):
    (block,) = _python_blocks("## Backbones")
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    comments = [line[2:] for line in block.splitlines() if line.startswith("# ")]
    assert printed == comments


def test_the_short_example_runs_and_the_docs_home_has_the_set_up_commands(capsys):
    readme = (ROOT / "README.md").read_text()
    (block,) = _python_blocks("## At a glance", page="README.md")
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["model"].name == "resnet56" and namespace["backbone"].output_shape == (None, 2048)
    home = (ROOT / "docs" / "index.md").read_text()
    for command in re.findall(r"^(pip install -e .*)$", readme, re.M)[:2]:
        assert command in home.splitlines()


@pytest.mark.slow
def test_the_recipes_example_runs_as_written(tmp_path):
    """README's recipe block: a recipe trains with its augmented batch shown, then
    reszoo-validate prints the run's own test accuracy and writes its CSV and figure."""
    import json
    import os
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(.*?)```", text[text.index("## Recipes and validation"):], re.S).group(1)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    printed = []
    for command in [line for line in block.splitlines() if line.strip()]:
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        printed.append(proc.stdout)
    run = tmp_path / "runs" / "tricks-digits"
    assert "learning rate 0.025 = 0.1 x 64/256, linear scaling" in printed[0]
    top1 = json.loads((run / "results.json").read_text())["test_accuracy"]
    assert f"top-1 {100 * top1:.2f}%" in printed[1]
    for name in ("batch.png", "validate.csv", "confusion.png"):
        assert (run / name).stat().st_size > 0, name
