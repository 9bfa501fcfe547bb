"""reszoo.diagnostics: its numbers equal direct measurements on the same weights, it finds the
residual structure of reszoo's, keras.applications' and keras-hub's nets, and its alarm tells a
plain-56 from a ResNet-56 in the first epoch of a real run."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import reszoo
from reszoo import diagnostics
from reszoo.diagnostics import measures
from reszoo.datasets import load_digits

from conftest import ROOT


@pytest.fixture(scope="module")
def probe():
    _, (x, y), _ = load_digits()
    return x[:64].astype("float32"), y[:64]


def _resnet20():
    keras.utils.set_random_seed(3)
    return reszoo.create_model("resnet20", input_shape=(8, 8, 1), num_classes=10, base_width=8)


def test_gradients_equal_a_gradient_tape_on_the_model_in_training_mode_and_leave_bn_alone(probe):
    x, y = probe
    model = _resnet20()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    found = diagnostics.structure(model)
    kernels = [v for _, v in found.kernels]
    statistics = [np.asarray(v) for v in model.non_trainable_variables]
    ours = diagnostics.gradients(model, loss, x, y, kernels, compiled=True)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(statistics, model.non_trainable_variables))
    with tf.GradientTape() as tape:  # the lab's former measurement: a tape on model(x, training=True)
        value = loss(y, model(x, training=True))
    direct = tape.gradient(value, kernels)
    for a, b in zip(ours, direct, strict=True):
        np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)
    per_stage, norms = diagnostics.stage_gradients(model, found, loss, x, y)
    stage1 = [n for (s, _), n in zip(found.kernels, norms) if s == 1]
    assert per_stage[1] == pytest.approx(float(np.sqrt(np.mean(np.square(stage1)))), rel=1e-9)
    assert diagnostics.gradient_ratio(per_stage) == pytest.approx(per_stage[1] / per_stage[3])


def test_branch_ratios_equal_the_variances_of_the_named_tensors(probe):
    x, _ = probe
    model = _resnet20()
    found = diagnostics.structure(model)
    assert [b.name for b in found.blocks] == [f"conv{s}_block{i}_add" for s in (2, 3, 4) for i in (1, 2, 3)]
    assert [b.stage for b in found.blocks] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    ratios = diagnostics.branch_ratios(model, found, x)
    # Block conv2_block2: its branch ends in conv2_block2_2_bn, its skip is conv2_block1_out.
    names = keras.Model(model.inputs, [model.get_layer("conv2_block2_2_bn").output,
                                       model.get_layer("conv2_block1_out").output]).predict(x, verbose=0)
    assert ratios[1] == pytest.approx(np.var(names[0].astype("float64")) / np.var(names[1].astype("float64")), rel=1e-5)


def test_lesions_equal_the_lab_s_zeroed_branch(probe):
    """Deleting a block by returning its skip equals zeroing its last BN's gamma and beta (the
    lab's former measurement): relu(x + 0)."""
    x, y = probe
    model = _resnet20()
    (x_train, y_train), _, _ = load_digits()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train.astype("float32"), y_train, epochs=2, verbose=0, batch_size=64)  # trained weights
    found = diagnostics.structure(model)
    errors = diagnostics.lesion_errors(model, found, x, y)
    base = model(x, training=False)
    for block in found.blocks[:4]:
        bn = model.get_layer(block.name.replace("_add", "_2_bn"))
        saved = bn.get_weights()
        bn.set_weights([np.zeros_like(w) if i < 2 else w for i, w in enumerate(saved)])
        zeroed = np.asarray(model(x, training=False))
        bn.set_weights(saved)
        with measures._lesioned(block):
            lesioned = np.asarray(model(x, training=False))
        np.testing.assert_allclose(lesioned, zeroed, rtol=1e-5, atol=1e-5)
        assert errors[block.name] == pytest.approx(float(np.mean(zeroed.argmax(1) != y)))
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), np.asarray(base))  # restored
    assert diagnostics.Probe(model, found).errors(x, y) == errors  # the compiled switch: the same errors
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), np.asarray(base))
    assert diagnostics.effective_depth({"none": 0.1, "a": 0.5, "b": 0.11}) == 1


@pytest.mark.parametrize("build, blocks, stages", [
    (lambda: keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3)), 16, (0, 1, 2, 3, 4)),
    (lambda: keras.applications.ResNet50V2(weights=None, input_shape=(32, 32, 3)), 16, (0, 1, 2, 3, 4)),
    (lambda: keras.applications.DenseNet121(weights=None, input_shape=(32, 32, 3)), 58, (0, 1, 2, 3, 4)),
])
@pytest.mark.slow
def test_keras_applications_nets_with_random_weights(build, blocks, stages):
    keras.utils.set_random_seed(0)
    model = build()
    found = diagnostics.structure(model)
    assert len(found.blocks) == blocks and found.stages == stages
    assert [b.stage for b in found.blocks][0] == 1 and found.blocks[-1].stage == 4
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32"), rng.integers(0, 1000, 4)
    per_stage, _ = diagnostics.stage_gradients(model, found, keras.losses.SparseCategoricalCrossentropy(), x, y)
    ratios = diagnostics.branch_ratios(model, found, x)
    assert sorted(per_stage) == list(stages) and all(np.isfinite(v) and v > 0 for v in per_stage.values())
    assert len(ratios) == blocks and np.all(ratios > 0)
    errors = diagnostics.lesion_errors(model, found, x, y)
    assert len(errors) == blocks + 1


