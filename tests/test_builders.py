"""Shapes, backbone use, the residual options and argument errors."""

import math

import keras
import numpy as np
import pytest

import reszoo
from reszoo.factory import LayerFactory
from reszoo.resnet import BlockOptions, post_activation_block, pre_activation_block
from helpers import infer



@pytest.mark.parametrize("name", reszoo.list_models())
def test_output_shape_of_every_registered_model(registered, name):
    model = registered(name)
    spec = reszoo.get_spec(name)
    classes = 10 if spec.dataset == "cifar10" else 1000
    side = 32 if spec.dataset == "cifar10" else 224
    assert model.input_shape == (None, side, side, 3)
    assert model.output_shape == (None, classes)
    assert model.name == name


@pytest.mark.parametrize("name", ["resnet20", "preact_resnet164", "densenet40_k12", "plain20",
                                  "preact_resnet18_cifar", "densenet_bc100_k12"])
def test_forward_pass_gives_finite_logits_that_depend_on_input(name):
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    y = infer(reszoo.create_model(name), x)
    assert y.shape == (4, 10) and np.isfinite(y).all()
    assert np.abs(y[0] - y[1]).max() > 1e-6


@pytest.mark.parametrize("name,feature_shape,pooled", [
    ("resnet56", (8, 8, 64), 64),
    ("resnet50", (7, 7, 2048), 2048),
    ("preact_resnet164", (8, 8, 256), 256),
    ("densenet121", (7, 7, 1024), 1024),
    ("densenet_bc100_k12", (8, 8, 342), 342),
])
def test_backbone_feature_map_and_pooling(name, feature_shape, pooled):
    backbone = reszoo.create_model(name, include_top=False)
    assert backbone.input_shape == (None, None, None, 3)  # a backbone takes any size (keras-hub's default)
    size = (32, 32, 3) if "cifar" in reszoo.model_card(name)["dataset"] else (224, 224, 3)
    assert reszoo.create_model(name, include_top=False, input_shape=size).output_shape == (None, *feature_shape)
    for pooling in ("avg", "max"):
        model = reszoo.create_model(name, include_top=False, pooling=pooling)
        assert model.output_shape == (None, pooled)


