"""Measure a model on a dataset: ``python -m training.validate --model_dir=runs/resnet20-digits``.

Prints top-1, top-5, the loss and per-class accuracy of a training run (its last.keras), a
``.keras`` file, an exported SavedModel or published weights (``--weights=timm/ARCH.TAG``) on
a dataset (by default the run's own held-out split; an export's ONNX, OpenVINO or int8 file with
``--runtime``), appends a row to a results CSV (timm's
validate.py columns) and draws the confusion matrix. The eval transform is the one the weights
prescribe: resize to ``test_size / crop_pct``, then a central ``test_size`` crop. As timm's
validate.py, ``--test_pool`` adds test-time pooling above the tested size, and ``--average=N``
measures a run's last N checkpoints averaged (its avg_checkpoints.py).
"""

import sys

from absl import flags

from training.common import command
from training.common.command import MAX_IMAGE_SIZE
from training.common.runtimes import RUNTIMES

BODY = "training.validation"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area")  # tf.image.resize's, as timm's names


def define_flags():
    flags.DEFINE_string("model_dir", None, "a training run folder, a .keras file, or an exported SavedModel "
                        "(a version folder, or its model folder: the latest version)")
    flags.DEFINE_enum("checkpoint", "last", ["last", "best"], "a run folder's last.keras or best.keras")
    flags.DEFINE_string("weights", None, "instead of --model_dir: published weights by name (timm/ARCH.TAG: "
                        "reszoo.list_weights()), from the local cache")
    flags.DEFINE_string("dataset", None, "digits, folder, or a tfds name (default: the run's own)")
    flags.DEFINE_string("data_dir", None, "tfds data_dir, or the image folder for --dataset=folder")
    flags.DEFINE_float("validation_split", None, "--dataset=folder: the fraction held out (default: the run's, or 0.2)")
    flags.DEFINE_integer("seed", None, "--dataset=folder: the split's seed (default: the run's, or 0)")
    flags.DEFINE_integer("test_size", 0, "side of the images the model sees (0: the model's input size); FixRes "
                         "evaluates above the training size", lower_bound=0, upper_bound=MAX_IMAGE_SIZE)
    flags.DEFINE_float("crop_pct", 0.0, "central crop: images are resized to test_size / crop_pct, then cropped "
                       "(0: the weights' own, else 1)", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_enum("interpolation", None, list(INTERPOLATIONS), "resize method (default: the weights' own, else "
                      "bilinear)")
    flags.DEFINE_boolean("test_pool", False, "timm's test-time pooling (TestTimePoolHead) where --test_size is above "
                         "the size the weights were trained at: the classifier on every training-size window of the "
                         "feature map, the logits' mean of average and maximum; crop_pct 1 unless given")
    flags.DEFINE_integer("average", 0, "a run folder: measure the average of the weights of its last N checkpoint "
                         "generations (timm's avg_checkpoints.py; train with --checkpoint_hist=N or more to keep "
                         "them; 0: off)", lower_bound=0)
    flags.DEFINE_string("save_average", None, "--average: also write the averaged model to this new .keras file")
    flags.DEFINE_enum("runtime", "saved_model", list(RUNTIMES), "an export: the file to measure (" + ", ".join(
        f"{name}: {r.file}" for name, r in RUNTIMES.items()) + ")")
    flags.DEFINE_integer("batch_size", 64, "images per batch", lower_bound=1)
    flags.DEFINE_string("results_csv", None, "append a row here (default: validate.csv in the run folder, else in "
                        "the current folder)")
    flags.DEFINE_string("confusion_png", None, "the confusion matrix (default: confusion.png beside the CSV; "
                        "empty: none)")


def cli():
    """``reszoo-validate`` and ``python -m training.validate``."""
    define_flags()
    command.run(BODY, sys.modules[__name__], __doc__, run_as="training.validate")


if __name__ == "__main__":
    cli()
