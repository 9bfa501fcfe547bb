"""int8 that proves its accuracy: static post-training quantization of an export's
``model.onnx`` for ONNX Runtime (``model_int8.onnx``) and for OpenVINO (``model_int8.xml``,
NNCF), calibrated on images like those the model was trained on, each file kept only when its
top-1 on held-out images is within ``max_accuracy_drop`` points of float32's.

What is done to a residual net, and why (docs/serving.md has the numbers). ONNX Runtime:

- ``quant_pre_process`` (ONNX Runtime's recommended first step) optimises tf2onnx's graph, which
  folds every BatchNorm into the convolution before it, so each conv is quantized with the
  scale it really has;
- QDQ format: int8 weights per output channel (a residual stage's channels differ in range by
  orders of magnitude; one scale per tensor loses the small ones) and uint8 activations with
  MinMax calibration, the quantized Conv and Add kernels of ONNX Runtime (the skip and branch
  are added in int8 with a shared output scale);
- the first convolution, which sees raw pixels, and the classifier are quantized too: on the
  nets measured the agreement with float32 stayed at 99-100%, and every layer left in float
  would cost a dequantize and quantize round trip. The held-out check is what decides.

OpenVINO: NNCF's ``quantize`` on the IR converted from ``model.onnx``, per-channel weights and
the MIXED preset (asymmetric activations: a ReLU's output and a raw pixel are never negative, so
a symmetric scale would waste half its range); activation ranges from the global min and max of
the calibration images (NNCF's default averages per-image ranges, which clips the outliers a
skip connection carries) and the full bias correction, which moves each convolution's bias to
undo the mean shift its int8 weights cause. On a 3-epoch ResNet-20 of the digits these two
took the agreement with float32 from 97.8% (NNCF's defaults) to 100%. NNCF's overflow fix stays
(7-bit weights in the first layer, so that CPUs without VNNI do not saturate): the same file
then gives the same answers on every CPU, and turning it off on this AMX machine moved the
agreement by a few images either way. OpenVINO's CPU plugin
folds BatchNorm and runs the skip-plus-branch add in int8 where both sides are quantized.
"""

import contextlib
import io
import logging
import os
import tempfile

import nncf  # imports PyTorch where it is installed: seconds, paid by int8 exports alone
import numpy as np
import openvino as ov
import tensorflow as tf
from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
from nncf.quantization.range_estimator import RangeEstimatorParametersSet
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from training import data as data_lib
from training import engines
from training.errors import CommandError
from training.runtimes import RUNTIMES, files_of



def _folder_images(folder, image_shape, flag):
    """Every image of a folder of class sub-folders, at the model's size: (images, labels,
    class names)."""
    try:
        data = data_lib.load("folder", folder, image_shape[0], 0.5, 0, channels=image_shape[2])
    except data_lib.DataError as err:
        raise CommandError(f"--{flag}={folder}: {err}", 2) from None
    x, y, x_test, y_test = data_lib.in_memory(data)
    return np.concatenate([x, x_test]).astype("float32"), np.concatenate([y, y_test]), data.class_names


def _run_data(run_flags, image_shape):
    try:
        data = data_lib.load(run_flags.get("dataset") or "digits", run_flags.get("data_dir"),
                             run_flags.get("image_size") or None, run_flags.get("validation_split", 0.2),
                             run_flags.get("seed", 0), channels=image_shape[2])
        return data, data_lib.in_memory(data, 4096)
    except data_lib.DataError as err:
        raise CommandError(f"--quantize=int8 calibrates on the run's data, which cannot be loaded here ({err}): "
                           "give --calibration_data and --validation_data", 2) from None


def _at_size(images, image_shape):
    if tuple(images.shape[1:3]) == tuple(image_shape[:2]):
        return images.astype("float32")
    return tf.image.resize(images.astype("float32"), image_shape[:2]).numpy()