@pytest.mark.parametrize("pooling,reduce", [("avg", np.mean), ("max", np.max)])
def test_backbone_pooling_reduces_the_feature_map(pooling, reduce):
    features = reszoo.create_model("resnet20", include_top=False)
    pooled = reszoo.create_model("resnet20", include_top=False, pooling=pooling)
    pooled.set_weights(features.get_weights())
    x = np.random.default_rng(1).normal(size=(2, 24, 40, 3)).astype("float32")
    fmap = infer(features, x)
    np.testing.assert_allclose(infer(pooled, x), reduce(fmap, axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_custom_input_shape_classes_and_softmax():
    model = reszoo.create_model("resnet20", input_shape=(64, 48, 1), num_classes=7,
                                classifier_activation="softmax")
    y = infer(model, np.random.rand(3, 64, 48, 1).astype("float32"))
    assert y.shape == (3, 7)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_variable_spatial_size_backbone():
    model = reszoo.create_model("resnet50", input_shape=(None, None, 3), include_top=False)
    assert infer(model, np.zeros((1, 96, 64, 3), "float32")).shape == (1, 3, 2, 2048)


def test_input_tensor_is_used():
    inp = keras.Input((40, 40, 3))
    model = reszoo.create_model("resnet20", input_tensor=inp)
    assert model.inputs[0] is inp and model.output_shape == (None, 10)


def test_input_tensor_after_a_preprocessing_layer():
    raw = keras.Input((32, 32, 3))
    scaled = keras.layers.Rescaling(0.5, name="preprocess")(raw)
    model = reszoo.create_model("resnet20", input_tensor=scaled)
    assert model.inputs[0] is raw and model.layers[1].name == "preprocess"
    x = np.random.rand(2, 32, 32, 3).astype("float32")
    direct = reszoo.create_model("resnet20")
    direct.set_weights(model.get_weights())
    np.testing.assert_allclose(infer(model, x), infer(direct, x * 0.5), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input_tensor must be a Keras tensor"):
        reszoo.create_model("resnet20", input_tensor=np.zeros((1, 32, 32, 3)))


def _block_model(block_fn, preact, norm="batch", **opts):
    inp = keras.Input((8, 8, 16))
    drop = opts.pop("drop_rate", 0.0)
    out = block_fn(inp, 16, 1, BlockOptions(preact=preact, **opts), LayerFactory(norm=norm), drop, name="b")
    return keras.Model(inp, out)


@pytest.mark.parametrize("block_fn,preact", [(post_activation_block, False), (pre_activation_block, True)])
@pytest.mark.parametrize("option", [dict(residual_scale="learnable"), dict(zero_init_last_bn=True)])
def test_block_is_identity_at_init(block_fn, preact, option):
    block = _block_model(block_fn, preact, **option)
    x = np.random.default_rng(2).normal(size=(4, 8, 8, 16)).astype("float32")
    if not preact:
        x = np.maximum(x, 0)  # a post-activation block reads the ReLU output of the one before
    for training in (False, True):
        np.testing.assert_allclose(block(x, training=training), x, atol=1e-6)


def test_learnable_scale_is_trainable_and_moves_away_from_identity():
    model = reszoo.create_model("resnet20", residual_scale="learnable")
    scales = [w for w in model.trainable_weights if "alpha" in w.path]
    assert len(scales) == 9 and all(float(s.numpy()) == 0.0 for s in scales)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(np.random.rand(8, 32, 32, 3).astype("float32"), np.arange(8) % 10)
    assert any(float(s.numpy()) != 0.0 for s in scales)


def test_sqrt2_scaling_divides_the_sum():
    plain_sum = _block_model(post_activation_block, False)
    scaled = _block_model(post_activation_block, False, residual_scale="sqrt2")
    scaled.set_weights(plain_sum.get_weights())
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 16)).astype("float32")
    np.testing.assert_allclose(scaled(x) * math.sqrt(2), plain_sum(x), rtol=1e-5, atol=1e-6)


def test_stochastic_depth_drops_whole_branches_at_the_set_rate():
    block = _block_model(pre_activation_block, True, norm=None, drop_rate=0.3)
    x = np.random.default_rng(4).normal(size=(2000, 8, 8, 16)).astype("float32")
    y = np.asarray(block(x, training=True))
    dropped = np.all(np.isclose(y, x, atol=1e-6), axis=(1, 2, 3))
    assert abs(dropped.mean() - 0.3) < 0.04
    # Kept branches are scaled by 1/(1-p), so the expectation equals the inference output.
    y_eval = np.asarray(block(x, training=False))
    kept_branch = (y - x)[~dropped][:50]
    np.testing.assert_allclose(kept_branch * 0.7, (y_eval - x)[~dropped][:50], rtol=1e-4, atol=1e-5)


def test_stochastic_depth_rates_rise_linearly():
    model = reszoo.create_model("resnet20", drop_path_rate=0.45)
    rates = [l.rate for l in model.layers if l.name.endswith("_drop_path")]
    np.testing.assert_allclose(rates, [0.05 * (i + 1) for i in range(9)])


def test_densenet_dropout_and_compression():
    model = reszoo.create_model("densenet_bc100_k12", dropout_rate=0.2)
    drops = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert len(drops) == 3 * 16 * 2 + 2 and all(d.rate == 0.2 for d in drops)
    transitions = [l for l in model.layers if l.name in ("pool2_conv", "pool3_conv")]
    # 24 + 16*12 = 216 channels enter the first transition; theta=0.5 halves them.
    assert [t.filters for t in transitions] == [108, (108 + 16 * 12) // 2]


def test_norm_none_removes_every_batchnorm():
    model = reszoo.create_model("resnet56", norm=None)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    bn_params = sum(2 * l.gamma.shape[0] for l in reszoo.create_model("resnet56").layers if hasattr(l, "gamma"))
    assert reszoo.count_params(model) == 853_018 - bn_params


def test_shortcut_c_projects_every_block():
    model = reszoo.create_model("resnet20", shortcut="C")
    projections = [l for l in model.layers if l.name.endswith("_0_conv")]
    assert len(projections) == 9
    b = reszoo.create_model("resnet20", shortcut="B")
    assert len([l for l in b.layers if l.name.endswith("_0_conv")]) == 2


def test_kernel_regularizer_and_initializer_hooks():
    model = reszoo.create_model("resnet20", kernel_regularizer=keras.regularizers.L2(1e-4),
                                kernel_initializer="zeros")
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert all(l.kernel_regularizer is not None for l in convs)
    assert all(not np.any(l.kernel.numpy()) for l in convs)
    assert len(model.losses) == len(convs) + 1  # every conv kernel and the classifier


def test_bn_momentum_epsilon_hooks():
    model = reszoo.create_model("densenet40_k12", bn_momentum=0.97, bn_epsilon=1e-3)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == 0.97 and l.epsilon == 1e-3 for l in bns)


def test_mixed_precision_keeps_logits_float32():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = reszoo.create_model("resnet20")
        assert model.layers[1].compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize("name,kwargs,match", [
    ("resnet56", dict(depth=57), "depth must be 6n\\+2"),
    ("resnet56", dict(depth=-8), "depth must be"),
    ("resnet56", dict(depth="56"), "depth must be an integer"),
    ("resnet50", dict(depth=77), "depth must be one of"),
    ("preact_resnet164", dict(depth=160), "depth must be 9n\\+2"),
    ("densenet_bc100_k12", dict(depth=101), "depth must be 6n\\+4"),
    ("densenet_bc100_k12", dict(growth_rate=0), "growth_rate must be >= 1"),
    ("densenet_bc100_k12", dict(compression=1.5), "compression must be in"),
    ("resnet20", dict(shortcut="D"), "shortcut must be one of"),
    ("resnet20", dict(residual_scale="half"), "residual_scale must be one of"),
    ("resnet20", dict(drop_path_rate=1.0), "drop_path_rate must be in"),
    ("resnet20", dict(pooling="sum", include_top=False), "pooling must be one of"),
    ("resnet20", dict(num_classes=-1), "num_classes must be >= 1"),  # 0 is timm's: no classifier
    ("resnet20", dict(input_shape=(32, 32)), "input_shape must be"),
    ("resnet20", dict(bn_momentum=2.0), "bn_momentum must be in"),
    ("plain20", dict(drop_path_rate=0.1), "need residual=True"),
    ("resnet20", dict(weight_tied=True, drop_path_rate=0.1), "weight_tied needs"),
    ("resnet20", dict(weight_tied="bn"), "weight_tied must be one of"),
    ("resnet20", dict(dept=56), "unknown argument 'dept'.*depth"),
])
def test_bad_overrides_name_the_argument(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        reszoo.create_model(name, **kwargs)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match="unknown model 'resnet5'.*resnet56") as err:
        reszoo.create_model("resnet5")
    assert "list_models" in str(err.value)
    with pytest.raises(ValueError, match="densenet_bc100_k12"):
        reszoo.create_model("densenet_bc_100_k12")


def test_list_models_wildcards_and_family():
    assert reszoo.list_models("resnet*") == [
        "resnet18", "resnet18d", "resnet20", "resnet32", "resnet34", "resnet34d", "resnet44",
        "resnet50", "resnet50d", "resnet56", "resnet101", "resnet101d", "resnet110", "resnet152",
        "resnet152d", "resnet1202", "resnetv2_50", "resnetv2_101"]
    assert reszoo.list_models("resnet*d") == [
        "resnet18d", "resnet34d", "resnet50d", "resnet101d", "resnet152d"]
    assert reszoo.list_models("plain*") == reszoo.list_models(family="plain")
    assert set(reszoo.list_models(["densenet_bc*", "preact_resnet1*"])) == {
        "densenet_bc100_k12", "densenet_bc190_k40", "densenet_bc250_k24",
        "preact_resnet18", "preact_resnet18_cifar", "preact_resnet101", "preact_resnet110",
        "preact_resnet152", "preact_resnet164", "preact_resnet1001"}
    assert reszoo.list_models("nothing*") == []


def test_overridden_depth_changes_the_net():
    model = reszoo.create_model("resnet56", depth=32)
    assert reszoo.count_params(model) == 464_154


def test_overriding_the_layout_replaces_the_registered_depth():
    model = reszoo.create_model("resnet50", layers=(1, 1, 1, 1))
    assert sum(l.name.endswith("_add") for l in model.layers) == 4
    model = reszoo.create_model("preact_resnet18_cifar", depth=32, block="basic")
    assert sum(l.name.endswith("_add") for l in model.layers) == 3 * 5


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, reszoo.layers.Recompute):
            yield from _leaf_layers(layer.inner)
        elif isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


