"""training.train: the CLI as users run it (subprocesses), plus its parts in-process."""

import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from conftest import ROOT

SMALL = ["--model_args=base_width=8", "--batch_size=64"]


def _error_lines(proc):
    return [l for l in proc.stderr.splitlines() if l.startswith("train: error:")]


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


def test_fine_tune_errors_name_the_problem(tmp_path, usage_errors):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a model")
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(3, name="fc")])
    model.save(tmp_path / "cifar_shaped.keras")
    said = usage_errors([([f"--init_from={bad}", "--epochs=1", f"--model_dir={tmp_path / 'x'}"], {}),
                         ([f"--init_from={tmp_path / 'missing.keras'}", f"--model_dir={tmp_path / 'y'}"], {}),
                         ([f"--init_from={tmp_path / 'cifar_shaped.keras'}", f"--model_dir={tmp_path / 'z'}"], {})])
    lines = [[l for l in stderr.splitlines() if l.startswith("train: error:")] for _, stderr in said]
    assert said[0][0] == 1 and "is not a .keras file, or is truncated" in lines[0][0]
    assert said[1][0] == 2 and "no such file" in lines[1][0]
    assert said[2][0] == 2 and "avg_pool" in lines[2][0]


CLI_ERRORS = [
    (["--batch_size=0"], {}, "batch_size"),
    (["--dataset=cifar10", "--data_dir=/nonexistent/tfds"], {}, "tfds build cifar10"),
    (["--dataset=no_such_dataset_xyz"], {}, "unknown dataset"),
    (["--dataset=folder", "--data_dir=/nonexistent"], {}, "not a folder"),
    (["--model=resnet5"], {}, "did you mean"),
    (["--model_args=depth=57"], {}, "depth must be 6n+2"),
    (["--distribution_strategy=multi_worker_mirrored"], {}, "needs the TF_CONFIG"),
    (["--freeze=backbone"], {}, "need --init_from"),
    (["--batch_size=5000"], {}, "larger than the 1438 training images"),
    (["--distribution_strategy=multi_worker_mirrored"], {"TF_CONFIG": "{cluster: none"}, "TF_CONFIG is not valid JSON"),
]


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, usage_errors, train):
    said = usage_errors([(args + [f"--model_dir={tmp_path / str(i)}"], env)
                         for i, (args, env, _) in enumerate(CLI_ERRORS)])
    for (args, env, message), (code, stderr) in zip(CLI_ERRORS, said, strict=True):
        _assert_usage_error(code, stderr, message)
        assert not (tmp_path / str(CLI_ERRORS.index((args, env, message)))).exists(), args
    # and once as a user meets it, in a process of its own
    proc = train("--model_args=depth=57", f"--model_dir={tmp_path / 'run'}", timeout=120)
    _assert_usage_error(proc.returncode, proc.stderr, "depth must be 6n+2")


def _assert_usage_error(code, stderr, message):
    assert code == 2, (message, stderr[-2000:])
    lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "I0000", "E0000", "W0000"))]
    assert len(lines) == 1 and message in lines[0], (message, stderr[-2000:])
    assert "Traceback" not in stderr


@pytest.fixture
def flags():
    from training import flags as run_flags
    import training.train  # noqa: F401  (defines the flags)

    yield run_flags
    run_flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("flag", [
    "--batch_size=0", "--epochs=0", "--train_steps=-1", "--learning_rate=-0.1", "--momentum=1.5",
    "--weight_decay=-1", "--lr_schedule=linear", "--lr_decay_epochs=ten", "--lr_decay_rate=2",
    "--warmup_epochs=-1", "--warmup=exp", "--lr_batch_base=-256", "--label_smoothing=1.0",
    "--augment=mixup", "--dtype=float64", "--distribution_strategy=horovod",
    "--distribution_strategy=tpu", "--seed=-1", "--eval_every=0", "--recipe=he2099",
    "--optimizer=adagrad", "--model_args=depth", "--validation_split=1.5", "--image_size=-8",
    "--steps_per_execution=0", "--backbone_lr_multiplier=-1", "--export_formats=pmml", "--no_such_flag=1",
    "--learning_rate=nan", "--learning_rate=inf", "--weight_decay=nan", "--image_size=100000",
    "--worker_timeout=0",
])
def test_every_flag_validator_rejects_a_bad_value(flags, capsys, flag):
    with pytest.raises(SystemExit) as exit_info:
        flags.parse(["train", flag])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train: error:")


def test_recipe_fills_unset_flags_and_explicit_flags_win(flags):
    flags.parse(["train", "--recipe=he2015_cifar", "--batch_size=32", "--model=resnet110"])
    flags.apply_recipe()
    f = flags.FLAGS
    assert f.batch_size == 32  # explicit
    assert (f.epochs, f.learning_rate, f.weight_decay, f.lr_schedule) == (164, 0.1, 1e-4, "step")
    assert f.lr_decay_epochs == ["82", "123"] and f.augment == "crop_flip"
    assert (f.warmup_epochs, f.warmup) == (1.0, "constant")  # ResNet-110's warm-up


