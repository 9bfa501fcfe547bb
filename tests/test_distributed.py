"""Training across processes: two workers on localhost (MultiWorkerMirroredStrategy) train
together and the chief writes; the custom loop's step equals model.fit's."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import ROOT, free_port


def _two_workers(model_dir, *flags):
    """Two training processes on localhost, one cluster through TF_CONFIG."""
    cluster = {"worker": [f"localhost:{free_port()}", f"localhost:{free_port()}"]}
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "training.train", "--distribution_strategy=multi_worker_mirrored",
             f"--model_dir={model_dir}", *flags],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        outs.append(out)
    return outs


def _checksum(out):
    return [l for l in out.splitlines() if "replicas in sync" in l]


@pytest.mark.xdist_group("multiworker")
def test_two_workers_on_localhost_train_together_and_the_chief_writes(tmp_path):
    flags = ["--model_args=base_width=8", "--epochs=5", "--batch_size=64"]
    chief, worker = _two_workers(tmp_path, *flags)
    # Both replicas end with the same weights, BN statistics included, and report the same test accuracy.
    assert _checksum(chief) == _checksum(worker) and len(_checksum(chief)) == 1
    assert "2 replicas in sync" in _checksum(chief)[0]
    accuracy = [l for l in chief.splitlines() if l.startswith("test accuracy")]
    assert accuracy == [l for l in worker.splitlines() if l.startswith("test accuracy")]
    # Only the chief writes: one history, one epoch log on stdout.
    assert sum(l.startswith("epoch ") for l in chief.splitlines()) == 5
    assert not any(l.startswith("epoch ") for l in worker.splitlines())
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 1 + 5
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_accuracy"] >= 0.85  # 0.92 measured at 5 epochs
    from reszoo.datasets import load_digits
    (_, _), (x_test, y_test), _ = load_digits()
    model = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    predicted = model.predict(x_test.astype("float32"), verbose=0).argmax(1)
    assert (predicted == y_test).mean() == pytest.approx(results["test_accuracy"], abs=1e-6)
    # The same command again resumes both workers from the chief's checkpoint: nothing to train.
    again = _two_workers(tmp_path, *flags)
    assert all(f"resuming {tmp_path} from epoch 5" in out for out in again)
    assert _checksum(again[0]) == _checksum(chief)


@pytest.mark.xdist_group("multiworker")
def test_two_workers_train_a_recipe_s_parts_and_save_the_average(tmp_path):
    """EMA, mixup / CutMix, TrivialAugment, BCE and FixRes through the multi-worker loop: the
    replicas agree, and the saved model is the weights' average, as with fit."""
    flags = ["--model_args=base_width=8", "--epochs=2", "--batch_size=64", "--ema_decay=0.9", "--mixup_alpha=0.2",
             "--cutmix_alpha=1.0", "--auto_augment=trivialaugment", "--loss=bce", "--train_size=0.75"]
    chief, worker = _two_workers(tmp_path, *flags)
    assert _checksum(chief) == _checksum(worker) and "2 replicas in sync" in _checksum(chief)[0]
    results = json.loads((tmp_path / "results.json").read_text())
    from reszoo.datasets import load_digits
    (_, _), (x_test, y_test), _ = load_digits()
    model = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    predicted = model.predict(x_test.astype("float32"), verbose=0).argmax(1)
    assert (predicted == y_test).mean() == pytest.approx(results["test_accuracy"], abs=1e-6)
    checkpoint = keras.saving.load_model(tmp_path / "backup" / "epoch-000001" / "checkpoint.keras")
    checkpoint.optimizer.build(checkpoint.trainable_variables)
    checkpoint.load_weights(tmp_path / "backup" / "epoch-000001" / "checkpoint.keras")
    averages = checkpoint.optimizer._model_variables_moving_average
    assert max(float(np.abs(np.asarray(a) - np.asarray(v)).max())
               for a, v in zip(averages, checkpoint.trainable_variables)) > 1e-3


@pytest.mark.parametrize("recipe", ["sgd_ce", "lamb_bce_ema"])
def test_custom_loop_step_equals_a_model_fit_step(recipe):
    """The multi-worker loop computes what fit computes: same loss (smoothed cross-entropy or
    BCE, + L2), same update (SGD, or LAMB with EMA), same BN statistics, under the default
    strategy."""
    import tensorflow as tf

    import reszoo
    from reszoo import optim
    from training import loop

    def build():
        keras.utils.set_random_seed(1)
        model = reszoo.create_model("resnet20", depth=8, input_shape=(8, 8, 1), num_classes=4, base_width=4,
                                    kernel_regularizer=keras.regularizers.L2(1e-3))
        if recipe == "sgd_ce":
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                          loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1))
        else:
            model.compile(optimizer=optim.make_optimizer("lamb", 0.01, weight_decay=0.01, model=model, ema_decay=0.5),
                          loss=optim.make_loss("bce", 0.1, 0.2))
        return model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 16)]
    fitted = build()
    fitted.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    custom = build()
    steps = loop.CustomLoop(tf.distribute.get_strategy(), custom, 16)
    batch = tf.data.Dataset.from_tensors((x, y))
    for _ in range(2):
        for b in steps._distribute(batch):
            steps._train_step(b)
    custom.optimizer.finalize_variable_values(custom.trainable_variables)  # as fit does at its end (EMA)
    for a, b in zip(fitted.variables + fitted.optimizer.variables, custom.variables + custom.optimizer.variables,
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5, err_msg=a.path)
    expected = fitted.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert steps.evaluate(batch)["loss"] == pytest.approx(expected - sum(float(l) for l in fitted.losses), rel=1e-4)
