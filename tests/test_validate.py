"""reszoo-validate: its numbers equal the training's own evaluation and a direct computation,
for a run folder, a .keras file and a SavedModel; the eval transform (crop_pct, test_size)
is timm's; the CSV gains one row a run; bad input is one line."""

import csv
import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from reszoo.datasets import load_digits
from training import validation

ARGS = ["--epochs=2", "--batch_size=64", "--model_args=base_width=4", "--seed=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, train):
    folder = tmp_path_factory.mktemp("validate") / "run"
    proc = train(*ARGS, f"--model_dir={folder}", "--export", f"--export_dir={folder.parent / 'saved'}",
                 "--checkpoint_hist=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def test_a_run_a_keras_file_and_its_export_measure_what_training_reported(run, tmp_path):
    reported = json.loads((run / "results.json").read_text())
    model = keras.saving.load_model(run / "last.keras", compile=False)
    _, (x, y), _ = load_digits()
    logits = model.predict(x.astype("float32"), verbose=0)
    expected_top5 = 100 * np.mean([label in np.argsort(-row)[:5] for row, label in zip(logits, y)])
    lines = []
    rows = []
    for source in [validation.load_source(str(run), "last", None),
                   validation.load_source(str(run / "last.keras"), "last", None),
                   validation.load_source(str(run.parent / "saved" / "resnet20_digits"), "last", None)]:
        row = validation.run(source, results_csv=str(tmp_path / "v.csv"), say=lines.append)
        rows.append(row)
        assert float(row["top1"]) == pytest.approx(100 * reported["test_accuracy"], abs=1e-3)
        assert float(row["top5"]) == pytest.approx(expected_top5, abs=1e-3)
        loss = float(np.mean(keras.losses.categorical_crossentropy(np.eye(10)[y], logits, from_logits=True)))
        assert float(row["loss"]) == pytest.approx(loss, abs=2e-4)
        per_class = [np.mean(logits[y == c].argmax(1) == c) for c in range(10)]
        np.testing.assert_allclose(row["per_class"], per_class, atol=1e-9)
    assert f"top-1 {100 * reported['test_accuracy']:.2f}%" in "\n".join(lines)
    with open(tmp_path / "v.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 3 and list(table[0]) == list(validation.COLUMNS)
    assert [r["source"] for r in table][0] == str(run) and table[0]["param_count"] == str(rows[0]["param_count"])


def test_crop_pct_and_test_size_are_timms_eval_transform():
    """Resize to floor(size / crop_pct), then the central size crop: timm's transforms_factory
    with crop_mode=center, checked on an image whose pixels say where they came from."""
    image = np.arange(40 * 40, dtype="float32").reshape(1, 40, 40, 1)
    out = validation.eval_images(image, 32, 0.8, "nearest").numpy()
    assert out.shape == (1, 32, 32, 1)
    np.testing.assert_array_equal(out, image[:, 4:36, 4:36])
    bigger = validation.eval_images(image, 48, 1.0, "bilinear").numpy()
    np.testing.assert_allclose(bigger, tf.image.resize(image, (48, 48)).numpy())


def test_a_larger_test_size_runs_the_convolutional_net_at_that_size(run):
    source = validation.load_source(str(run), "last", None)
    row = validation.run(source, test_size=12, say=lambda line: None)
    assert row["img_size"] == 12 and 0 <= float(row["top1"]) <= 100


def test_test_time_pooling_is_timms_head_above_the_tested_size_at_crop_pct_1(run):
    """--test_pool: the head is checked against timm's TestTimePoolHead in test_timm_checkpoints;
    here, that validate puts it on where timm's validate.py does, with windows of the map of
    the tested size (8 px digits, stride 4: 2x2 cells) and crop_pct 1."""
    from reszoo import transfer

    source = validation.load_source(str(run), "last", None)
    lines = []
    row = validation.run(source, test_size=12, test_pool=True, say=lines.append)
    assert "validate: test-time pooling: the classifier on every 2x2 window of the feature map (8x8 images), " \
           "logits' mean of average and maximum" in lines
    by_hand = validation.run(validation.keras_source(transfer.test_time_pool(source.model, 2), "pooled"), test_size=12,
                           crop_pct=1.0, say=lambda line: None)
    plain = validation.run(source, test_size=12, say=lambda line: None)
    assert (row["top1"], row["loss"], row["crop_pct"]) == (by_hand["top1"], by_hand["loss"], "1")
    assert row["loss"] != plain["loss"]
    lines.clear()
    same = validation.run(source, test_pool=True, say=lines.append)
    assert lines[0] == ("validate: --test_pool: 8x8 is not above the 8x8 the weights are tested at, so no test-time "
                        "pooling") and same["loss"] == validation.run(source, say=lambda line: None)["loss"]


def test_average_measures_the_mean_of_a_runs_last_checkpoints(run, tmp_path, usage_errors):
    """--average=N: timm's avg_checkpoints.py (every float variable, BN statistics included, the
    mean of the newest N generations), measured and, with --save_average, written."""
    generations = sorted((run / "backup").iterdir())
    assert [g.name for g in generations] == ["epoch-000001", "epoch-000002"]  # --checkpoint_hist=3 kept both
    weights = [keras.saving.load_model(g / "checkpoint.keras", compile=False).get_weights() for g in generations]
    mean = [(a.astype("float64") + b) / 2 for a, b in zip(*weights)]
    source = validation.load_source(str(run), "last", None, average=2, save_average=str(tmp_path / "avg.keras"))
    assert source.where == f"{run} (average of epochs 1-2)"
    saved = keras.saving.load_model(tmp_path / "avg.keras", compile=False)
    for got, want, last in zip(saved.get_weights(), mean, weights[1]):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert any(not np.array_equal(a, b) for a, b in zip(saved.get_weights(), weights[1]))
    row = validation.run(source, say=lambda line: None)
    assert row["loss"] == validation.run(validation.keras_source(saved, "saved"), say=lambda line: None)["loss"]
    model = f"--model_dir={run}"
    cases = [([model, "--average=3"], f"--average=3: {run} keeps 2 checkpoint generation(s) (after epochs 1, 2); "
                                      "train it with --checkpoint_hist=3 or more to keep as many"),
             ([model, "--average=2", "--checkpoint=best"], "give one"),
             ([model, f"--save_average={tmp_path / 'x.keras'}"], "--save_average writes the model --average=N makes"),
             ([model, "--average=2", f"--save_average={tmp_path / 'avg.keras'}"], "exists; give a new file"),
             (["--weights=timm/resnet50.a1_in1k", "--average=2"], "averages a run's checkpoints: give --model_dir")]
    said = usage_errors([(args + [f"--results_csv={tmp_path / 'r.csv'}"], {}) for args, _ in cases],
                        command="training.validate")
    for (code, stderr), (_, expected) in zip(said, cases):
        lines = [line for line in stderr.splitlines() if line.startswith("validate:")]
        assert code == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in stderr, stderr
    assert not (tmp_path / "r.csv").exists() and not (tmp_path / "x.keras").exists()


def test_the_command_writes_its_csv_row_and_confusion_png_and_bad_input_is_one_line(run, tmp_path):
    from conftest import run_command

    shutil.copytree(run, tmp_path / "run")
    ok = run_command("training.validate", f"--model_dir={tmp_path / 'run'}")
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert len((tmp_path / "run" / "validate.csv").read_text().splitlines()) == 2
    png = tf.io.decode_png((tmp_path / "run" / "confusion.png").read_bytes())
    assert png.shape[0] > 200 and png.shape[1] > 200
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    for args, expected in [([], "give --model_dir"), ([f"--model_dir={tmp_path / 'nothing'}"], "no such file"),
                           ([f"--model_dir={tmp_path / 'run'}", "--weights=timm/resnet50.a1_in1k"], "not both"),
                           ([f"--model_dir={tmp_path / 'run'}", f"--results_csv={tmp_path / 'other.csv'}"],
                            "has other columns"),
                           ([f"--model_dir={tmp_path}"], "neither a run folder")]:
        proc = run_command("training.validate", *args)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        said = [line for line in proc.stderr.splitlines() if line.startswith("validate:")]
        assert len(said) == 1 and expected in said[0] and "Traceback" not in proc.stderr, proc.stderr
    assert (tmp_path / "other.csv").read_text() == "a,b\n1,2\n"


def test_outputs_sizes_and_datasets_that_cannot_work_are_one_line_before_anything_is_measured(
        run, tmp_path, usage_errors):
    """A results CSV that is a folder (or in no folder), a size that cannot fit in memory or
    past the resize limit, a folder dataset with no folder: exit 2, one line, nothing written."""
    (tmp_path / "results").mkdir()
    model = f"--model_dir={run}"
    cases = [([model, f"--results_csv={tmp_path / 'results'}"], "--results_csv={} is a folder; give a file path"),
             ([model, f"--results_csv={tmp_path / 'no' / 'v.csv'}"], f"its folder {tmp_path / 'no'} does not exist"),
             ([model, "--test_size=4096", f"--results_csv={tmp_path / 'a.csv'}"],
              "--test_size=4096: a batch of 64 images at 4096x4096 needs about 52.0 GiB"),  # 4-wide ResNet-20
             ([model, "--crop_pct=0.001", f"--results_csv={tmp_path / 'b.csv'}"],
              "--test_size=8 with --crop_pct=0.001 resizes images to 8000x8000 before the crop, over the 4096 limit"),
             ([model, "--dataset=folder", f"--results_csv={tmp_path / 'c.csv'}"],
              "--dataset=folder needs --data_dir=FOLDER, a folder of class sub-folders of images")]
    said = usage_errors([(args, {}) for args, _ in cases], command="training.validate")
    for (code, stderr), (_, expected) in zip(said, cases):
        lines = [line for line in stderr.splitlines() if line.startswith("validate:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in stderr, stderr
        assert lines[0].startswith("validate: error: ") and expected.format(tmp_path / "results") in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # no CSV, no confusion matrix
    assert not any((tmp_path / "results").iterdir())


def _row(model):
    return {column: model if column == "model" else "1" for column in validation.COLUMNS}


def test_two_validates_appending_to_one_csv_each_keep_their_row(tmp_path, monkeypatch):
    """The first append is held between writing its new copy and renaming it into place (the
    window where a second one would read the old file and one row be lost): the second waits
    for the folder's lock, and both rows are kept."""
    import glob
    import os
    import threading
    import time

    path = tmp_path / "v.csv"
    validation.append_row(str(path), _row("zero"))
    monkeypatch.setenv("RESZOO_TEST_PAUSE", "rename:v.csv")
    first = threading.Thread(target=validation.append_row, args=(str(path), _row("one")))
    first.start()
    deadline = time.time() + 30
    while not glob.glob(str(tmp_path / ".tmp-*-v.csv.paused")) and time.time() < deadline:
        time.sleep(0.01)
    marker, = glob.glob(str(tmp_path / ".tmp-*-v.csv.paused"))
    second = threading.Thread(target=validation.append_row, args=(str(path), _row("two")))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting for the first to finish
    os.remove(marker)
    first.join(30)
    second.join(30)
    with open(path) as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["zero", "one", "two"]
    assert not glob.glob(str(tmp_path / ".tmp-*"))


APPEND = r'''
import sys
from training import validation
validation.append_row(sys.argv[1], {c: "killed" if c == "model" else "1" for c in validation.COLUMNS})
'''


def test_a_validate_killed_while_writing_its_csv_leaves_nothing_the_next_one_keeps(tmp_path):
    """SIGKILLed with its new copy complete under a temporary name: the CSV is the old one,
    and the next append removes the dead process's temporary file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    path = tmp_path / "v.csv"
    validation.append_row(str(path), _row("before"))
    old = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", APPEND, str(path)], cwd=ROOT,
                            env={**os.environ, "RESZOO_TEST_PAUSE": "rename:v.csv"})
    deadline = time.time() + 60
    while not list(tmp_path.glob(".tmp-*-v.csv.paused")) and time.time() < deadline:
        assert proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert path.read_bytes() == old and (tmp_path / f".tmp-{proc.pid}-v.csv").exists()
    validation.append_row(str(path), _row("after"))
    with open(path) as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["before", "after"]
    assert not (tmp_path / f".tmp-{proc.pid}-v.csv").exists()