def test_model_args_are_parsed_as_literals(flags):
    flags.parse(["train", "--model_args=drop_path_rate=0.1,shortcut=B,zero_init_last_bn=True"])
    assert flags.model_args(flags.options().model_args) == {
        "drop_path_rate": 0.1, "shortcut": "B", "zero_init_last_bn": True}


def test_schedule_step_cosine_and_warmup_values():
    from reszoo.optim import Schedule

    step = Schedule(0.1, 1000, "step", boundaries=[500, 750], warmup_steps=10, warmup="constant")
    values = [float(step(s)) for s in (0, 9, 10, 499, 500, 749, 750, 999)]
    np.testing.assert_allclose(values, [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
    cosine = Schedule(0.2, 110, "cosine", warmup_steps=10)
    np.testing.assert_allclose([float(cosine(s)) for s in (0, 4, 10, 60, 110)],
                               [0.02, 0.1, 0.2, 0.1, 0.0], rtol=1e-5, atol=1e-7)
    assert Schedule.from_config(step.get_config()).get_config() == step.get_config()


def test_adamw_decays_kernels_only_and_lr_multipliers_scale_updates():
    import reszoo
    from reszoo import optim

    model = reszoo.create_model("resnet20", base_width=4)
    optimizer = optim.make_optimizer("adamw", 0.1, weight_decay=0.5, model=model)
    before = [v.numpy().copy() for v in model.trainable_variables]
    optimizer.apply([np.zeros(v.shape, "float32") for v in model.trainable_variables], model.trainable_variables)
    for v, b in zip(model.trainable_variables, before):
        if optim.is_kernel(v):
            np.testing.assert_allclose(v.numpy(), b * (1 - 0.1 * 0.5), rtol=1e-6)
        else:
            np.testing.assert_array_equal(v.numpy(), b)

    fc = model.get_layer("fc").kernel
    sgd = optim.make_optimizer("sgd", 0.1, momentum=0.0, lr_multipliers={fc.path: 0.25})
    before = [v.numpy().copy() for v in model.trainable_variables]
    sgd.apply([np.ones(v.shape, "float32") for v in model.trainable_variables], model.trainable_variables)
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_allclose(b - v.numpy(), 0.025 if v is fc else 0.1, rtol=1e-5)


def test_tfds_dataset_through_mock_data():
    import tensorflow_datasets as tfds

    from training import data as data_lib

    with tfds.testing.mock_data(num_examples=96):
        data = data_lib.load("cifar10")
        batches = list(data_lib.train_pipeline(data, 32, "auto", 0, 0, 2).as_numpy_iterator())
    assert data.image_shape == (32, 32, 3) and data.num_classes == 10 and data.num_train == 96
    assert len(batches) == 6 and batches[0][0].shape == (32, 32, 32, 3) and batches[0][1].shape == (32, 10)
    assert data.default_augment == "crop_flip"
    np.testing.assert_allclose(data.mean, data.train[0].reshape(-1, 3).mean(0), rtol=1e-5)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    from training import data as data_lib

    data = data_lib.load("digits")
    full = list(data_lib.train_pipeline(data, 64, "crop", 5, 0, 3).as_numpy_iterator())
    tail = list(data_lib.train_pipeline(data, 64, "crop", 5, 1, 3).as_numpy_iterator())
    per_epoch = data.num_train // 64  # 1438 is not a multiple of 64: batches must not span epochs
    assert len(full) == 3 * per_epoch and len(tail) == 2 * per_epoch
    for (xa, ya), (xb, yb) in zip(full[per_epoch:], tail):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(full[0][1], full[per_epoch][1])  # reshuffled every epoch
    # The crop augmentation moved pixels: batch images are not the raw digits.
    assert not any(np.array_equal(full[0][0][0], x) for x in data.train[0][:200].astype("float32"))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_workers(model_dir, *flags):
    """Two training processes on localhost, one cluster through TF_CONFIG."""
    cluster = {"worker": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
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


def test_pipelines_run_without_tf_data_autotuning():
    """Autotuning rounds every iterator's life up to its next wake-up (1.27, 2.55, ... s), so a
    Keras evaluate of 1.1 s took 2.55 s; the pipelines turn it off (benchmarks/pipeline.py)."""
    import dataclasses

    import tensorflow as tf

    from training import data as data_lib

    data = data_lib.load("digits")
    pipelines = [data_lib.train_pipeline(data, 32, "auto", 0, 0, 2), data_lib.eval_pipeline(data, 32)]
    assert [ds.options().autotune.enabled for ds in pipelines] == [False, False]
    x, y = data.train
    streamed = dataclasses.replace(data, train=tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)))
    assert data_lib.train_pipeline(streamed, 32, "auto", 0, 0, 2).options().autotune.enabled is False


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
