"""reszoo-train's flags: usage errors in one line with exit code 2, every validator, recipes
filling unset flags, --model_args as literals."""

import keras
import pytest


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
