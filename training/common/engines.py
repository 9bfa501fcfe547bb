"""An export's non-TensorFlow files as callables, float32 raw pixels ``[batch, H, W, C]`` in and
logits out: ``model.onnx`` / ``model_int8.onnx`` in ONNX Runtime, ``model.xml`` /
``model_int8.xml`` in OpenVINO (float32 with ``INFERENCE_PRECISION_HINT=f32``, since on a CPU
with AMX OpenVINO would otherwise run a float32 IR in bf16; ``openvino_bf16`` asks for that on
purpose), ``model_int8.tflite`` in LiteRT. Each package is imported when a file of its runtime
is opened: they are optional extras, and only the runtime used need be installed."""

import os
import threading

import numpy as np

from training.common import layout
from training.common.command import first_line
from training.common.runtimes import RUNTIMES


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


def litert(path):
    """A LiteRT flatbuffer in ``ai_edge_litert``'s interpreter (``tf.lite.Interpreter`` is
    deprecated), its input resized to each batch."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
    lock = threading.Lock()

    def run(pixels):
        with lock:
            if tuple(interpreter.get_input_details()[0]["shape"]) != pixels.shape:
                interpreter.resize_tensor_input(given["index"], pixels.shape)
                interpreter.allocate_tensors()
            interpreter.set_tensor(given["index"], np.ascontiguousarray(pixels, "float32"))
            interpreter.invoke()
            return interpreter.get_tensor(taken["index"])
    interpreter.allocate_tensors()
    return run


def saved_model(path, signature="serving_bytes"):
    """A signature of the export at ``path`` (a version folder, or its model folder: the newest) (``serving_bytes``, ``serving_default``...), or ValueError
    saying why not."""
    import tensorflow as tf

    version = layout.version_folder(path)
    problem = layout.missing(version)
    if problem:
        raise ValueError(f"{version} {problem}; export it again")
    try:
        loaded = tf.saved_model.load(version)
    except Exception as err:  # TF raises OSError, DecodeError, DataLossError... for damaged files
        raise ValueError(f"{version} cannot be loaded, its files are damaged ({type(err).__name__}: "
                         f"{first_line(err)[:200]}); export it again") from None
    if "serving_bytes" not in loaded.signatures:
        raise ValueError(f"{version} is not a reszoo export (no serving_bytes signature; it has "
                         f"{', '.join(loaded.signatures) or 'none'})")
    return loaded.signatures[signature]


def open_runtime(name, folder):
    """``name``'s file in the version folder ``folder`` as ``pixels -> logits``."""
    runtime = RUNTIMES[name]
    path = os.path.join(folder, runtime.file)
    if runtime.package == "onnxruntime":
        return onnx(path)
    if runtime.package == "openvino":
        return openvino(path, runtime.hint)
    if runtime.package == "ai_edge_litert":
        return litert(path)
    raise ValueError(f"{name} is not a runtime of an export's extra files")


def logits(run, images, batch=64):
    """``run`` over ``images`` in batches, as one float32 array."""
    return np.concatenate([np.asarray(run(images[i:i + batch]), "float32") for i in range(0, len(images), batch)])
