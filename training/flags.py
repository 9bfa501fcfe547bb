"""Flags of ``python -m training.train`` as a table (``TABLE``: each flag one entry, with its
--help group, resume rule and check), the papers' recipes applied to them, and the flags read
once into an ``Options``. Standard library and absl only: ``--help`` starts no TensorFlow."""

import ast
import collections
import dataclasses
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



SAME, ALLOWED, FREE = "same", "allowed", "free"


@dataclasses.dataclass(frozen=True)
class Flag:
    """One flag of ``reszoo-train``: its absl kind, default and help, its check, and what a
    resumed run may do with it (``resume``): ``SAME`` (it defines the run: a resume gives the
    same value), ``ALLOWED`` (how the run is optimised: it may change with
    --allow_flag_changes) or ``FREE`` (where the run is, or what to do with it: it may always
    change, and a run folder may be moved)."""

    kind: str  # absl's DEFINE_<kind>
    name: str
    default: object
    help: str
    resume: str = SAME
    values: tuple = None  # an enum's
    lower_bound: float = None
    upper_bound: float = None
    check: tuple = None  # (predicate, message)

    def define(self):
        if self.kind == "enum":
            flags.DEFINE_enum(self.name, self.default, list(self.values), self.help)
        else:
            bounds = {k: getattr(self, k) for k in ("lower_bound", "upper_bound") if getattr(self, k) is not None}
            getattr(flags, f"DEFINE_{self.kind}")(self.name, self.default, self.help, **bounds)
        if self.kind == "float":  # absl's bounds let nan and inf through
            flags.register_validator(self.name, lambda v: v is None or math.isfinite(v), "must be a finite number")
        if self.check is not None:
            flags.register_validator(self.name, *self.check)


def recipe_help():
    """What each recipe sets, for --help and --helpfull."""
    return " ".join(f"{name}: " + " ".join(as_flag(k, v) for k, v in flags_of(name).items()) + ";" for name in RECIPES)