def test_a_keras_hub_backbone_and_a_fit_with_the_callback(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
        stackwise_num_blocks=[2, 2], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(32, 32, 3))
    found = diagnostics.structure(backbone)
    assert [b.name for b in found.blocks] == ["stack0_block0_add", "stack0_block1_add", "stack1_block0_add",
                                              "stack1_block1_add"]
    assert [b.stage for b in found.blocks] == [1, 1, 2, 2] and found.stages == (0, 1, 2)
    # The callback on a fit of the backbone (features regressed on zeros), every 2 steps.
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 32, 32, 3)).astype("float32")
    y = np.zeros((16, 4, 4, 64), "float32")
    backbone.compile(optimizer="sgd", loss="mse")
    said = []
    callback = diagnostics.Diagnostics((x[:8], y[:8]), log_dir=str(tmp_path), every_n_steps=2,
                                       lesion_every_n_epochs=0, say=said.append)
    backbone.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    records = diagnostics.read(str(tmp_path / diagnostics.DIAGNOSTICS_FILE))
    assert [r["step"] for r in records] == [2, 4, 6, 8]
    assert set(records[0]["gradient_norm"]) == {"0", "1", "2"} and len(records[0]["branch_ratio"]) == 4
    assert said[-1].endswith("alarm(s)") and said[0].startswith("diagnostics summary")
    assert list((tmp_path / "diagnostics").glob("events.out.tfevents.*"))


def test_a_bare_diagnostics_flag_measures_every_100_steps_and_multi_worker_refuses_it(usage_errors, tmp_path):
    from absl import flags

    import training.train  # noqa: F401  (defines the flags, once per process)
    from training import flags as run_flags

    try:
        run_flags.parse(["train", "--diagnostics"])
        assert flags.FLAGS.diagnostics == run_flags.DIAGNOSTICS_EVERY == 100
    finally:
        flags.FLAGS.unparse_flags()
    (code, err), = usage_errors([(["--diagnostics=5", "--distribution_strategy=multi_worker_mirrored",
                                   f"--model_dir={tmp_path / 'x'}"], {"TF_CONFIG": "{}"})])
    assert code == 2 and "--diagnostics runs with model.fit" in err


def test_alarms_take_the_median_of_the_last_measurements():
    healthy = [{"step": s, "gradient_ratio": r} for s, r in enumerate([0.8, 0.05, 0.6], 1)]
    assert diagnostics.alarms(healthy) == []
    vanishing = healthy + [{"step": 4, "gradient_ratio": 0.02}, {"step": 5, "gradient_ratio": 0.03}]
    (line,) = diagnostics.alarms(vanishing)
    assert line.startswith("diagnostics: step 5: gradient vanishing towards the first stage")
    exploding = [{"step": s, "gradient_ratio": 1.0, "branch_ratio": [20.0, 30.0]} for s in (1, 2, 3)]
    assert "exploding residual branches" in diagnostics.alarms(exploding)[0]


@pytest.mark.slow
def test_the_plain_net_s_alarm_fires_in_the_first_epoch_and_the_resnet_s_does_not(tmp_path):
    """README's command (plain-56 on the digits, one epoch, measured every 5 steps), and the same
    with --model=resnet56, at once."""
    import os
    import re

    text = (ROOT / "README.md").read_text()
    (command,) = [line for line in re.search(r"```\n(.*?)```", text[text.index("## Residual diagnostics"):],
                                             re.S).group(1).splitlines() if line.strip()]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    procs = {net: subprocess.Popen(command.replace("plain56", net), shell=True, cwd=tmp_path, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for net in ("plain56", "resnet56")}
    out = {}
    for net, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        out[net] = [line for line in stdout.splitlines() if line.startswith("diagnostics:")]
        records = diagnostics.read(str(tmp_path / "runs" / f"{net}-digits" / diagnostics.DIAGNOSTICS_FILE))
        assert [r["step"] for r in records] == [5, 10, 15, 20]
        assert "diagnostics summary" in stdout
    assert out["plain56"] and "gradient vanishing towards the first stage" in out["plain56"][0], out
    assert out["resnet56"] == []


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch, capsys):
    import re

    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "diagnostics.md").read_text(), re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/diagnostics.md", "exec"), {})
    depth, _, total = capsys.readouterr().out.strip().splitlines()[-1].partition(" of ")
    assert 0 <= int(depth) <= 9 and total == "9 blocks matter"
    assert diagnostics.read(str(tmp_path / "runs" / "diagnosed" / diagnostics.DIAGNOSTICS_FILE))
