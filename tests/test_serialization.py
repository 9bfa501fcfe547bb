"""Saved models load with identical outputs, and the builders run on the JAX backend."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import reszoo


@pytest.mark.parametrize("name,overrides", [
    ("resnet20", {}),
    ("preact_resnet110", dict(residual_scale="learnable", drop_path_rate=0.1)),
    ("densenet_bc100_k12", dict(dropout_rate=0.2)),
    ("plain20", dict(residual=False)),
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
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


JAX_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import keras, numpy as np
    assert keras.backend.backend() == "jax"
    import reszoo
    out = {}
    for name in sys.argv[2:]:
        model = keras.saving.load_model(os.path.join(sys.argv[1], name + ".keras"))
        x = np.load(os.path.join(sys.argv[1], name + ".npy"))
        fresh = reszoo.create_model(name)
        fresh(x[:1], training=True)
        out[name] = {"logits": model.predict(x, verbose=0).tolist(),
                     "params": reszoo.count_params(fresh)}
    assert "tensorflow" not in sys.modules, "reszoo imported tensorflow"
    print("RESULT" + json.dumps(out))
""")


def test_models_run_on_jax_backend_with_the_same_numbers(tmp_path, registered):
    names = ["resnet20", "preact_resnet164", "densenet40_k12", "preact_resnet18_cifar"]
    expected = {}
    for name in names:
        model = registered(name)
        x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}.npy", x)
        expected[name] = model.predict(x, verbose=0)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(tmp_path), *names],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name in names:
        assert result[name]["params"] == reszoo.count_params(registered(name))
        np.testing.assert_allclose(result[name]["logits"], expected[name], rtol=1e-4, atol=1e-4)


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
    registered("preact_resnet1001").save(path)
    loaded = keras.saving.load_model(path)
    assert reszoo.count_params(loaded) == 10_327_706