# Every flag of training.train, one entry each, under the --help group it is listed in.
TABLE = {
    "model and data": (
        Flag("string", "model", "resnet20",
             help="registry name (python -c 'import reszoo; print(reszoo.list_models())')"),
        Flag("list", "model_args", [],
             help="builder overrides, key=value (e.g. drop_path_rate=0.1,shortcut=B)",
             check=(lambda v: all("=" in s for s in v), "must be key=value pairs")),
        Flag("string", "dataset", "digits",
             help="digits (embedded), folder (see --data_dir), or a tfds name"),
        Flag("string", "data_dir", None,
             help="tfds data_dir, or the image folder for --dataset=folder"),
        Flag("integer", "image_size", 0, lower_bound=0, upper_bound=MAX_IMAGE_SIZE,
             help="resize images to this side (folder and variable-size tfds; 0: default)"),
        Flag("float", "validation_split", 0.2,
             help="fraction of a folder held out for evaluation",
             check=(lambda v: 0.0 < v < 1.0, "must be in (0, 1)")),
    ),
    "run folder": (
        Flag("string", "model_dir", None, resume=FREE,
             help="run folder: checkpoints, history, logs, flags (default runs/MODEL-DATASET)"),
        Flag("boolean", "overwrite", False, resume=FREE,
             help="start model_dir's run again from scratch, deleting its checkpoints"),
        Flag("boolean", "allow_flag_changes", False, resume=FREE,
             help="resume model_dir's run although optimisation flags changed (learning rate, schedule, epochs, "
                  "batch size...); model and data flags must match"),
        Flag("integer", "eval_every", 1, resume=ALLOWED, lower_bound=1,
             help="evaluate every N epochs"),
        Flag("integer", "checkpoint_hist", 2, resume=FREE, lower_bound=2,
             help="checkpoint generations kept in model_dir/backup (timm's --checkpoint-hist): the newest and at "
                  "least one before it, in case it is damaged; more for validate --average=N"),
        Flag("integer", "seed", 0, lower_bound=0,
             help="random seed (weights, data order, augmentation)"),
        Flag("boolean", "deterministic", False, resume=ALLOWED,
             help="deterministic ops: the same flags give the same weights"),
    ),
    "recipe and optimisation": (
        Flag("string", "recipe", None, resume=ALLOWED,
             help="a paper's recipe; flags given explicitly win. " + recipe_help(),
             check=(lambda v: v is None or v in RECIPES, f"must be one of {', '.join(RECIPES)}")),
        Flag("integer", "batch_size", 64, resume=ALLOWED, lower_bound=1,
             help="global batch size"),
        Flag("integer", "epochs", 30, resume=ALLOWED, lower_bound=1,
             help="training epochs"),
        Flag("integer", "train_steps", 0, resume=ALLOWED, lower_bound=0,
             help="total steps instead of --epochs (rounded up to whole epochs)"),
        Flag("enum", "optimizer", "sgd", values=["sgd", "adamw", "lamb"],
             help="SGD with momentum, AdamW, or LAMB (You et al. 2020)"),
        Flag("float", "learning_rate", 0.1, resume=ALLOWED, lower_bound=0.0,
             help="peak learning rate (at --lr_batch_base if set)"),
        Flag("float", "momentum", 0.9, resume=ALLOWED, lower_bound=0.0, upper_bound=1.0,
             help="SGD momentum"),
        Flag("boolean", "nesterov", False, resume=ALLOWED,
             help="Nesterov momentum"),
        Flag("float", "weight_decay", 5e-4, resume=ALLOWED, lower_bound=0.0,
             help="on conv/dense kernels only (SGD: L2 as in the papers; AdamW: decoupled)"),
        Flag("enum", "lr_schedule", "cosine", values=["step", "cosine", "constant"], resume=ALLOWED,
             help="learning-rate schedule"),
        Flag("list", "lr_decay_epochs", [], resume=ALLOWED,
             help="step schedule: epochs at which lr is multiplied by --lr_decay_rate",
             check=(lambda v: all(s.strip().isdigit() for s in v),
                    "must be a comma-separated list of epochs (integers)")),
        Flag("float", "lr_decay_rate", 0.1, resume=ALLOWED, lower_bound=0.0, upper_bound=1.0,
             help="step schedule factor"),
        Flag("float", "warmup_epochs", 0.0, resume=ALLOWED, lower_bound=0.0,
             help="warm-up length in epochs"),
        Flag("enum", "warmup", "linear", values=["linear", "constant"], resume=ALLOWED,
             help="linear ramp, or constant lr/10 (He et al. 2015)"),
        Flag("integer", "lr_batch_base", 0, resume=ALLOWED, lower_bound=0,
             help="--learning_rate is for this batch size; scaled to --batch_size by --lr_scaling (0: off)"),
        Flag("enum", "lr_scaling", "linear", values=["linear", "sqrt"], resume=ALLOWED,
             help="lr *= batch_size / lr_batch_base (Goyal et al. 2017), or its square root (timm's rule for LAMB)"),
        Flag("float", "label_smoothing", 0.0, resume=ALLOWED, lower_bound=0.0, upper_bound=0.99,
             help="label smoothing"),
        Flag("enum", "loss", "ce", values=["ce", "bce"], resume=ALLOWED,
             help="softmax cross-entropy, or binary cross-entropy per class (Wightman et al. 2021)"),
        Flag("float", "bce_target_threshold", 0.0, resume=ALLOWED, lower_bound=0.0, upper_bound=1.0,
             help="--loss=bce: targets above this become 1 (0: off)"),
        Flag("float", "ema_decay", 0.0, lower_bound=0.0, upper_bound=0.999999,
             help="keep an exponential moving average of the weights, evaluated and saved (per step; 0: off)"),
    ),
    "augmentation": (
        Flag("enum", "augment", "auto", values=list(AUGMENTATIONS), resume=ALLOWED,
             help="auto: crop for digits, crop_flip for CIFAR-size, inception for large images"),
        Flag("enum", "auto_augment", "none", values=["none", "randaugment", "trivialaugment"], resume=ALLOWED,
             help="after --augment: RandAugment (Cubuk et al. 2020) or TrivialAugment (Mueller & Hutter 2021), "
                  "Keras' layer"),
        Flag("integer", "rand_augment_ops", 2, resume=ALLOWED, lower_bound=1, upper_bound=10,
             help="RandAugment: operations per image"),
        Flag("integer", "rand_augment_magnitude", 9, resume=ALLOWED, lower_bound=0, upper_bound=10,
             help="RandAugment: magnitude, 0-10 (timm's m)"),
        Flag("float", "random_erasing", 0.0, resume=ALLOWED, lower_bound=0.0, upper_bound=1.0,
             help="probability of erasing a random box (Zhong et al. 2020)"),
        Flag("float", "mixup_alpha", 0.0, resume=ALLOWED, lower_bound=0.0,
             help="mixup (Zhang et al. 2018): Beta(alpha, alpha) weights (0: off)"),
        Flag("float", "cutmix_alpha", 0.0, resume=ALLOWED, lower_bound=0.0,
             help="CutMix (Yun et al. 2019): Beta(alpha, alpha) areas (0: off)"),
        Flag("float", "mixup_switch_prob", 0.5, resume=ALLOWED, lower_bound=0.0, upper_bound=1.0,
             help="with both: probability that a batch gets CutMix, not mixup"),
        Flag("float", "mixup_prob", 1.0, resume=ALLOWED, lower_bound=0.0, upper_bound=1.0,
             help="probability that a batch is mixed at all"),
        Flag("integer", "repeated_augmentation", 1, resume=ALLOWED, lower_bound=1, upper_bound=16,
             help="each image N times per epoch, differently augmented (Hoffer et al. 2020); the epoch keeps its "
                  "length"),
        Flag("float", "train_size", 0.0, resume=ALLOWED, lower_bound=0.0,
             help="FixRes (Touvron et al. 2019): train on images of this side in pixels, or this fraction of the "
                  "test size if <= 1; test at the full size (0: off)"),
        Flag("boolean", "show_batch", False, resume=FREE,
             help="save the first training batch, augmented, as model_dir/batch.png"),
    ),
    "diagnostics": (
        Flag("integer", "diagnostics", 0, resume=FREE, lower_bound=0,
             help="measure the residual diagnostics (reszoo.diagnostics) every N steps into "
                  "model_dir/diagnostics.jsonl and TensorBoard; --diagnostics alone: every "
                  f"{DIAGNOSTICS_EVERY} (0: off)"),
    ),
    "fine-tuning": (
        Flag("string", "init_from", None,
             help="fine-tune: a .keras model or a run folder, published weights by name (timm/resnet50.a1h_in1k: "
                  "reszoo.list_weights()), a timm state dict (model.safetensors, .bin, .pth, a timm hub folder, or "
                  "hf-hub:USER/REPO), or keras_applications:NAME (e.g. ResNet50) with --weights_path; its head is "
                  "replaced"),
        Flag("string", "weights_path", None,
             help="--init_from=keras_applications:NAME: the keras.applications weights file (.h5)"),
        Flag("string", "freeze", "none",
             help="fine-tune: none, backbone, or a stage (e.g. conv3) frozen with all before it"),
        Flag("float", "backbone_lr_multiplier", 1.0, resume=ALLOWED, lower_bound=0.0,
             help="fine-tune: backbone lr = lr * this"),
        Flag("enum", "adapters", "none", values=["none", "parallel", "series"],
             help="fine-tune with residual adapters (Rebuffi et al.): the backbone frozen, adapters, BatchNorm and "
                  "classifier trained; the task is saved on its own to model_dir/task.npz"),
    ),
    "speed and devices": (
        Flag("enum", "dtype", "float32", values=["float32", "mixed_float16", "mixed_bfloat16"],
             help="compute dtype policy (logits stay float32)"),
        Flag("boolean", "jit_compile", False, resume=ALLOWED,
             help="XLA (off by default: it halves TF's CPU speed here)"),
        Flag("integer", "steps_per_execution", 1, resume=ALLOWED, lower_bound=1,
             help="train steps per tf.function call"),
        Flag("enum", "distribution_strategy", "default", values=list(STRATEGIES), resume=ALLOWED,
             help="tf.distribute strategy"),
        Flag("string", "tpu", None, resume=ALLOWED,
             help="TPU address for --distribution_strategy=tpu"),
        Flag("float", "worker_timeout", 600.0, resume=FREE, lower_bound=1.0,
             help="multi_worker_mirrored: seconds to wait for the other workers (at start and in each collective) "
                  "before giving up"),
    ),
    "export at the end": (
        Flag("boolean", "export", False, resume=FREE,
             help="at the end, export a SavedModel (python -m training.export)"),
        Flag("string", "export_dir", "saved_models", resume=FREE,
             help="--export: base folder of EXPORT_DIR/MODEL_DATASET/VERSION"),
        Flag("list", "export_formats", ["saved_model"], resume=FREE,
             help=f"--export: {', '.join(EXPORT_FORMATS)}",
             check=(lambda v: set(v) <= set(EXPORT_FORMATS),
                    f"must be a comma-separated list of {', '.join(EXPORT_FORMATS)}")),
    ),

}
TRAIN_GROUPS = {title: [flag.name for flag in group] for title, group in TABLE.items()}
# Flags that may change on a resume, freely or with --allow_flag_changes.
NOT_RUN_DEFINING = tuple(flag.name for group in TABLE.values() for flag in group if flag.resume == FREE)
CHANGEABLE = tuple(flag.name for group in TABLE.values() for flag in group if flag.resume == ALLOWED)


def define():
    for group in TABLE.values():
        for flag in group:
            flag.define()
    flags.register_multi_flags_validator(
        ["distribution_strategy", "tpu"], lambda d: d["distribution_strategy"] != "tpu" or d["tpu"] is not None,
        "--distribution_strategy=tpu needs --tpu=ADDRESS (or 'local')")


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


ALIASES = {"--diagnostics": f"--diagnostics={DIAGNOSTICS_EVERY}"}  # a bare --diagnostics: the default interval


def parse(argv):
    """``training.train``'s flags parser, for Python callers (the command adds its summary)."""
    return command.parser(sys.modules[__name__], "", run_as="training.train", groups=TRAIN_GROUPS,
                          aliases=ALIASES)(argv)


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