@pytest.mark.parametrize("name", ["densenet_bc100_k12", "densenet40_k12"])
def test_memory_efficient_densenet_trains_exactly_like_the_standard_one(name):
    """Recomputing concat-BN-ReLU in the backward pass must change nothing: same parameters,
    outputs, gradients step and BN moving statistics (not updated twice by the recompute)."""
    kwargs = dict(blocks=(2, 3, 2), input_shape=(16, 16, 3), num_classes=4)
    standard = reszoo.create_model(name, **kwargs)
    efficient = reszoo.create_model(name, memory_efficient=True, **kwargs)
    assert reszoo.count_params(standard) == reszoo.count_params(efficient)
    by_name = {layer.name: layer for layer in _leaf_layers(standard)}
    for layer in _leaf_layers(efficient):
        if layer.weights:
            layer.set_weights(by_name[layer.name].get_weights())
    x = np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[np.arange(8) % 4]
    np.testing.assert_allclose(infer(efficient, x), infer(standard, x), rtol=1e-5, atol=1e-5)
    for model in (standard, efficient):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.CategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    for layer in (l for l in _leaf_layers(efficient) if l.weights):
        for a, b in zip(layer.get_weights(), by_name[layer.name].get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5, err_msg=layer.name)


def test_memory_efficient_densenet_round_trips_through_keras_files(tmp_path):
    model = reszoo.create_model("densenet_bc100_k12", blocks=(2, 2, 2), memory_efficient=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(infer(loaded, x), infer(model, x), rtol=1e-6, atol=1e-6)


def test_weight_tied_stages_share_one_block_per_stage():
    """Blocks 2..n of a stage are one sub-model: ResNet-56 keeps the first block of each stage
    and one shared block, 7 x (2 convs + 2 BNs) fewer per stage."""
    tied, untied = reszoo.create_model("resnet56", weight_tied=True), reszoo.create_model("resnet56")
    saved = sum(7 * (2 * 9 * c * c + 2 * 2 * c) for c in (16, 32, 64))  # trainable: kernels, gamma, beta
    assert reszoo.count_params(untied) - reszoo.count_params(tied) == saved == 680_512
    assert reszoo.count_params(tied) == 172_506
    assert [l.name for l in tied.layers if isinstance(l, keras.Model)] == ["conv2_tied", "conv3_tied", "conv4_tied"]
    assert sum(l.name.endswith("_add") for l in tied.layers) == 3  # the unshared first blocks


def test_weight_tied_convs_share_kernels_and_keep_bn_per_block():
    """Liao & Poggio's recurrent ResNet: conv kernels shared across blocks 2..n, BN not."""
    model = reszoo.create_model("resnet56", weight_tied="convs")
    untied = reszoo.create_model("resnet56")
    assert reszoo.count_params(untied) - reszoo.count_params(model) == sum(7 * 18 * c * c for c in (16, 32, 64))
    conv = model.get_layer("conv3_tied_2_conv")
    assert len(conv._inbound_nodes) == 8
    assert model.get_layer("conv3_block2_2_bn") is not model.get_layer("conv3_block9_2_bn")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    before = infer(model, x)
    conv.kernel.assign(conv.kernel * 0.5)  # one kernel serves eight blocks
    assert not np.allclose(infer(model, x), before)


def test_weight_tied_stage_is_the_shared_block_iterated():
    model = reszoo.resnet(layers=(4,), weight_tied=True, norm=None, base_width=8, input_shape=(8, 8, 3),
                          include_top=False)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    h = infer(keras.Model(model.inputs, model.get_layer("conv2_block1_out").output), x)
    block = model.get_layer("conv2_tied")
    for _ in range(3):
        h = infer(block, h)
    np.testing.assert_allclose(infer(model, x), h, rtol=1e-5, atol=1e-5)


def test_a_stem_pool_after_a_relu_pads_with_zero_and_gives_minus_inf_s_maxima():
    """timm's symmetric padding pads a max pool explicitly: with 0 after the stem's ReLU (the
    same maxima as PyTorch's -inf, and a graph int8 can calibrate: -inf made ONNX Runtime's
    scales NaN and a fine-tuned ResNet-18 fell to 10%), with -inf where the stem has no ReLU."""
    from reszoo import naming

    pad = naming.pad_of(naming.STEM_POOL)
    model = reszoo.create_model("resnet18", padding="symmetric", input_shape=(33, 33, 3))
    assert model.get_layer(pad).value == 0.0
    x = np.random.default_rng(0).normal(0, 1, (2, 33, 33, 3)).astype("float32")
    before = keras.Model(model.inputs, model.get_layer(pad).input)(x)
    pooled = keras.ops.convert_to_numpy(keras.Model(model.inputs, model.get_layer(naming.STEM_POOL).output)(x))
    padded = np.pad(keras.ops.convert_to_numpy(before), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))[:, ::2, ::2]
    np.testing.assert_array_equal(pooled, windows.max(axis=(-2, -1)))
    bare = reszoo.create_model("resnet18", padding="symmetric", norm=None, input_shape=(33, 33, 3))
    assert bare.get_layer(pad).value == 0.0  # norm=None still ends the stem with a ReLU
    preact = reszoo.create_model("resnetv2_50", padding="symmetric", input_shape=(33, 33, 3))
    assert preact.get_layer(pad).value == -np.inf  # the pre-activation stem pools the conv's output
