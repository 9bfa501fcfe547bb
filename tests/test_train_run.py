"""reszoo-train's run as users run it (subprocesses): a loss gone NaN stops with advice that
works, another run's folder is refused, a fine-tuned head learns a new set of classes."""

import json
import re

import keras
import numpy as np
import pytest


SMALL = ["--model_args=base_width=8", "--batch_size=64"]


def _error_lines(proc):
    return [l for l in proc.stderr.splitlines() if l.startswith("train: error:")]


@pytest.mark.slow
def test_nan_loss_stops_with_a_message_whose_advice_works(tmp_path, train):
    good = train(*SMALL, "--epochs=2", f"--model_dir={tmp_path}")
    assert good.returncode == 0, good.stderr[-2000:]
    last = (tmp_path / "last.keras").read_bytes()
    backup = (tmp_path / "backup" / "epoch-000002" / "checkpoint.keras").read_bytes()
    bad = train(*SMALL, "--epochs=4", "--learning_rate=1e30", "--allow_flag_changes", f"--model_dir={tmp_path}")
    assert bad.returncode == 1
    errors = _error_lines(bad)
    assert len(errors) == 1 and "NaN in epoch 3" in errors[0] and "(epoch 2)" in errors[0], bad.stderr[-2000:]
    assert (tmp_path / "last.keras").read_bytes() == last
    assert (tmp_path / "backup" / "epoch-000002" / "checkpoint.keras").read_bytes() == backup
    assert not (tmp_path / "backup" / "epoch-000003").exists()
    # The advice (a lower --learning_rate, with --allow_flag_changes) continues from epoch 2.
    # A tenth of 1e30 would fail again: the advice is never above the default's (or the recipe's) rate.
    advice = re.search(r"re-run with (--learning_rate=\S+) .* and (--allow_flag_changes)", errors[0])
    assert advice and advice.group(1) == "--learning_rate=0.1", errors[0]
    again = train(*SMALL, "--epochs=4", advice.group(1), advice.group(2), f"--model_dir={tmp_path}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming {tmp_path} from epoch 2" in again.stdout
    assert json.loads((tmp_path / "flags.json").read_text())["learning_rate"] == 0.1
    assert [int(l.split(",")[0]) for l in (tmp_path / "history.csv").read_text().splitlines()[1:]] == [0, 1, 2, 3]


def test_model_dir_of_another_run_is_not_overwritten(tmp_path, train):
    assert train(*SMALL, "--epochs=1", f"--model_dir={tmp_path}").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}
    proc = train(*SMALL, "--epochs=1", "--learning_rate=0.05", f"--model_dir={tmp_path}")
    assert proc.returncode == 2
    assert "holds a run with other flags (--learning_rate)" in _error_lines(proc)[0]
    assert before == {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.is_file()}


def test_fine_tune_to_a_different_set_of_classes(tmp_path, train, digit_folder):
    first = digit_folder(tmp_path / "first", range(5))
    second = digit_folder(tmp_path / "second", range(5, 10))
    common = ["--model_args=base_width=8", "--batch_size=32", "--dataset=folder", "--image_size=8", "--epochs=10"]
    a = train(*common, f"--data_dir={first}", f"--model_dir={tmp_path / 'a'}")
    assert a.returncode == 0, a.stderr[-2000:]
    b = train(*common, f"--data_dir={second}", "--freeze=backbone", "--weight_decay=1e-3",
              f"--init_from={tmp_path / 'a' / 'last.keras'}", f"--model_dir={tmp_path / 'b'}")
    assert b.returncode == 0, b.stderr[-2000:]
    old = keras.saving.load_model(tmp_path / "a" / "last.keras", compile=False)
    new = keras.saving.load_model(tmp_path / "b" / "last.keras", compile=False)
    assert old.output_shape == (None, 5) and new.output_shape == (None, 5)
    # Frozen backbone: every weight, BN moving statistics included, is unchanged.
    for layer in old.layers[:-1]:
        for w_old, w_new in zip(layer.get_weights(), new.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(w_old, w_new)
    assert not np.allclose(old.get_layer("fc").get_weights()[0], new.get_layer("fc").get_weights()[0])
    # SGD weight decay is this run's --weight_decay (L2 of wd/2 on every kernel), not the old run's.
    l2 = {round(float(l.kernel_regularizer.l2), 8) for l in new.layers if getattr(l, "kernel_regularizer", None)}
    assert l2 == {5e-4} and len([l for l in new.layers if hasattr(l, "kernel_regularizer")]) > 5
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["class_names"] == [f"digit{d}" for d in range(5, 10)]
    assert results["test_accuracy"] > 0.5  # 5 unseen classes on frozen features (73.6% measured)
