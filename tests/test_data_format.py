"""channels_first: one model per code path of the builders (CIFAR with option-A shortcuts,
basic, bottleneck, ResNet-D, ResNeXt, SE, pre-activation, ResNetV2, DenseNet, plain, the
"keras" variant with its explicit padding and BGR preprocessing) built under both data
formats has the same parameters, multiply-adds, pyramid and outputs (transposed), and timm's
weights, through the loader that reads the published ones, load equal under both: on JAX and
PyTorch, where the layout matters most (each in a process of its own)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = r'''
import json, sys
import numpy as np
import keras, reszoo
from reszoo import factory, flops, hub, layout
from benchmarks.common import randomized as random_weights
out, cases = sys.argv[1], json.loads(sys.argv[2])
rng = np.random.default_rng(0)
result = {"backend": keras.backend.backend()}


def randomized(model):
    return random_weights(model, rng)


def pyramid(model, x):
    levels = reszoo.features(model)
    maps = keras.Model(model.inputs[0], [model.get_layer(f["layer"]).output for f in levels])(x, training=False)
    return {f["level"]: keras.ops.convert_to_numpy(m) for f, m in zip(levels, maps)}


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


for name, arguments, via_timm in cases:
    side = arguments.pop("side")
    keras.config.set_image_data_format("channels_last")
    with factory.weights_to_come():  # no random draws at build: randomized() sets every weight
        last = randomized(reszoo.create_model(name, input_shape=(side, side, 3), **arguments))
    if via_timm:
        hub.save_timm(last, f"{out}/{name}")
    keras.config.set_image_data_format("channels_first")
    if via_timm:
        first = reszoo.create_model(weights=f"{out}/{name}", input_shape=(3, side, side))
    else:
        with factory.weights_to_come():
            first = reszoo.create_model(name, input_shape=(3, side, side), **arguments)
        first.set_weights(last.get_weights())
    x = rng.uniform(0, 255, (2, side, side, 3)).astype("float32")
    x_first = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    maps_last, maps_first = pyramid(last, x), pyramid(first, x_first)
    result[name] = {
        "format": layout.of(first), "input": list(first.input_shape[1:]),
        "logits": rel(*(keras.ops.convert_to_numpy(m(v, training=False)) for m, v in ((first, x_first), (last, x)))),
        "levels": {k: rel(maps_first[k].transpose(0, 2, 3, 1), v) for k, v in maps_last.items()},
        "same": [reszoo.count_params(first) == reszoo.count_params(last),
                 flops.count_macs(first) == flops.count_macs(last),
                 reszoo.features(first) == reszoo.features(last)]}
print("RESULT" + json.dumps(result))
'''

CASES = {  # JAX compiles every op of a first call: its share is the smaller nets
    "jax": [["resnet20", {"side": 32}, False], ["resnet18d", {"side": 32}, True],
            ["resnetv2_50", {"side": 32}, True]],
    "torch": [["densenet121", {"side": 32, "padding": "symmetric"}, True], ["seresnet50", {"side": 32}, True],
              ["resnext50_32x4d", {"side": 32}, True], ["resnet50", {"side": 32, "variant": "keras"}, False],
              ["preact_resnet18", {"side": 32, "global_pool": "catavgmax"}, False], ["plain20", {"side": 32}, False]],
}
TOLERANCE = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(CASES))
def test_models_are_the_same_under_both_data_formats(backend, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(CASES[backend])],
                          capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert result.pop("backend") == backend
    assert sorted(result) == sorted(name for name, _, _ in CASES[backend])
    for name, found in result.items():
        assert found["format"] == "channels_first" and found["input"][0] == 3, (name, found)
        assert found["same"] == [True, True, True], (name, found)
        assert found["logits"] < TOLERANCE and max(found["levels"].values()) < TOLERANCE, (name, found)
