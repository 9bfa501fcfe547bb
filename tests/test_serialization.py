"""Saved models load with identical outputs, and the builders (pyramid features included)
run on the JAX backend."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import reszoo
from helpers import infer



@pytest.mark.parametrize("name,overrides", [
    ("resnet20", {}),
    ("preact_resnet110", dict(residual_scale="learnable", drop_path_rate=0.1)),
    ("densenet_bc100_k12", dict(dropout_rate=0.2)),
    ("plain20", dict(residual=False)),
    ("resnet20", dict(weight_tied=True)),
    ("resnet20", dict(weight_tied="convs")),
])
def test_keras_file_round_trip_gives_identical_outputs(tmp_path, name, overrides):
    model = reszoo.create_model(name, **overrides)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    # One training step so BN statistics, the scales and all weights are non-default.
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, np.arange(4))
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    np.testing.assert_array_equal(infer(loaded, x), infer(model, x))


JAX_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import keras, numpy as np
    assert keras.backend.backend() == "jax"
    import reszoo
    cases = json.loads(sys.argv[2])
    infer = lambda m, x: keras.tree.map_structure(keras.ops.convert_to_numpy, m(x, training=False))
    out = {}
    for key, (name, overrides, shape) in cases.items():
        model = keras.saving.load_model(os.path.join(sys.argv[1], key + ".keras"))
        x = np.load(os.path.join(sys.argv[1], key + ".npy"))
        features = reszoo.create_model(name, features_only=True, **overrides)
        reszoo.weights.load_weights(features, model)
        out[key] = {"logits": infer(model, x).tolist(),
                    "params": reszoo.count_params(reszoo.create_model(name, **overrides)),
                    "features": {k: v.tolist() for k, v in infer(features, x).items()}}
    assert "tensorflow" not in sys.modules, "reszoo imported tensorflow"
    print("RESULT" + json.dumps(out))
""")

# Every block type, stem and shortcut option, at shallow depths (JAX compiles on first call).
# DenseNet's plain (non-BC) layer is DenseNet-BC's without the 1x1 conv: the same Keras layers.
JAX_CASES = {
    "post_basic_A": ("resnet20", {}, [32, 32, 3]),
    "weight_tied": ("resnet32", {"weight_tied": True}, [32, 32, 3]),
    "preact_bottleneck_B": ("preact_resnet164", {"depth": 29, "residual_scale": "learnable"}, [32, 32, 3]),
    "preact_basic_B": ("preact_resnet18_cifar", {}, [32, 32, 3]),
    "imagenet_bottleneck": ("resnet50", {"layers": [1, 1, 1, 1], "input_shape": [64, 64, 3]}, [64, 64, 3]),
    "densenet_bc": ("densenet121", {"blocks": [2, 2, 2, 2], "input_shape": [64, 64, 3]}, [64, 64, 3]),
}


@pytest.mark.slow
def test_models_run_on_jax_backend_with_the_same_numbers(tmp_path):
    expected = {}
    for key, (name, overrides, shape) in JAX_CASES.items():
        model = reszoo.create_model(name, **overrides)
        x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(x, np.arange(2))  # move BN statistics off their defaults
        model.save(tmp_path / f"{key}.keras")
        np.save(tmp_path / f"{key}.npy", x)
        levels = reszoo.features(model)
        maps = infer(keras.Model(model.inputs, [model.get_layer(f["layer"]).output for f in levels]), x)
        expected[key] = (infer(model, x), reszoo.count_params(model),
                         {f["level"]: m for f, m in zip(levels, maps)})
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path), json.dumps(JAX_CASES)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for key, (logits, params, features) in expected.items():
        assert result[key]["params"] == params, key
        np.testing.assert_allclose(result[key]["logits"], logits, rtol=1e-4, atol=1e-4, err_msg=key)
        assert list(result[key]["features"]) == list(features), key  # features_only on JAX: same levels
        for level, value in features.items():
            np.testing.assert_allclose(result[key]["features"][level], value, rtol=1e-4, atol=1e-4, err_msg=key)


def test_reszoo_does_not_import_tensorflow():
    code = "import sys, reszoo; reszoo.create_model('resnet20'); print('tensorflow' in sys.modules)"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_deepest_models_build_and_save(tmp_path, registered):
    # ~4,200-layer graphs overflow Python's default recursion limit without reszoo's guard.
    model = registered("resnet1202")
    assert len(model.layers) > 4000
    path = tmp_path / "preact_resnet1001.keras"
    model = registered("preact_resnet1001")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert reszoo.count_params(loaded) == 10_327_706
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
