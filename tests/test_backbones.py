"""Backbones: pyramid features, any input size, any channel count, for every registered model
(the model-wide checks of timm's tests/test_models.py and keras' applications_test.py, at
shallow depths where the name allows)."""

import functools

import keras
import numpy as np
import pytest

import reszoo
from reszoo import naming, registry, weights
from reszoo.resnet import IMAGENET_LAYERS
from helpers import infer


NAMES = reszoo.list_models()


def _imagenet(name):
    """An ImageNet stem (the 7x7 or the deep one), not CIFAR's."""
    return reszoo.get_spec(name).config["stem"] != "cifar"


def shallow(name):
    """Overrides giving the registered model's family, block and widths at one block (or
    dense layer) per stage: the same code paths at a fraction of the cost."""
    spec = reszoo.get_spec(name)
    config = spec.config
    if spec.builder is reszoo.densenet:
        stages = 4 if _imagenet(name) else 3
        return {"blocks": (1,) * stages}
    block = IMAGENET_LAYERS[config["depth"]][0] if "depth" in config and _imagenet(name) \
        else config.get("block", "basic")
    stages = len(config["layers"]) if "layers" in config else (4 if _imagenet(name) else 3)
    return {"layers": (1,) * stages, "block": block}


@functools.lru_cache(maxsize=None)
def _variable(name, channels=3, **kwargs):
    return reszoo.create_model(name, input_shape=(None, None, channels), **shallow(name), **kwargs)


def _sizes(name):
    """Two input sizes, odd ones included, at and above the net's minimum (its total stride)."""
    return (33, 45) if _imagenet(name) else (9, 17)


@pytest.mark.parametrize("name", NAMES)
def test_forward_at_several_sizes_and_backward_reaches_every_weight(name):
    import tensorflow as tf

    model = _variable(name)
    for size in _sizes(name):
        x = np.random.default_rng(size).uniform(0, 1, (2, size, size + 2, 3)).astype("float32")
        logits = model(x, training=False)
        assert logits.shape == (2, model.output_shape[-1]) and np.isfinite(logits).all()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True)))
    grads = tape.gradient(loss, model.trainable_variables)
    for v, g in zip(model.trainable_variables, grads, strict=True):
        assert g is not None and np.isfinite(g).all() and np.any(g != 0), v.path


@pytest.mark.parametrize("name", NAMES)
def test_one_and_four_channel_inputs_and_the_pyramid_at_an_odd_size(name):
    size = _sizes(name)[0]
    grey = _variable(name, 1, include_top=False, pooling="max")
    assert grey(np.ones((1, size, size, 1), "float32")).shape == (1, grey.output_shape[-1])
    features = _variable(name, 4, features_only=True)
    out = features(np.random.default_rng(0).uniform(0, 1, (1, size, size, 4)).astype("float32"))
    levels = {f["level"]: f for f in reszoo.features(features)}
    assert list(out) == list(levels)
    for level, tensor in out.items():  # "Pk" is at stride 2**k ("same" convs round up, DenseNet's pools down)
        stride = 2 ** int(level[1:])
        assert tensor.shape[1] == tensor.shape[2] and tensor.shape[1] in (size // stride, -(-size // stride)), level
        assert tensor.shape[-1] == levels[level]["channels"] and np.isfinite(tensor).all(), level


@pytest.mark.parametrize("name", NAMES)
def test_the_model_card_lists_what_features_only_returns(name, registered):
    """The card's levels are the registered net's stage ends, at their widths and strides; and
    features_only returns exactly the levels its own card lists (on the shallow twin: a
    DenseNet's widths depend on its depth, so the twin's card is its own)."""
    model = registered(name)
    card = reszoo.model_card(model)["features"]
    assert [f["level"] for f in card] == sorted((f["level"] for f in card), key=lambda k: int(k[1:]))
    side = model.input_shape[1]
    for f in card:
        shape = model.get_layer(f["layer"]).output.shape
        assert f["layer"] == naming.stage_end(f["stage"])
        assert shape[-1] == f["channels"] and side // shape[1] == f["stride"], f
    features = _variable(name, features_only=True)
    twin = reszoo.model_card(features)["features"]
    if reszoo.get_spec(name).builder is reszoo.resnet:  # a ResNet's levels and widths do not depend on its depth
        assert twin == card
    size = 64 if _imagenet(name) else 32
    shapes = features.compute_output_shape((1, size, size, 3))
    assert list(shapes) == [f["level"] for f in twin]
    for f in twin:
        assert shapes[f["level"]][-1] == f["channels"] and size // shapes[f["level"]][1] == f["stride"]


def test_pyramid_levels_follow_the_strides():
    assert [f["level"] for f in reszoo.model_card("resnet50")["features"]] == ["P1", "P2", "P3", "P4", "P5"]
    assert [f["level"] for f in reszoo.model_card("resnet56")["features"]] == ["P0", "P1", "P2"]
    v2 = reszoo.create_model("preact_resnet50", variant="keras", features_only=True)
    assert list(v2.output) == ["P1", "P3", "P4", "P5"]  # keras.applications' v2 strides at the end of a stage
    picked = reszoo.create_model("densenet121", features_only=True, out_levels=("P3", "P5"))
    assert list(picked.output) == ["P3", "P5"] and picked.output["P5"].shape[-1] == 1024
    with pytest.raises(ValueError, match=r"out_levels \['P6'\] are not levels of this model; it has \['P0', 'P1', 'P2'\]"):
        reszoo.create_model("resnet20", features_only=True, out_levels=["P6"])
    with pytest.raises(ValueError, match="out_levels needs features_only=True"):
        reszoo.create_model("resnet20", out_levels=["P1"])


def test_pre_activation_stages_hand_on_the_residual_stream_the_last_before_its_final_bn_relu():
    """Where timm's ResNetV2 takes its features (tests/test_timm.py compares the values)."""
    model = reszoo.create_model("preact_resnet110")
    assert model.get_layer("conv3_end").input is model.get_layer("conv3_block18_add").output
    assert model.get_layer("conv4_end").input is model.get_layer("conv4_block18_add").output
    assert model.get_layer("post_bn").input is model.get_layer("conv4_end").output
    dense = reszoo.create_model("densenet121")
    assert dense.get_layer("conv3_end").input is dense.get_layer("conv3_block12_concat").output
    assert dense.get_layer("pool3_bn").input is dense.get_layer("conv3_end").output


def test_below_the_minimum_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"images of 8x8 are too small for this net: it takes at least 32x32"):
        reszoo.create_model("densenet121", input_shape=(8, 8, 3))
    with pytest.raises(ValueError, match=r"it takes at least 4x4"):
        reszoo.create_model("resnet20", input_shape=(3, 32, 3))


