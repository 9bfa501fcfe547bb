"""Flags of ``python -m training.train``, their checks, and the papers' recipes; and how
every command parses its flags and prints its ``--help``."""

import ast
import collections
import math
import os
import sys

from absl import flags

from training.common import command
from training.common.command import KERAS_APPLICATIONS_PREFIX, MAX_IMAGE_SIZE, CommandError
from training.recipes import RECIPES, TIED, as_flag, flags_of

FLAGS = flags.FLAGS

AUGMENTATIONS = ("auto", "none", "crop", "crop_flip", "inception")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
EXPORT_FORMATS = ("saved_model", "onnx", "openvino", "tflite", "timm")  # reszoo-export --formats, train --export_formats
DIAGNOSTICS_EVERY = 100  # steps between measurements for a bare --diagnostics



def define():
    flags.DEFINE_string("model", "resnet20", "registry name (python -c 'import reszoo; print(reszoo.list_models())')")
    flags.DEFINE_list("model_args", [], "builder overrides, key=value (e.g. drop_path_rate=0.1,shortcut=B)")
    flags.DEFINE_string("dataset", "digits", "digits (embedded), folder (see --data_dir), or a tfds name")
    flags.DEFINE_string("data_dir", None, "tfds data_dir, or the image folder for --dataset=folder")
    flags.DEFINE_integer("image_size", 0, "resize images to this side (folder and variable-size tfds; 0: default)",
                         lower_bound=0, upper_bound=MAX_IMAGE_SIZE)
    flags.DEFINE_float("validation_split", 0.2, "fraction of a folder held out for evaluation")
    flags.DEFINE_string("model_dir", None, "run folder: checkpoints, history, logs, flags (default runs/MODEL-DATASET)")
    flags.DEFINE_boolean("overwrite", False, "start model_dir's run again from scratch, deleting its checkpoints")
    flags.DEFINE_boolean("allow_flag_changes", False, "resume model_dir's run although optimisation flags changed "
                         "(learning rate, schedule, epochs, batch size...); model and data flags must match")
    flags.DEFINE_integer("batch_size", 64, "global batch size", lower_bound=1)
    flags.DEFINE_integer("epochs", 30, "training epochs", lower_bound=1)
    flags.DEFINE_integer("train_steps", 0, "total steps instead of --epochs (rounded up to whole epochs)", lower_bound=0)
    flags.DEFINE_enum("optimizer", "sgd", ["sgd", "adamw", "lamb"], "SGD with momentum, AdamW, or LAMB (You et al. 2020)")
    flags.DEFINE_float("learning_rate", 0.1, "peak learning rate (at --lr_batch_base if set)", lower_bound=0.0)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_boolean("nesterov", False, "Nesterov momentum")
    flags.DEFINE_float("weight_decay", 5e-4, "on conv/dense kernels only (SGD: L2 as in the papers; AdamW: decoupled)", lower_bound=0.0)
    flags.DEFINE_enum("lr_schedule", "cosine", ["step", "cosine", "constant"], "learning-rate schedule")
    flags.DEFINE_list("lr_decay_epochs", [], "step schedule: epochs at which lr is multiplied by --lr_decay_rate")
    flags.DEFINE_float("lr_decay_rate", 0.1, "step schedule factor", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("warmup_epochs", 0.0, "warm-up length in epochs", lower_bound=0.0)
    flags.DEFINE_enum("warmup", "linear", ["linear", "constant"], "linear ramp, or constant lr/10 (He et al. 2015)")
    flags.DEFINE_integer("lr_batch_base", 0, "--learning_rate is for this batch size; scaled to --batch_size by "
                         "--lr_scaling (0: off)", lower_bound=0)
    flags.DEFINE_enum("lr_scaling", "linear", ["linear", "sqrt"], "lr *= batch_size / lr_batch_base (Goyal et al. "
                      "2017), or its square root (timm's rule for LAMB)")
    flags.DEFINE_float("label_smoothing", 0.0, "label smoothing", lower_bound=0.0, upper_bound=0.99)
    flags.DEFINE_enum("loss", "ce", ["ce", "bce"], "softmax cross-entropy, or binary cross-entropy per class "
                      "(Wightman et al. 2021)")
    flags.DEFINE_float("bce_target_threshold", 0.0, "--loss=bce: targets above this become 1 (0: off)",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("ema_decay", 0.0, "keep an exponential moving average of the weights, evaluated and saved "
                       "(per step; 0: off)", lower_bound=0.0, upper_bound=0.999999)
    flags.DEFINE_enum("augment", "auto", list(AUGMENTATIONS), "auto: crop for digits, crop_flip for CIFAR-size, inception for large images")
    flags.DEFINE_enum("auto_augment", "none", ["none", "randaugment", "trivialaugment"], "after --augment: "
                      "RandAugment (Cubuk et al. 2020) or TrivialAugment (Mueller & Hutter 2021), Keras' layer")
    flags.DEFINE_integer("rand_augment_ops", 2, "RandAugment: operations per image", lower_bound=1, upper_bound=10)
    flags.DEFINE_integer("rand_augment_magnitude", 9, "RandAugment: magnitude, 0-10 (timm's m)", lower_bound=0,
                         upper_bound=10)
    flags.DEFINE_float("random_erasing", 0.0, "probability of erasing a random box (Zhong et al. 2020)",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("mixup_alpha", 0.0, "mixup (Zhang et al. 2018): Beta(alpha, alpha) weights (0: off)",
                       lower_bound=0.0)
    flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix (Yun et al. 2019): Beta(alpha, alpha) areas (0: off)",
                       lower_bound=0.0)
    flags.DEFINE_float("mixup_switch_prob", 0.5, "with both: probability that a batch gets CutMix, not mixup",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("mixup_prob", 1.0, "probability that a batch is mixed at all", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_integer("repeated_augmentation", 1, "each image N times per epoch, differently augmented "
                         "(Hoffer et al. 2020); the epoch keeps its length", lower_bound=1, upper_bound=16)
    flags.DEFINE_float("train_size", 0.0, "FixRes (Touvron et al. 2019): train on images of this side in pixels, "
                       "or this fraction of the test size if <= 1; test at the full size (0: off)", lower_bound=0.0)
    flags.DEFINE_integer("diagnostics", 0, "measure the residual diagnostics (reszoo.diagnostics) every N steps "
                         f"into model_dir/diagnostics.jsonl and TensorBoard; --diagnostics alone: every "
                         f"{DIAGNOSTICS_EVERY} (0: off)", lower_bound=0)
    flags.DEFINE_boolean("show_batch", False, "save the first training batch, augmented, as model_dir/batch.png")
    flags.DEFINE_enum("dtype", "float32", ["float32", "mixed_float16", "mixed_bfloat16"], "compute dtype policy (logits stay float32)")
    flags.DEFINE_boolean("jit_compile", False, "XLA (off by default: it halves TF's CPU speed here)")
    flags.DEFINE_integer("steps_per_execution", 1, "train steps per tf.function call", lower_bound=1)
    flags.DEFINE_enum("distribution_strategy", "default", list(STRATEGIES), "tf.distribute strategy")
    flags.DEFINE_string("tpu", None, "TPU address for --distribution_strategy=tpu")
    flags.DEFINE_float("worker_timeout", 600.0, "multi_worker_mirrored: seconds to wait for the other workers "
                       "(at start and in each collective) before giving up", lower_bound=1.0)
    flags.DEFINE_integer("seed", 0, "random seed (weights, data order, augmentation)", lower_bound=0)
    flags.DEFINE_boolean("deterministic", False, "deterministic ops: the same flags give the same weights")
    flags.DEFINE_integer("eval_every", 1, "evaluate every N epochs", lower_bound=1)
    flags.DEFINE_integer("checkpoint_hist", 2, "checkpoint generations kept in model_dir/backup (timm's "
                         "--checkpoint-hist): the newest and at least one before it, in case it is damaged; more for "
                         "validate --average=N", lower_bound=2)
    flags.DEFINE_string("recipe", None, "a paper's recipe; flags given explicitly win. " + recipe_help())
    flags.DEFINE_string("init_from", None, "fine-tune: a .keras model or a run folder, published weights by name "
                        "(timm/resnet50.a1h_in1k: reszoo.list_weights()), a timm state dict (model.safetensors, "
                        ".bin, .pth, a timm hub folder, or hf-hub:USER/REPO), or keras_applications:NAME (e.g. "
                        "ResNet50) with --weights_path; its head is replaced")
    flags.DEFINE_string("weights_path", None, "--init_from=keras_applications:NAME: the keras.applications weights file (.h5)")
    flags.DEFINE_string("freeze", "none", "fine-tune: none, backbone, or a stage (e.g. conv3) frozen with all before it")
    flags.DEFINE_float("backbone_lr_multiplier", 1.0, "fine-tune: backbone lr = lr * this", lower_bound=0.0)
    flags.DEFINE_enum("adapters", "none", ["none", "parallel", "series"], "fine-tune with residual adapters "
                      "(Rebuffi et al.): the backbone frozen, adapters, BatchNorm and classifier trained; "
                      "the task is saved on its own to model_dir/task.npz")
    flags.DEFINE_boolean("export", False, "at the end, export a SavedModel (python -m training.export)")
    flags.DEFINE_string("export_dir", "saved_models", "--export: base folder of EXPORT_DIR/MODEL_DATASET/VERSION")
    flags.DEFINE_list("export_formats", ["saved_model"], f"--export: {', '.join(EXPORT_FORMATS)}")

    for flag in FLAGS.get_key_flags_for_module(sys.modules[__name__]):
        if flag.flag_type() == "float":  # absl's bounds let nan and inf through
            flags.register_validator(flag.name, lambda v: v is None or math.isfinite(v), "must be a finite number")
    flags.register_validator("recipe", lambda v: v is None or v in RECIPES,
                             f"must be one of {', '.join(RECIPES)}")
    flags.register_validator("lr_decay_epochs", lambda v: all(s.strip().isdigit() for s in v),
                             "must be a comma-separated list of epochs (integers)")
    flags.register_validator("model_args", lambda v: all("=" in s for s in v),
                             "must be key=value pairs")
    flags.register_validator("export_formats", lambda v: set(v) <= set(EXPORT_FORMATS),
                             f"must be a comma-separated list of {', '.join(EXPORT_FORMATS)}")
    flags.register_validator("validation_split", lambda v: 0.0 < v < 1.0, "must be in (0, 1)")
    flags.register_multi_flags_validator(
        ["distribution_strategy", "tpu"], lambda d: d["distribution_strategy"] != "tpu" or d["tpu"] is not None,
        "--distribution_strategy=tpu needs --tpu=ADDRESS (or 'local')")


def recipe_help():
    """What each recipe sets, for --help and --helpfull."""
    return " ".join(f"{name}: " + " ".join(as_flag(k, v) for k, v in flags_of(name).items()) + ";" for name in RECIPES)


def apply_recipe():
    """Fill in the recipe's values for every flag the user did not give. A given flag that
    replaces one the recipe's other values were chosen for (``recipes.TIED``) needs those
    given too: a ``CommandError``."""
    if not FLAGS.recipe:
        return
    recipe = flags_of(FLAGS.recipe, FLAGS.model)
    for given, tied in TIED.items():
        missing = [name for name in tied if name in recipe and not FLAGS[name].present]
        if FLAGS[given].present and given in recipe and FLAGS[given].value != recipe[given] and missing:
            values = " and ".join(as_flag(name, recipe[name]) for name in missing)
            raise CommandError(f"--{given}={FLAGS[given].value} replaces --recipe={FLAGS.recipe}'s {recipe[given]}, "
                               f"whose {values} {'are' if len(missing) > 1 else 'is'} chosen for {recipe[given]}: give "
                               f"{' and '.join('--' + name for name in missing)} for {FLAGS[given].value} too", 2)
    for name, value in recipe.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value


def set_by_recipe(opts, name):
    """Whether ``opts``' value of flag ``name`` is the one its recipe sets (for messages)."""
    return bool(opts.recipe) and flags_of(opts.recipe, opts.model).get(name) == getattr(opts, name)


def safer_learning_rate(learning_rate, recipe=None):
    """A learning rate to suggest after a NaN loss: a tenth of ``learning_rate``, but never
    above the recipe's (or the default's), which the papers trained with."""
    known = RECIPES[recipe]["flags"]["learning_rate"] if recipe in RECIPES else FLAGS["learning_rate"].default
    return min(learning_rate / 10, known)


def model_args(items):
    """--model_args' ``key=value`` items as a dict with Python literals (numbers, booleans,
    tuples, None)."""
    args = {}
    for item in items:
        key, raw = item.split("=", 1)
        try:
            args[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            args[key.strip()] = raw
    return args


# --help of training.train: its flags by what they are for.
TRAIN_GROUPS = {
    "model and data": ["model", "model_args", "dataset", "data_dir", "image_size", "validation_split"],
    "run folder": ["model_dir", "overwrite", "allow_flag_changes", "eval_every", "checkpoint_hist", "seed",
                   "deterministic"],
    "recipe and optimisation": ["recipe", "batch_size", "epochs", "train_steps", "optimizer", "learning_rate",
                                "momentum", "nesterov", "weight_decay", "lr_schedule", "lr_decay_epochs",
                                "lr_decay_rate", "warmup_epochs", "warmup", "lr_batch_base", "lr_scaling",
                                "label_smoothing", "loss", "bce_target_threshold", "ema_decay"],
    "augmentation": ["augment", "auto_augment", "rand_augment_ops", "rand_augment_magnitude", "random_erasing",
                     "mixup_alpha", "cutmix_alpha", "mixup_switch_prob", "mixup_prob", "repeated_augmentation",
                     "train_size", "show_batch"],
    "diagnostics": ["diagnostics"],
    "fine-tuning": ["init_from", "weights_path", "freeze", "backbone_lr_multiplier", "adapters"],
    "speed and devices": ["dtype", "jit_compile", "steps_per_execution", "distribution_strategy", "tpu",
                          "worker_timeout"],
    "export at the end": ["export", "export_dir", "export_formats"],
}
ALIASES = {"--diagnostics": f"--diagnostics={DIAGNOSTICS_EVERY}"}  # a bare --diagnostics: the default interval


def parse(argv):
    """``training.train``'s flags parser, for Python callers (the command adds its summary)."""
    return command.parser(sys.modules[__name__], "", run_as="training.train", groups=TRAIN_GROUPS,
                          aliases=ALIASES)(argv)


# Flags that say what to do with a run, or where, not what the run is: they may change on a
# resume (a run folder may be moved, and its path spelled another way).
NOT_RUN_DEFINING = ("overwrite", "allow_flag_changes", "model_dir", "export", "export_dir", "export_formats",
                    "worker_timeout", "show_batch", "diagnostics", "checkpoint_hist")
# Flags a resumed run may change with --allow_flag_changes: how it is optimised, not which
# model it trains on which data (those change the variables a checkpoint holds, or the split).
CHANGEABLE = ("epochs", "train_steps", "learning_rate", "lr_schedule", "lr_decay_epochs", "lr_decay_rate",
              "warmup", "warmup_epochs", "lr_batch_base", "momentum", "nesterov", "weight_decay",
              "label_smoothing", "augment", "batch_size", "eval_every", "steps_per_execution", "jit_compile",
              "distribution_strategy", "tpu", "deterministic", "backbone_lr_multiplier", "recipe", "lr_scaling",
              "loss", "bce_target_threshold", "auto_augment", "rand_augment_ops", "rand_augment_magnitude",
              "random_erasing", "mixup_alpha", "cutmix_alpha", "mixup_switch_prob", "mixup_prob",
              "repeated_augmentation", "train_size")
_PATHS = ("data_dir", "init_from", "weights_path")


def _names():
    return sorted(f.name for f in FLAGS.get_key_flags_for_module(sys.modules[__name__]))


def record(opts):
    """The run's flags (an ``Options``) for model_dir/flags.json, paths spelled one way."""
    values = opts._asdict()
    for name in _PATHS:
        if values[name] and "://" not in values[name] and not values[name].startswith(KERAS_APPLICATIONS_PREFIX):
            values[name] = os.path.normpath(os.path.expanduser(values[name]))
    return values


def options():
    """Every flag of the command, recipe applied, as an immutable ``Options``: the flags are
    read here once, and the training code takes this object (or its fields) as arguments."""
    apply_recipe()
    names = _names()
    return collections.namedtuple("Options", names)(**{name: FLAGS[name].value for name in names})
