"""timm's model API the Keras way: ``num_classes=0`` and ``global_pool`` at build time,
``reset_classifier``, ``forward_features`` / ``forward_head(pre_logits=)`` and
``forward_intermediates``; each checked against a direct computation on the same model, and the
stage outputs against the backbone (``features_only``), whose levels tests/test_timm.py checks
against timm's own."""

import keras
import numpy as np
import pytest

import reszoo
from reszoo import naming, transfer

X = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")


@pytest.fixture(scope="module")
def model():
    return reszoo.create_model("resnet18", input_shape=(64, 64, 3), num_classes=10)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _same_weights(target, source):
    """``source``'s weights into ``target``, layer by layer (by name)."""
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    return target


def test_num_classes_0_and_global_pool_pool_as_timm_does(model):
    feature_map = _np(model.forward_features(X))
    average, maximum = feature_map.mean(axis=(1, 2)), feature_map.max(axis=(1, 2))
    expected = {"avg": average, "max": maximum, "avgmax": (average + maximum) / 2,
                "catavgmax": np.concatenate([average, maximum], -1)}  # timm: torch.cat((avg, max), 1)
    for kind, pooled in expected.items():
        features = _same_weights(reszoo.create_model("resnet18", input_shape=(64, 64, 3), num_classes=0,
                                                     global_pool=kind), model)
        np.testing.assert_allclose(_np(features(X, training=False)), pooled, rtol=1e-5, atol=1e-5)
        assert naming.pooled([layer.name for layer in features.layers]) == naming.POOLED[kind]
        with_head = reszoo.create_model("resnet18", num_classes=4, global_pool=kind)
        assert with_head.get_layer(naming.CLASSIFIER).input.shape[-1] == pooled.shape[-1]
    unpooled = reszoo.create_model("resnet18", num_classes=0, global_pool="")
    assert unpooled.output_shape == (None, None, None, 512)
    assert reszoo.create_model("resnet18", num_classes=0).output_shape == (None, 512)  # timm's default: avg
    # Keras' spellings are unchanged.
    assert reszoo.create_model("resnet18", include_top=False, pooling="max").output_shape == (None, 512)
    assert reszoo.create_model("resnet18", include_top=False).output_shape == (None, None, None, 512)
    for bad, says in [(dict(pooling="avg", global_pool="max", include_top=False), "disagree"),
                      (dict(global_pool="", num_classes=5), "num_classes=0"),
                      (dict(global_pool="median"), "global_pool")]:
        with pytest.raises(ValueError, match=says):
            reszoo.create_model("resnet18", **bad)


def test_forward_head_and_pre_logits_split_the_model_where_timm_does(model):
    feature_map = model.forward_features(X)
    assert tuple(feature_map.shape) == (2, 2, 2, 512)
    np.testing.assert_allclose(_np(model.forward_head(feature_map)), _np(model(X, training=False)), atol=1e-6)
    np.testing.assert_allclose(_np(model.forward_head(feature_map, pre_logits=True)),
                               _np(feature_map).mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)


def test_forward_intermediates_are_the_backbone_s_levels_and_stop_early_stops(model):
    backbone = _same_weights(reszoo.create_model("resnet18", input_shape=(64, 64, 3), features_only=True), model)
    levels = [_np(v) for v in backbone(X, training=False).values()]
    final, intermediates = model.forward_intermediates(X)
    assert len(intermediates) == len(levels) == 5
    for got, want in zip(intermediates, levels):
        np.testing.assert_allclose(_np(got), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(final), _np(model.forward_features(X)), atol=1e-6)
    final, picked = model.forward_intermediates(X, indices=[1, -2], stop_early=True)
    assert [tuple(p.shape) for p in picked] == [(2, 16, 16, 64), (2, 4, 4, 256)]
    np.testing.assert_allclose(_np(final), _np(picked[-1]))  # stopped after the last one asked for
    last_two = model.forward_intermediates(X, indices=2, intermediates_only=True)
    assert [tuple(p.shape) for p in last_two] == [(2, 4, 4, 256), (2, 2, 2, 512)]
    with pytest.raises(ValueError, match="has 5 stage outputs, 0..4"):
        model.forward_intermediates(X, indices=[7])


def test_reset_classifier_puts_a_new_head_on_the_same_layers(model):
    for num_classes, global_pool, shape in [(0, None, (None, 512)), (5, None, (None, 5)),
                                            (5, "catavgmax", (None, 5)), (0, "", (None, 2, 2, 512))]:
        new = transfer.reset_classifier(model, num_classes, global_pool=global_pool)
        assert new.output_shape == shape
        assert new.get_layer("conv2_block1_1_conv") is model.get_layer("conv2_block1_1_conv")  # shared
        rebuilt = reszoo.create_model(new.build_spec.name, **new.build_spec.arguments())
        assert rebuilt.output_shape == new.output_shape and rebuilt.count_params() == new.count_params()
    assert transfer.reset_classifier(model, 5, "catavgmax").get_layer(naming.CLASSIFIER).input.shape[-1] == 1024
