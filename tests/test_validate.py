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
from training import validate

ARGS = ["--epochs=2", "--batch_size=64", "--model_args=base_width=4", "--seed=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, train):
    folder = tmp_path_factory.mktemp("validate") / "run"
    proc = train(*ARGS, f"--model_dir={folder}", "--export", f"--export_dir={folder.parent / 'saved'}")
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
    for source in [validate.load_source(str(run), "last", None),
                   validate.load_source(str(run / "last.keras"), "last", None),
                   validate.load_source(str(run.parent / "saved" / "resnet20_digits"), "last", None)]:
        row = validate.run(source, results_csv=str(tmp_path / "v.csv"), say=lines.append)
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
    assert len(table) == 3 and list(table[0]) == list(validate.COLUMNS)
    assert [r["source"] for r in table][0] == str(run) and table[0]["param_count"] == str(rows[0]["param_count"])


def test_crop_pct_and_test_size_are_timms_eval_transform():
    """Resize to floor(size / crop_pct), then the central size crop: timm's transforms_factory
    with crop_mode=center, checked on an image whose pixels say where they came from."""
    image = np.arange(40 * 40, dtype="float32").reshape(1, 40, 40, 1)
    out = validate.eval_images(image, 32, 0.8, "nearest").numpy()
    assert out.shape == (1, 32, 32, 1)
    np.testing.assert_array_equal(out, image[:, 4:36, 4:36])
    bigger = validate.eval_images(image, 48, 1.0, "bilinear").numpy()
    np.testing.assert_allclose(bigger, tf.image.resize(image, (48, 48)).numpy())


def test_a_larger_test_size_runs_the_convolutional_net_at_that_size(run):
    source = validate.load_source(str(run), "last", None)
    row = validate.run(source, test_size=12, say=lambda line: None)
    assert row["img_size"] == 12 and 0 <= float(row["top1"]) <= 100


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
