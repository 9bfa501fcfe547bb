"""Export a model for serving: ``python -m training.export --model_dir=runs/resnet20-digits``
(a run), ``--weights=timm/resnet50.a1_in1k`` (published weights, with their eval transform and
ImageNet's class names) or ``--model_file=model.keras``.

Writes ``saved_models/<name>/<version>/``, a SavedModel that TensorFlow Serving,
``saved_model_cli`` and ``tf.saved_model.load`` take as it is, with three signatures:

- ``serving_default``: ``images`` float32 [batch, H, W, C], raw pixels (0..255);
- ``serving_uint8``: ``images`` uint8 [batch, H, W, C];
- ``serving_bytes``: ``image_bytes`` tf.string [batch], encoded JPEG/PNG/BMP/GIF/WebP, decoded and
  resized inside (bilinear, as in training).

Each returns ``logits``, ``probabilities``, ``top_k_ids``, ``top_k_scores`` and
``top_k_names``. The model's normalisation is its first layer, so nothing is done outside.
``metadata.json`` sits beside ``saved_model.pb``; ``--formats=onnx,tflite`` adds
``model.onnx`` (tf2onnx) and ``model.tflite``, ``--formats=openvino`` OpenVINO's float32 IR
(``model.xml`` and ``model.bin``, converted from ``model.onnx``), ``--formats=timm`` a ``timm/``
folder in timm's hub layout (``reszoo.hub.save_timm``). ``--quantize=int8`` adds
``model_int8.onnx``, ``model_int8.xml`` and ``model_int8.tflite`` (``training.quantize``), each
kept only when its top-1 on held-out images is within ``--max_accuracy_drop`` of float32's.
Every file is checked against the Keras model
before the version is renamed into place; a version is never overwritten.
"""

import sys

from absl import flags

from training.common import command
from training.flags import EXPORT_FORMATS as FORMATS

BODY = "training.exporter"


def define_flags():
    flags.DEFINE_string("model_dir", None, "a training run folder (holds last.keras, results.json, flags.json); or "
                        "--weights, or --model_file")
    flags.DEFINE_string("weights", None, "instead of --model_dir: published weights, timm/ARCH.TAG (reszoo.list_weights()) "
                        "or imagenet with --model; exported with their eval transform and ImageNet's class names")
    flags.DEFINE_string("model", None, "--weights=imagenet: the registered model (e.g. resnet50)")
    flags.DEFINE_string("model_file", None, "instead of --model_dir: a .keras model file")
    flags.DEFINE_enum("checkpoint", "last", ["last", "best"], "export last.keras or best.keras")
    flags.DEFINE_string("export_dir", "saved_models", "base folder: the export goes to EXPORT_DIR/NAME/VERSION")
    flags.DEFINE_string("name", None, "model name under export_dir (default MODEL_DATASET)")
    flags.DEFINE_integer("version", 0, "version number (0: one more than the highest there)", lower_bound=0)
    flags.DEFINE_list("formats", ["saved_model"], f"any of {', '.join(FORMATS)} (saved_model is always written; "
                      "openvino converts model.onnx, so it writes that too)")
    flags.DEFINE_integer("top_k", 5, "classes in the top-k outputs (at most the number of classes)", lower_bound=1)
    flags.DEFINE_enum("quantize", "none", ["none", "int8"], "int8: also model_int8.onnx (ONNX Runtime's static "
                      "quantization, per-channel int8 weights), model_int8.xml (the same in OpenVINO) and "
                      "model_int8.tflite (LiteRT, int8 but the classifier), each "
                      "written only if its top-1 on held-out images is within --max_accuracy_drop of float32's; "
                      "implies --formats=onnx,openvino")
    flags.DEFINE_integer("calibration_images", 256, "--quantize: images to calibrate on", lower_bound=1)
    flags.DEFINE_string("calibration_data", None, "--quantize: a folder of class sub-folders of images to calibrate "
                        "on (default: the run's training split)")
    flags.DEFINE_string("validation_data", None, "--quantize: held-out images for the accuracy check, a folder of "
                        "sub-folders named as the run's classes (default: the run's test split)")
    flags.DEFINE_float("max_accuracy_drop", 1.0, "--quantize: top-1 points int8 may lose against float32",
                       lower_bound=0.0, upper_bound=100.0)
    flags.register_validator("formats", lambda v: set(v) <= set(FORMATS),
                             f"must be a comma-separated list of {', '.join(FORMATS)}")


def cli():
    """``reszoo-export`` and ``python -m training.export``."""
    define_flags()
    command.run(BODY, sys.modules[__name__], __doc__, run_as="training.export")


if __name__ == "__main__":
    cli()
