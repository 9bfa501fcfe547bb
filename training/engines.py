"""An export's non-TensorFlow files as callables, float32 raw pixels ``[batch, H, W, C]`` in and
logits out: ``model.onnx`` / ``model_int8.onnx`` in ONNX Runtime, ``model.xml`` /
``model_int8.xml`` in OpenVINO (float32 with ``INFERENCE_PRECISION_HINT=f32``, since on a CPU
with AMX OpenVINO would otherwise run a float32 IR in bf16; ``openvino_bf16`` asks for that on
purpose). The package of each is imported when a file of its runtime is opened, so that only
the runtimes used need to be installed (``training.runtimes`` names their extras)."""

import os
import threading

import numpy as np

from training.runtimes import RUNTIMES


def onnx(path):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda pixels: session.run(["logits"], {"images": pixels})[0]


def openvino(path, hint="f32"):
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    output, lock = compiled.output(0), threading.Lock()

    def run(pixels):  # the compiled model's own infer request is one: a thread at a time
        with lock:
            return compiled(pixels)[output]
    return run


def open_runtime(name, folder):
    """``name``'s file in the version folder ``folder`` as ``pixels -> logits``."""
    runtime = RUNTIMES[name]
    path = os.path.join(folder, runtime.file)
    if runtime.package == "onnxruntime":
        return onnx(path)
    if runtime.package == "openvino":
        return openvino(path, runtime.hint)
    raise ValueError(f"{name} is not a runtime of an export's extra files")


def logits(run, images, batch=64):
    """``run`` over ``images`` in batches, as one float32 array."""
    return np.concatenate([np.asarray(run(images[i:i + batch]), "float32") for i in range(0, len(images), batch)])