def test_channels_first_models_take_and_give_nchw_as_keras_applications_do():
    """Their numbers equal the channels_last models' on JAX and PyTorch: test_data_format."""
    keras.config.set_image_data_format("channels_first")
    try:
        assert reszoo.create_model("resnet20").input_shape == (None, 3, 32, 32)
        backbone = reszoo.create_model("resnet50", features_only=True)
        assert backbone.input_shape == (None, 3, None, None)
        shapes = backbone.compute_output_shape((1, 3, 64, 96))
        assert shapes["P2"] == (1, 256, 16, 24) and shapes["P5"] == (1, 2048, 2, 3)
        assert [(f["channels"], f["stride"]) for f in reszoo.features(backbone)][-1] == (2048, 32)
        with pytest.raises(ValueError, match=r"input_shape must be \(channels, height, width\) \(channels_first\)"):
            reszoo.create_model("resnet20", input_shape=(32, 32))
        with pytest.raises(ValueError, match=r"images of 8x8 are too small for this net"):
            reszoo.create_model("densenet121", input_shape=(3, 8, 8))
    finally:
        keras.config.set_image_data_format("channels_last")


def _keras_applications_file(architecture, path, seed=0):
    from keras.src.legacy.saving import legacy_h5_format

    import h5py

    source = getattr(keras.applications, architecture)(weights=None, input_shape=(64, 64, 3), include_top=False)
    rng = np.random.default_rng(seed)
    for v in source.weights:
        scale = np.sqrt(2 / np.prod(v.shape[:-1])) if v.path.endswith("kernel") else 0.1
        v.assign((rng.normal(0, scale, tuple(v.shape)) + ("variance" in v.path or "gamma" in v.path)).astype("float32"))
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, source)
    return source


@pytest.mark.parametrize("architecture", ["ResNet50", "ResNet50V2", "DenseNet121"])
def test_rgb_weights_on_grey_images_give_what_their_rgb_copy_gives(architecture, tmp_path):
    """caffe, tf and torch preprocessing: exact, because a grey input is widened to RGB inside
    the preprocessing (a conv summed over RGB would be exact for tf only)."""
    _keras_applications_file(architecture, tmp_path / "w.h5")
    name = weights.KERAS_APPLICATIONS[architecture][0]
    rgb = reszoo.create_model(name, weights=str(tmp_path / "w.h5"), include_top=False, pooling="avg")
    grey = reszoo.create_model(name, weights=str(tmp_path / "w.h5"), input_shape=(None, None, 1),
                               include_top=False, pooling="avg")
    g = np.random.default_rng(1).uniform(0, 255, (2, 40, 48, 1)).astype("float32")
    np.testing.assert_array_equal(infer(grey, g), infer(rgb, np.repeat(g, 3, -1)))


def test_more_channels_repeat_the_first_conv_and_a_paper_model_sums_it(tmp_path):
    _keras_applications_file("ResNet50", tmp_path / "w.h5")
    four = reszoo.create_model("resnet50", include_top=False, input_shape=(None, None, 4), variant="keras")
    report = weights.load_weights(four, str(tmp_path / "w.h5"))
    assert report.adapted == ("conv1_conv: 3 -> 4 input channels",)
    rgb = reszoo.create_model("resnet50", weights=str(tmp_path / "w.h5"), include_top=False)
    kernel = rgb.get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_allclose(four.get_layer("conv1_conv").get_weights()[0],
                               np.concatenate([kernel, kernel[:, :, :1]], axis=2) * 0.75, rtol=1e-6)
    # Without channel-dependent preprocessing the summed kernel is the exact grey model (timm's way).
    paper = reszoo.create_model("resnet20")
    paper.save(tmp_path / "paper.keras")
    grey = reszoo.create_model("resnet20", input_shape=(32, 32, 1), weights=str(tmp_path / "paper.keras"))
    x = np.random.default_rng(2).uniform(0, 1, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(infer(grey, x), infer(paper, np.repeat(x, 3, -1)),
                               rtol=1e-5, atol=1e-5)
