"""int8 that proves its accuracy: static post-training quantization of an export's
``model.onnx`` for ONNX Runtime (``model_int8.onnx``) and OpenVINO (``model_int8.xml``), and of
its TensorFlow graph for LiteRT (``model_int8.tflite``), calibrated on images like
those the model was trained on, each file kept only when its top-1 on held-out images is within
``max_accuracy_drop`` points of float32's.

What is done to a residual net, and why (docs/serving.md has the numbers). ONNX Runtime:

- ``quant_pre_process`` (ONNX Runtime's recommended first step) optimises tf2onnx's graph, which
  folds every BatchNorm into the convolution before it, so each conv is quantized with the
  scale it really has;
- QDQ format: int8 weights per output channel (a residual stage's channels differ in range by
  orders of magnitude; one scale per tensor loses the small ones) and uint8 activations with
  MinMax calibration, the quantized Conv and Add kernels of ONNX Runtime (the skip and branch
  are added in int8 with a shared output scale);
- the logits stay float32 (``CLASSIFIER``): the classifier's weights and input are int8, its
  output is not quantized (``OpTypesToExcludeOutputQuantization``). Quantized logits share one
  scale set by the calibration images' logits, and a net trained to large logits loses its
  answers to it: a ResNet-56 of the digits with logits up to ±319 on its test split (±206 in
  calibration) lost 16-18 of 359 test images in each runtime that way, 2-4 without it.
  LiteRT's selective quantization cannot leave an op's output alone in float, so there the
  classifier runs in float32 (``QuantizationDebugger``'s denylist, TensorFlow's documented way);
- the first convolution, which sees raw pixels, is quantized: leaving it in float32 changed
  no net's answers beyond an image, and every layer left in float costs a dequantize and
  quantize round trip. The held-out check is what decides.

OpenVINO runs the same quantization: ``model_int8.xml`` is ``model_int8.onnx`` converted, its
QDQ pairs read as FakeQuantize nodes and executed by OpenVINO's int8 kernels (AMX or VNNI where
the CPU has them). NNCF's own ``quantize`` was measured beside it on ResNet-50 (5.6 ms against
5.7 at batch 1, 102 ms at 32 for both, 100% agreement for both) and left out: one calibration
then gives the same int8 model in both runtimes, and NNCF brings scikit-learn, which Keras
imports whenever it is installed (0.6 s added to every ``import keras``).
"""

import os
import tempfile

import numpy as np
import tensorflow as tf

from training import data as data_lib
from training.common import engines
from training.common.command import CommandError
from training.common.runtimes import INT8, RUNTIMES, files_of



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


class _Reader:
    """ONNX Runtime's calibration data reader (its ``CalibrationDataReader`` protocol): the
    calibration images in batches of 32."""

    def __init__(self, images, batch=32):
        self._batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


# The classifier, whose output (the logits) stays float32, by the names each graph gives it.
CLASSIFIER = {"onnx": ("Gemm", "MatMul"), "litert": ("FULLY_CONNECTED",)}

# How each int8 file is made, in words, for the metadata.
METHODS = {"onnx_int8": ("ONNX Runtime static quantization, QDQ: per-channel int8 weights, uint8 activations, "
                         "MinMax calibration, BatchNorm folded into the convolutions first; the classifier's "
                         "output (the logits) not quantized"),
           "openvino_int8": ("model_int8.onnx's quantization read by OpenVINO (its QDQ pairs become FakeQuantize "
                             "nodes) and run with OpenVINO's int8 kernels"),
           "litert_int8": ("TensorFlow's LiteRT converter, int8 (TFLITE_BUILTINS_INT8, per-channel int8 weights) "
                           "but the classifier (FULLY_CONNECTED, float32 by its selective quantization), the "
                           "calibration images as its representative dataset; float32 in and out")}


def _litert(graph, out_path, calibration):
    """TensorFlow's converter: every op but the classifier int8 (``TFLITE_BUILTINS_INT8``), per
    channel, calibrated on ``calibration`` as the representative dataset; the classifier kept in
    float32 by TensorFlow's selective quantization (``QuantizationDebugger``'s denylist, its
    documented way); float32 pixels in and logits out."""
    converter = tf.lite.TFLiteConverter.from_saved_model(graph, signature_keys=["serve"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = lambda: ([calibration[i:i + 1]] for i in range(len(calibration)))  # noqa: E731
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=samples,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(CLASSIFIER["litert"])))
    with open(out_path, "wb") as f:
        f.write(debugger.get_nondebug_quantized_model())


def quantize(folder, graph, calibration, held, max_drop):
    """The float32 ``model.onnx`` of the version folder ``folder`` quantized once (ONNX
    Runtime's QDQ, ``model_int8.onnx``) and converted for OpenVINO (``model_int8.xml``, whose
    FakeQuantize nodes OpenVINO runs with its int8 kernels); the TensorFlow SavedModel ``graph``
    (its ``serve`` signature: pixels to logits) converted to LiteRT's int8 model
    (``model_int8.tflite``); the logits stay float32 in all three. Each file is measured in its
    own runtime on ``held`` (images, labels) against float32: ``{runtime: report}`` with both
    top-1, their agreement and the images int8 lost and gained (float32 right and int8 wrong,
    and the reverse). A file that loses more than ``max_drop`` points, or that its runtime
    cannot run (the report's ``error``), is removed again."""
    import openvino as ov  # the [deploy] extra: imported only when quantizing
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    path = {name: os.path.join(folder, RUNTIMES[name].file) for name in ("onnx", *INT8)}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(path["onnx"], prepared, skip_symbolic_shape=True)
        quantize_static(prepared, path["onnx_int8"], _Reader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"OpTypesToExcludeOutputQuantization": list(CLASSIFIER["onnx"])})
    ov.save_model(ov.convert_model(path["onnx_int8"]), path["openvino_int8"])
    _litert(graph, path["litert_int8"], calibration)
    images, labels = held
    float_logits = engines.logits(engines.open_runtime("onnx", folder), images)
    right = float_logits.argmax(1) == labels
    float_top1 = 100 * float(np.mean(right))
    reports = {}
    for runtime in INT8:
        report = reports[runtime] = {
            "file": RUNTIMES[runtime].file, "runtime": runtime, "method": METHODS[runtime],
            "calibration_images": len(calibration), "validation_images": len(labels),
            "top1_float32": round(float_top1, 3), "max_accuracy_drop": max_drop}
        try:
            int8_logits = engines.logits(engines.open_runtime(runtime, folder), images)
        except RuntimeError as err:  # a runtime that cannot compile the graph (OpenVINO's oneDNN post-ops)
            report.update(written=False, error=(str(err).strip().splitlines() or ["?"])[-1][:200])
            continue
        int8_right = int8_logits.argmax(1) == labels
        int8_top1 = 100 * float(np.mean(int8_right))
        report.update(top1_int8=round(int8_top1, 3), written=float_top1 - int8_top1 <= max_drop,
                      top1_agreement=round(100 * float(np.mean(float_logits.argmax(1) == int8_logits.argmax(1))), 3),
                      images_lost=int(np.sum(right & ~int8_right)), images_gained=int(np.sum(~right & int8_right)))
    for runtime, report in reports.items():  # after all are measured: the IR was made from the QDQ file
        if not report["written"]:
            for name in files_of(RUNTIMES[runtime]):
                os.remove(os.path.join(folder, name))
    return reports