def held_data(options, run_flags, image_shape, class_names):
    """``(calibration images, (held-out images, labels), where each came from)``, all float32
    raw pixels at the model's input size."""
    run = None
    if options.calibration_data:
        calibration, _, _ = _folder_images(options.calibration_data, image_shape, "calibration_data")
        calibrated_on = options.calibration_data
    else:
        run, (x, _, _, _) = _run_data(run_flags, image_shape)
        calibration, calibrated_on = x, f"the training split of {run.name}"
    if options.validation_data:
        held, labels, names = _folder_images(options.validation_data, image_shape, "validation_data")
        if list(names) != list(class_names):
            raise CommandError(f"--validation_data={options.validation_data}: its classes {names[:5]} are not the "
                               f"model's {list(class_names)[:5]} (sub-folders named as the run's classes)", 2)
        validated_on = options.validation_data
    else:
        if run is None:
            run, _ = _run_data(run_flags, image_shape)
        _, _, held, labels = data_lib.in_memory(run)
        validated_on = f"the test split of {run.name}"
    rng = np.random.default_rng(0)
    chosen = rng.permutation(len(calibration))[:options.calibration_images]
    return (_at_size(calibration[np.sort(chosen)], image_shape), (_at_size(held, image_shape), labels),
            {"calibration": calibrated_on, "validation": validated_on})


class _Reader(CalibrationDataReader):
    """ONNX Runtime's calibration data reader: the calibration images in batches of 32."""

    def __init__(self, images, batch=32):
        self._batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def _onnx_runtime(float_onnx, out_path, calibration):
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(float_onnx, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, out_path, _Reader(calibration), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _openvino(float_onnx, out_path, calibration):
    nncf.set_log_level(logging.ERROR)
    ranges = AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        quantized = nncf.quantize(ov.convert_model(float_onnx),
                                  nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))]),
                                  preset=nncf.QuantizationPreset.MIXED, subset_size=len(calibration),
                                  fast_bias_correction=False, advanced_parameters=ranges)
    ov.save_model(quantized, out_path)


# How each int8 file is made (METHODS says it in words, for the metadata).
QUANTIZERS = {"onnx_int8": _onnx_runtime, "openvino_int8": _openvino}
METHODS = {"onnx_int8": ("ONNX Runtime static quantization, QDQ: per-channel int8 weights, uint8 activations, "
                          "MinMax calibration, BatchNorm folded into the convolutions first"), "openvino_int8": (
    "NNCF post-training quantization of the OpenVINO IR: per-channel int8 weights, asymmetric int8 activations "
    "(MIXED preset) with min/max ranges, full bias correction; OpenVINO folds BatchNorm into the convolutions")}


def quantize(runtime, folder, calibration, held, max_drop):
    """The float32 ``model.onnx`` of the version folder ``folder`` quantized for ``runtime``
    (``onnx_int8`` or ``openvino_int8``) into that runtime's file, then measured on ``held``
    (images, labels) against float32: a report of both top-1 and their agreement. The file is
    removed again when int8 loses more than ``max_drop`` points."""
    out_path = os.path.join(folder, RUNTIMES[runtime].file)
    QUANTIZERS[runtime](os.path.join(folder, RUNTIMES["onnx"].file), out_path, calibration)
    images, labels = held
    float_logits = engines.logits(engines.open_runtime("onnx", folder), images)
    int8_logits = engines.logits(engines.open_runtime(runtime, folder), images)
    float_top1 = 100 * float(np.mean(float_logits.argmax(1) == labels))
    int8_top1 = 100 * float(np.mean(int8_logits.argmax(1) == labels))
    report = {"file": RUNTIMES[runtime].file, "runtime": runtime, "method": METHODS[runtime],
              "calibration_images": len(calibration), "validation_images": len(labels),
              "top1_float32": round(float_top1, 3), "top1_int8": round(int8_top1, 3),
              "top1_agreement": round(100 * float(np.mean(float_logits.argmax(1) == int8_logits.argmax(1))), 3),
              "max_accuracy_drop": max_drop, "written": float_top1 - int8_top1 <= max_drop}
    if not report["written"]:
        for name in files_of(RUNTIMES[runtime]):
            os.remove(os.path.join(folder, name))
    return report
