"""Transfer learning as a library: one weights entry point (reszoo.create_model(weights=...)),
models that remember how they were built, the fine-tuning helpers and residual adapters."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import reszoo
from reszoo import transfer, weights
from helpers import infer

from conftest import ROOT


SMALL = dict(base_width=4, input_shape=(8, 8, 1))
X = np.random.default_rng(0).uniform(0, 16, (6, 8, 8, 1)).astype("float32")


def _randomize(model, seed=1):
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(0, 0.3, tuple(v.shape)).astype("float32") + (1.0 if "variance" in v.path else 0.0))


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))


def test_the_builders_name_argument_reaches_the_model():
    assert reszoo.create_model("resnet20", name="x").name == "x"  # a TypeError before


def test_a_model_remembers_how_it_was_built_in_memory_and_on_disk(tmp_path):
    model = reszoo.create_model("resnet20", num_classes=5, kernel_regularizer=keras.regularizers.L2(1e-4), **SMALL)
    spec = reszoo.build_spec(model)
    assert spec.name == "resnet20" and spec.overrides["num_classes"] == 5 and spec.overrides["input_shape"] == [8, 8, 1]
    _randomize(model)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert reszoo.build_spec(loaded) == spec
    card = reszoo.model_card(loaded)
    assert (card["name"], card["num_classes"], card["params"]) == ("resnet20", 5, reszoo.count_params(model))
    # The file alone is enough to build the model again, with its weights.
    again = reszoo.create_model(weights=str(tmp_path / "m.keras"))
    assert reszoo.build_spec(again) == spec
    assert again.get_layer("conv1_conv").kernel_regularizer.l2 == pytest.approx(1e-4)
    np.testing.assert_array_equal(infer(model, X), infer(again, X))
    with pytest.raises(ValueError, match="was not built by reszoo.create_model"):
        reszoo.model_card(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))


@pytest.mark.parametrize("kind", ["run folder", ".keras", ".weights.h5", "model"])
def test_weights_from_every_source_with_a_new_classifier_for_other_classes(tmp_path, kind):
    trained = reszoo.create_model("resnet20", **SMALL)
    _randomize(trained)
    sources = {"model": trained}
    (tmp_path / "run").mkdir()
    trained.save(tmp_path / "run" / "last.keras")
    sources["run folder"] = str(tmp_path / "run")
    sources[".keras"] = str(tmp_path / "run" / "last.keras")
    trained.save_weights(tmp_path / "w.weights.h5")
    sources[".weights.h5"] = str(tmp_path / "w.weights.h5")
    model = reszoo.create_model("resnet20", num_classes=3, weights=sources[kind], **SMALL)
    assert model.output_shape == (None, 3)
    for layer in trained.layers:
        if layer.weights and layer.name != "fc":
            assert _same(layer, model.get_layer(layer.name)), layer.name
    report = weights.load_weights(reszoo.create_model("resnet20", num_classes=3, **SMALL), sources[kind])
    assert report.replaced == ("fc: 10 -> 3 classes",) and report.loaded == 38
    same_classes = reszoo.create_model("resnet20", weights=sources[kind], **SMALL)
    np.testing.assert_array_equal(infer(same_classes, X), infer(trained, X))


def test_weights_that_do_not_fit_name_the_layer_and_load_nothing(tmp_path):
    trained = reszoo.create_model("resnet20", **SMALL)
    trained.save(tmp_path / "m.keras")
    wider = reszoo.create_model("resnet20", base_width=8, input_shape=(8, 8, 1))
    before = [w.copy() for w in wider.get_weights()]
    with pytest.raises(weights.WeightsError, match=r"^layer 'conv1_conv': conv1_conv/kernel has shape \(3, 3, 1, 8\)"):
        weights.load_weights(wider, str(tmp_path / "m.keras"))
    assert all(np.array_equal(a, b) for a, b in zip(before, wider.get_weights()))  # nothing half-loaded
    deeper = reszoo.create_model("resnet32", **SMALL)
    with pytest.raises(weights.WeightsError, match=r"has no weights for layer 'conv2_block4_1_conv'"):
        weights.load_weights(deeper, str(tmp_path / "m.keras"))
    with pytest.raises(weights.WeightsError, match="does not say which model it holds"):
        reszoo.create_model(weights=keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(weights.WeightsError, match="unfinished holds no last.keras or best.keras"):
        reszoo.create_model("resnet20", weights=tmp_path / "unfinished", **SMALL)
    with pytest.raises(weights.WeightsError, match="does not say which model it holds"):
        reszoo.create_model(weights=tmp_path / "unfinished")


def test_foreign_keras_files_are_refused_in_one_line_that_names_the_file(tmp_path):
    import warnings

    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10)])
    other.save(tmp_path / "other.h5")  # a Keras full-model HDF5 file of another net
    with pytest.raises(weights.WeightsError, match=rf"^{tmp_path / 'other.h5'} is a Keras HDF5 \(.h5\) file") as info:
        reszoo.create_model("resnet20", weights=tmp_path / "other.h5", **SMALL)
    assert "variant" not in str(info.value) and "stem" not in str(info.value)
    reszoo.create_model("resnet32", **SMALL).save_weights(tmp_path / "resnet32.weights.h5")
    target = reszoo.create_model("resnet20", **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(weights.WeightsError, match=rf"^{tmp_path / 'resnet32.weights.h5'} does not hold weights"):
            reszoo.weights.load_weights(target, tmp_path / "resnet32.weights.h5")
    assert [str(w.message) for w in caught] == []


def test_the_old_keras_applications_entry_point_still_works(tmp_path):
    model = weights.keras_applications_model("ResNet50", input_shape=(32, 32, 3), include_top=False)
    assert reszoo.build_spec(model).overrides["variant"] == "keras"


def test_freeze_by_stage_name_and_lr_multipliers():
    model = reszoo.create_model("resnet20", **SMALL)
    frozen = transfer.freeze(model, "conv3")
    assert "conv3_block3_2_bn" in frozen and "conv4_block1_1_conv" not in frozen
    assert not model.get_layer("conv1_conv").trainable and model.get_layer("conv4_block1_1_conv").trainable
    with pytest.raises(ValueError, match="no such stage; use none, backbone or one of conv1, conv2, conv3, conv4"):
        transfer.freeze(model, "conv7")
    model = reszoo.create_model("resnet20", **SMALL)
    transfer.freeze(model, "backbone", train_bn=True)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "fc" in trainable and "conv2_block1_1_bn" in trainable and "conv4_block3_2_conv" not in trainable
    factors = transfer.lr_multipliers(model, backbone=0.1)
    assert factors and all(f == 0.1 for f in factors.values()) and not any(p.startswith("fc/") for p in factors)


def test_replace_classifier_keeps_the_features_and_the_spec():
    model = reszoo.create_model("resnet20", **SMALL)
    new = transfer.replace_classifier(model, 4, classifier_activation="softmax")
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    np.testing.assert_array_equal(infer(features, X),
                                  infer(keras.Model(new.inputs, new.get_layer("avg_pool").output), X))
    assert new.output_shape == (None, 4) and reszoo.build_spec(new).overrides["num_classes"] == 4
    np.testing.assert_allclose(infer(new, X).sum(-1), 1.0, rtol=1e-5)


def _train(model, x, y, epochs=2):
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)


@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_adapters_start_as_the_backbone_and_leave_it_untouched(mode, tmp_path):
    backbone = reszoo.create_model("resnet20", **SMALL)
    _randomize(backbone)
    before = [w.copy() for w in backbone.get_weights()]
    outputs = infer(backbone, X)
    adapted = transfer.add_adapters(backbone, mode, num_classes=3)
    features = lambda m: infer(keras.Model(m.inputs, m.get_layer("avg_pool").output), X)
    # Zero adapters: the same net (to float rounding: the sum breaks TF's conv-BN fusion).
    np.testing.assert_allclose(features(adapted), features(backbone), rtol=1e-5, atol=1e-6)
    trained = {v.path.split("/")[0] for v in adapted.trainable_variables}
    assert trained == {l.name for l in adapted.layers if isinstance(l, (reszoo.layers.ResidualAdapter,
                                                                         keras.layers.BatchNormalization)) or l.name == "fc"}
    rng = np.random.default_rng(2)
    _train(adapted, rng.uniform(0, 16, (64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64))
    # The backbone (every weight, BN statistics included) and its outputs are exactly as before.
    assert all(np.array_equal(a, b) for a, b in zip(before, backbone.get_weights(), strict=True))
    np.testing.assert_array_equal(infer(backbone, X), outputs)
    assert not np.array_equal(features(adapted), features(backbone))  # the task learned something
    # A task alone: a small file that puts the same model back on the backbone.
    size = transfer.save_task(adapted, tmp_path / "task.npz")
    assert size < 0.5 * os.path.getsize(_saved(backbone, tmp_path))
    again = transfer.load_task(backbone, tmp_path / "task.npz")
    np.testing.assert_array_equal(infer(again, X), infer(adapted, X))
    # The whole task model as one .keras file: create_model rebuilds it, adapters included.
    adapted.save(tmp_path / "adapted.keras")
    rebuilt = reszoo.create_model(weights=tmp_path / "adapted.keras")
    np.testing.assert_array_equal(infer(rebuilt, X), infer(adapted, X))
    adapted.save_weights(tmp_path / "adapted.weights.h5")  # weights alone: matched through the spec
    fresh = transfer.add_adapters(reszoo.create_model("resnet20", **SMALL), mode, num_classes=3)
    reszoo.weights.load_weights(fresh, tmp_path / "adapted.weights.h5")
    np.testing.assert_array_equal(infer(fresh, X), infer(adapted, X))
    card = reszoo.model_card(rebuilt)
    assert card["adapters"] == mode and card["num_classes"] == 3
    pyramid = infer(keras.Model(rebuilt.inputs, rebuilt.pyramid_outputs), X)
    assert {k: v.shape[-1] for k, v in pyramid.items()} == {f["level"]: f["channels"] for f in card["features"]}
    other = reszoo.create_model("resnet20", **SMALL)
    with pytest.raises(ValueError, match="was trained on another backbone"):
        transfer.load_task(other, tmp_path / "task.npz")
    whole = (tmp_path / "task.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'truncated.npz'} is not a reszoo task file, or is damaged"):
        transfer.load_task(backbone, tmp_path / "truncated.npz")


def _saved(model, folder):
    model.save(folder / "backbone.keras")
    return folder / "backbone.keras"


def test_adapters_refuse_models_they_cannot_adapt():
    dense_only = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.GlobalAveragePooling2D(name="avg_pool"),
                                   keras.layers.Dense(2, name="fc")])
    with pytest.raises(ValueError, match="has no convolution to adapt"):
        transfer.add_adapters(dense_only)
    with pytest.raises(ValueError, match="has sub-models"):
        transfer.add_adapters(reszoo.create_model("resnet20", weight_tied=True, **SMALL))
    with pytest.raises(ValueError, match="mode must be one of"):
        transfer.add_adapters(reszoo.create_model("resnet20", **SMALL), "diagonal")
    with pytest.raises(ValueError, match="has adapters already"):
        transfer.add_adapters(transfer.add_adapters(reszoo.create_model("resnet20", **SMALL)))


def _cli(module, *args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.slow
def test_train_with_adapters_keeps_the_backbone_and_saves_the_task(tmp_path):
    base = _cli("training.train", "--epochs=2", "--model_args=base_width=8", f"--model_dir={tmp_path / 'a'}")
    assert base.returncode == 0, base.stderr[-2000:]
    task = _cli("training.train", "--epochs=2", "--adapters=parallel", f"--init_from={tmp_path / 'a'}",
                f"--model_dir={tmp_path / 'b'}")
    assert task.returncode == 0, task.stderr[-2000:]
    backbone = keras.saving.load_model(tmp_path / "a" / "last.keras")
    adapted = keras.saving.load_model(tmp_path / "b" / "last.keras")
    for layer in backbone.layers:  # frozen convolutions: bit-identical
        target = adapted.get_layer(layer.name)
        if isinstance(target, reszoo.layers.ResidualAdapter):
            assert _same(layer, target.conv)
    from reszoo.datasets import load_digits

    (_, _), (x_test, _), _ = load_digits()
    again = transfer.load_task(backbone, tmp_path / "b" / "task.npz")
    x = x_test[:16].astype("float32")
    np.testing.assert_allclose(infer(again, x), infer(adapted, x), rtol=1e-6, atol=1e-6)
    exported = _cli("training.export", f"--model_dir={tmp_path / 'b'}", f"--export_dir={tmp_path / 'saved'}")
    assert exported.returncode == 0, exported.stderr[-2000:]  # a task exports as a normal SavedModel
    (tmp_path / "unfinished").mkdir()
    for args, message in [(["--adapters=series"], "--adapters needs --init_from"),
                          ([f"--init_from={tmp_path / 'unfinished'}"], "holds no last.keras or best.keras"),
                          (["--adapters=series", f"--init_from={tmp_path / 'a'}", "--freeze=backbone"],
                           "--freeze goes without --adapters")]:
        proc = _cli("training.train", *args, f"--model_dir={tmp_path / 'x'}")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
