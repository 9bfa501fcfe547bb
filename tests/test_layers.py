"""reszoo.BatchNorm must be Keras' BatchNormalization, only faster on TensorFlow."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import reszoo


def _pair(**kwargs):
    fused, reference = reszoo.BatchNorm(**kwargs), keras.layers.BatchNormalization(**kwargs)
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 6, 5, 8)).astype("float32")
    fused.build(x.shape)
    reference.build(x.shape)
    rng = np.random.default_rng(1)
    weights = [rng.normal(size=8).astype("float32") for _ in range(2)] + [
        rng.normal(size=8).astype("float32"), rng.uniform(0.5, 2, size=8).astype("float32")]
    fused.set_weights(weights)
    reference.set_weights(weights)
    return fused, reference, x


@pytest.mark.parametrize("training", [True, False])
def test_fused_batchnorm_matches_keras_outputs_and_gradients(training):
    fused, reference, x = _pair(momentum=0.9, epsilon=1e-5)
    assert fused._can_fuse(tf.constant(x), None)
    weighting = tf.constant(np.random.default_rng(5).normal(size=x.shape).astype("float32"))
    results = []
    for layer in (fused, reference):
        xt = tf.Variable(x)
        with tf.GradientTape() as tape:
            y = layer(xt, training=training)
            loss = tf.reduce_sum(y * weighting)
        grads = tape.gradient(loss, [xt] + layer.trainable_weights)
        results.append((y.numpy(), [g.numpy() for g in grads], [w.numpy() for w in layer.weights]))
    (y1, g1, w1), (y2, g2, w2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(w1, w2):  # moving mean/variance updated identically (biased variance)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if training:
        assert not np.allclose(w1[2], _pair()[0].get_weights()[2])


def test_fused_batchnorm_mixed_precision_output_dtype():
    layer = reszoo.BatchNorm(dtype="mixed_float16")
    y = layer(tf.random.normal((4, 3, 3, 5), dtype="float16"), training=True)
    assert y.dtype == tf.float16


def test_batchnorm_falls_back_to_keras_for_other_ranks():
    fused, reference = reszoo.BatchNorm(), keras.layers.BatchNormalization()
    x = np.random.default_rng(2).normal(size=(32, 6)).astype("float32")
    assert not fused._can_fuse(tf.constant(x), None)
    np.testing.assert_allclose(fused(x, training=True), reference(x, training=True), rtol=1e-5, atol=1e-6)


def test_batchnorm_config_round_trip():
    layer = reszoo.BatchNorm(momentum=0.8, epsilon=1e-3, name="bn")
    clone = reszoo.BatchNorm.from_config(layer.get_config())
    assert (clone.momentum, clone.epsilon, clone.name) == (0.8, 1e-3, "bn")
    assert keras.saving.get_registered_name(reszoo.BatchNorm) == "reszoo>BatchNorm"


def test_zero_pad_shortcut_subsamples_and_pads():
    x = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    y = np.asarray(reszoo.ZeroPadShortcut(5, 2)(x))
    assert y.shape == (2, 2, 2, 5)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    assert not y[..., 3:].any()
