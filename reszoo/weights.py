"""Weights in, behind ``reszoo.create_model(name, weights=...)`` and ``load_weights(model, source)``.

A source is a Keras model, a ``.keras`` file, a training run folder (its ``last.keras``, else
``best.keras``), a Keras ``.weights.h5`` file (``model.save_weights``), one of
keras.applications' ``.h5`` files (ResNet50/101/152, ResNet50V2/101V2/152V2,
DenseNet121/169/201, with or without top) for the ``variant="keras"`` models, or published
weights by name: timm's (``"timm/ARCH.TAG"``, ``reszoo.hub``) and keras.applications'
(``"imagenet"``, fetched as keras.applications fetches them), or a timm state dict of your own
(``model.safetensors``, ``pytorch_model.bin``, a ``.pth`` training checkpoint, a folder in
timm's hub layout or ``"hf-hub:USER/REPO"``: ``reszoo.hub.Checkpoint``):

    model = reszoo.create_model("resnet50", weights="timm/resnet50.a1h_in1k")
    model = reszoo.create_model("resnet50", weights="resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    model = reszoo.create_model(weights="runs/resnet20-digits", num_classes=5)  # a new head

Layers are matched by name (``reszoo.naming``); keras.applications' layers by their role
(stage, block, conv), with their configuration (kernel, strides, padding, bias, BN epsilon)
compared too. Every tensor's shape must agree, except the classifier's: when the number of
classes differs, or the source has no classifier, it keeps its fresh initialisation (timm's
behaviour) and the report says so; and the first conv's input channels: RGB weights load into
a model of 1 or more channels (``adapt_input_conv``). Anything else that differs is a
``WeightsError`` naming the first layer (or timm tensor), and nothing is assigned.
"""

import contextlib
import dataclasses
import json
import os
import warnings
import zipfile

import h5py
import keras
import numpy as np

from reszoo import factory, hub, io, layout, naming, registry, transfer
from reszoo.densenet import IMAGENET_BLOCKS
from reszoo.errors import WeightsError
from reszoo.model import BuildSpec, build_spec
from reszoo.resnet import IMAGENET_LAYERS

# keras.applications name -> (reszoo registry name, preprocess_input mode).
KERAS_APPLICATIONS = {
    "ResNet50": ("resnet50", "caffe"),
    "ResNet101": ("resnet101", "caffe"),
    "ResNet152": ("resnet152", "caffe"),
    "ResNet50V2": ("preact_resnet50", "tf"),
    "ResNet101V2": ("preact_resnet101", "tf"),
    "ResNet152V2": ("preact_resnet152", "tf"),
    "DenseNet121": ("densenet121", "torch"),
    "DenseNet169": ("densenet169", "torch"),
    "DenseNet201": ("densenet201", "torch"),
}
KERAS_APPLICATIONS_MODELS = {name for name, _ in KERAS_APPLICATIONS.values()}
IMAGENET = "imagenet"  # keras.applications' own weights, fetched as it fetches them
# The endings of weight files: a name that ends so is a path, never a tag.
WEIGHTS_EXTENSIONS = (".keras", ".h5", ".ckpt", ".npz", *hub.STATE_DICT_FILES)
_KERAS_WEIGHTS = os.path.join(os.path.dirname(__file__), "data", "keras_weights.json")
# The models a training run folder holds, in the order they are taken.
RUN_MODELS = ("last.keras", "best.keras")
# keras.applications layer name -> reszoo layer name, where they differ.
_RENAMES = {"predictions": naming.CLASSIFIER, "bn": naming.part(naming.POST, "bn")}
_COMPARED = {
    "Conv2D": ("kernel_size", "strides", "padding", "dilation_rate", "use_bias", "filters"),
    "Dense": ("units", "use_bias"),
    "BatchNormalization": ("epsilon", "center", "scale"),
    "BatchNorm": ("epsilon", "center", "scale"),
}


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What ``load_weights`` did: the layers it filled, the classifier it left new, and the
    first conv it adapted to another number of input channels."""

    source: str
    loaded: int
    replaced: tuple = ()
    adapted: tuple = ()

    def __str__(self):
        new = f"; new classifier ({', '.join(self.replaced)})" if self.replaced else ""
        adapted = f"; adapted {', '.join(self.adapted)}" if self.adapted else ""
        return f"loaded {self.loaded} layers from {self.source}{new}{adapted}"


def _keras_applications_name(name, architecture):
    """reszoo's name for a keras.applications layer. Its v2 blocks name a BN after the conv
    it follows (``_1_bn`` after ``_1_conv``); reszoo after the conv it pre-activates (``_2_bn``)."""
    found = naming.split_branch(name)
    if architecture.endswith("V2") and found and found[2] == "bn":
        return naming.layer(found[0], found[1] + 1, "bn")
    return _RENAMES.get(name, name)


def is_keras_applications_file(path):
    """A Keras 2 HDF5 weights file, as keras.applications publishes them."""
    path = os.path.expanduser(str(path))
    if not (os.path.isfile(path) and path.endswith(".h5") and not path.endswith(".weights.h5")):
        return False
    try:
        with h5py.File(path, "r") as f:
            return "layer_names" in f.attrs or "model_weights" in f
    except OSError:
        return False


def architecture_of(model):
    """The keras.applications name with ``model``'s structure: its family (ResNet v1,
    pre-activation v2, DenseNet) and its blocks per stage."""
    names = [layer.name for layer in model.layers]
    blocks = {}
    for found in filter(None, map(naming.block, names)):
        blocks[found[0]] = max(blocks.get(found[0], 0), found[1])
    layout = tuple(blocks[s] for s in sorted(blocks))
    if any(naming.is_part(n, "concat") for n in names):
        family, depths = "DenseNet{}", {v: k for k, v in IMAGENET_BLOCKS.items()}
    else:
        family = "ResNet{}V2" if any(naming.is_part(n, "preact_bn") for n in names) else "ResNet{}"
        depths = {v: k for k, (block, v) in IMAGENET_LAYERS.items() if block == "bottleneck"}
    architecture = family.format(depths.get(layout, "?"))
    if architecture not in KERAS_APPLICATIONS:
        raise WeightsError(f"model {model.name!r} (blocks per stage {layout}) has no keras.applications "
                           f"counterpart; one of {', '.join(KERAS_APPLICATIONS)}")
    return architecture


def _keras_applications_source(architecture, path):
    """The keras.applications model holding the file's weights, at its default input size
    (weights do not depend on it), with its top when the file has one."""
    build = getattr(keras.applications, architecture)
    errors = []
    for include_top in (True, False):
        try:
            return build(weights=path, include_top=include_top, classifier_activation=None)
        except Exception as err:  # keras raises ValueError, OSError, KeyError... for a wrong file
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise WeightsError(f"{path} does not hold {architecture} weights ({errors[-1][:200]})")


def _h5_layout(path):
    """``(classes, input channels)`` of a Keras 3 ``.weights.h5`` file, read from its Dense
    layer and its first conv (Keras names a file's layers by class, in creation order); None
    where it has none."""

    def first(group, name):
        entry = group.get(name)
        return entry["vars"]["0"].shape if entry is not None and "0" in entry.get("vars", {}) else None

    with h5py.File(path, "r") as f:
        layers_group = f.get("layers", {})
        dense, conv = first(layers_group, "dense"), first(layers_group, "conv2d")
        return (int(dense[-1]) if dense else None), (int(conv[2]) if conv else None)


def _twin(model, num_classes, channels):
    """A model built like ``model`` (from its build spec) with ``num_classes`` classes (no
    head when None) and ``channels`` input channels."""
    spec = build_spec(model)
    if spec is None:
        raise WeightsError(f"{model.name} was not built by reszoo.create_model, so a .weights.h5 file "
                           "(which holds no layer names) cannot be matched to it: load a .keras file")
    arguments = spec.arguments()
    if num_classes is None:
        arguments.update(include_top=False, pooling=None)
    else:
        arguments.update(include_top=True, num_classes=num_classes)
    data_format = layout.of(model)
    if channels is not None and channels != layout.channels(model.input_shape, data_format):
        arguments["input_shape"] = layout.image_shape(*layout.spatial(model.input_shape, data_format), channels,
                                                      data_format)
    return build(spec.name, arguments, spec.adapters)


def build(name, arguments, adapters=None, loading=False):
    """A model as a ``BuildSpec`` describes it, with fresh weights: the registered model
    ``name`` with ``arguments``, and its residual adapters (``adapters``, "parallel" or
    "series") when it is a task's model. ``loading``: every weight is assigned next, so the
    convolutions draw no random kernels (``factory.weights_to_come``)."""
    with factory.weights_to_come() if loading else contextlib.nullcontext():
        model = registry.build(name, **arguments)
    return model if adapters is None else transfer.add_adapters(model, adapters)


def saved_spec(source):
    """The build spec saved with a reszoo model (a ``.keras`` file's, a run folder's model's,
    or a model's in memory), or None."""
    if hasattr(source, "layers"):
        return getattr(source, "build_spec", None)
    try:
        with zipfile.ZipFile(run_model_file(source)) as archive:
            config = json.loads(archive.read("config.json")).get("config", {})
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # WeightsError is a ValueError
        return None
    return BuildSpec.from_json(config["build_spec"]) if "build_spec" in config else None


def keras_weights_table():
    """keras.applications' weight files: ``{architecture: {"base_url", "top", "notop"}}`` with
    each file's name and md5, and the top-1 keras.io lists (``data/keras_weights.json``)."""
    with open(_KERAS_WEIGHTS) as f:
        return json.load(f)


def keras_applications_file(architecture, include_top=True):
    """keras.applications' ImageNet weights for ``architecture`` (e.g. "ResNet50"), fetched as
    keras.applications fetches them: ``keras.utils.get_file`` with its URL and md5, into its
    cache (``~/.keras/models``, or ``$KERAS_HOME/models``), once."""
    files = keras_weights_table()["weights"][architecture]
    entry = files["top" if include_top else "notop"]
    origin = files["base_url"] + entry["file"]
    where = os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models", entry["file"])
    cached = os.path.exists(where)  # and then refused by get_file: it failed its md5 check
    try:
        return keras.utils.get_file(entry["file"], origin, cache_subdir="models", file_hash=entry["md5"])
    except Exception as err:  # no network, a file that fails its hash...
        damaged = "the cached copy failed its md5 check and was removed, and " if cached else ""
        raise WeightsError(f"keras.applications {architecture} weights: {damaged}cannot fetch {origin} "
                           f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}); "
                           f"put the file at {where} (md5 {entry['md5']})") from None


def _source(model, source):
    """``(a Keras model holding the weights, its description, the layer rename, whether
    layer configurations are compared)`` for any kind of source."""
    if isinstance(source, keras.Model):
        return source, f"model {source.name!r}", None, False
    if source == IMAGENET:
        source = keras_applications_file(architecture_of(model), naming.CLASSIFIER in _weighted(model))
    path = run_model_file(source)
    if not os.path.isfile(path):
        raise WeightsError(f"no such weights file: {path}")
    if path.endswith(".keras"):
        problem = io.keras_file_problem(path)
        if problem:
            raise WeightsError(f"{path} {problem}")
        try:
            return keras.saving.load_model(path, compile=False), path, None, False
        except Exception as err:  # keras raises many kinds for a foreign or damaged file
            raise WeightsError(f"cannot load {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    if is_keras_applications_file(path):
        try:
            architecture = architecture_of(model)
        except WeightsError as err:
            raise WeightsError(f"{path} is a Keras HDF5 (.h5) file, which reszoo reads as keras.applications "
                               f"weights, and {err}") from None
        return _keras_applications_source(architecture, path), path, _renamer(architecture), True
    if path.endswith(".weights.h5"):
        try:
            classes, channels = _h5_layout(path)
        except OSError as err:
            raise WeightsError(f"{path} is not a weights file ({err})") from None
        twin = _twin(model, classes, channels)
        with warnings.catch_warnings(record=True) as caught:  # Keras warns per layer before it fails
            warnings.simplefilter("always")
            try:
                twin.load_weights(path)
                failure = next((str(w.message) for w in caught if "freshly-initialized" in str(w.message)), None)
            except Exception as err:  # Keras raises ValueError for a structure that differs
                failure = str(err)
        if failure is not None:
            raise WeightsError(f"{path} does not hold weights of {model.name}'s architecture: "
                               f"{failure.strip().splitlines()[0]}")
        return twin, path, None, False
    raise WeightsError(f"{path}: weights come from a .keras, .weights.h5 or keras.applications .h5 file, "
                       "a training run folder, or a Keras model")


def run_model_file(path):
    """``path`` (``~`` expanded), or for a training run folder the model it holds: its
    ``last.keras``, else its ``best.keras``; a folder with neither is a ``WeightsError``."""
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        return path
    for name in RUN_MODELS:
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    raise WeightsError(f"{path} holds no {' or '.join(RUN_MODELS)} (a training run folder that finished)")


def _renamer(architecture):
    return lambda name: _keras_applications_name(name, architecture)


def _weighted(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


@dataclasses.dataclass(frozen=True)
class Source:
    """A weights source resolved once (``resolve``), which ``load`` reads without resolving it
    again, as timm's ``create_model`` parses a weights name once and hands the record down.
    ``kind``: "timm" (``tag``, an entry of ``reszoo.hub``'s table), "checkpoint" (``checkpoint``,
    a ``reszoo.hub.Checkpoint``), "imagenet" (keras.applications' own), or "keras" (``given``:
    a Keras model, a ``.keras``, ``.weights.h5`` or keras.applications ``.h5`` file, or a
    training run folder)."""

    kind: str
    given: object
    tag: str = None
    checkpoint: object = None

    @property
    def name(self):
        """What the source is called in messages and on the model card."""
        if self.kind == "timm":
            return hub.PREFIX + self.tag
        return self.checkpoint.name if self.kind == "checkpoint" else self.given


def resolve(model_name, weights):
    """``weights`` for the registered model ``model_name`` (None: the weights say which) as a
    ``Source`` (one already resolved is handed back as it is); a ``WeightsError`` says what is
    wrong with it."""
    if isinstance(weights, Source):
        return weights
    check_source(weights)
    if hub.is_checkpoint(weights):
        return Source("checkpoint", weights, checkpoint=hub.checkpoint(weights, model_name))
    tag = timm_tag(model_name, weights)
    if tag is not None:
        return Source("timm", weights, tag=tag)
    return Source(IMAGENET if weights == IMAGENET else "keras", weights)


def load(model, source):
    """Load a resolved ``Source`` into ``model``, in place: a ``LoadReport``, or a
    ``WeightsError`` naming the first layer that is missing or different, before anything is
    assigned."""
    if source.kind == "timm":
        return assign_state(model, hub.read(hub.download(source.tag), source.tag), source.name)
    if source.kind == "checkpoint":
        return assign_state(model, hub.read_checkpoint(source.checkpoint), source.name)
    return _assign(model, *_source(model, source.given))


def load_weights(model, source):
    """Load ``source`` (see the module docstring) into ``model``, in place (``resolve``, then
    ``load``). Returns a ``LoadReport``; raises ``WeightsError`` naming the first layer that is
    missing or different, before anything is assigned."""
    spec = build_spec(model)
    return load(model, resolve(spec.name if spec else None, source))


def assign_state(model, state, described):
    """timm's state dict (numpy arrays by timm's tensor names) into ``model``, all or nothing
    (``assign_values``); messages name timm's tensors."""
    values, origin = hub.convert(state, described)
    return assign_values(model, values, described, origin=origin)


def timm_tag(model_name, weights):
    """The timm tag ``weights`` names for ``model_name`` ("timm/ARCH.TAG", "ARCH.TAG", or a bare
    tag of ``model_name``'s such as "a1h_in1k"), or None where ``weights`` is another kind of
    source (a path that exists is always a path). A name that is neither a path nor a tag (a
    typo) is a ``WeightsError`` with the closest tags."""
    if hub.is_tag(weights):
        return hub.resolve(model_name, weights)
    if not isinstance(weights, str) or weights == IMAGENET or os.path.exists(os.path.expanduser(weights)):
        return None
    if weights in hub.table() or (model_name and f"{model_name}.{weights}" in hub.table()):
        return hub.resolve(model_name, weights)
    if _looks_like_a_path(weights):
        return None
    try:
        return hub.resolve(model_name, weights)
    except WeightsError as err:
        raise WeightsError(f"weights={weights!r} is no file or folder here, nor published weights: "
                           f"{err}") from None


def _looks_like_a_path(name):
    """A name spelled as a file or folder (a separator, ``~``, a file extension), not a tag."""
    return (os.sep in name or "/" in name or name.startswith(("~", "."))
            or os.path.splitext(name)[1].lower() in WEIGHTS_EXTENSIONS)


def check_source(weights):
    """A ``WeightsError`` saying what ``weights`` must be, unless it is a non-empty string, a
    path or a Keras model."""
    if isinstance(weights, (keras.Model, os.PathLike)) or (isinstance(weights, str) and weights.strip()):
        return
    raise WeightsError(f"weights={weights!r}: give published weights by name (reszoo.list_weights()), the path "
                       "of a .keras, .weights.h5 or keras.applications .h5 file or of a training run folder, a "
                       "Keras model, or None for fresh weights")


def _assign(model, src, described, rename, compare):
    rename = rename or (lambda name: name)
    layers = {rename(name): layer for name, layer in _weighted(src).items()}
    check = (lambda name, target: _compare_config(layers[name], target, name)) if compare else None
    return assign_values(model, {name: layer.get_weights() for name, layer in layers.items()}, described, check,
                         " (build it with variant='keras')" if compare else "")


def assign_values(model, sources, described, check=None, hint="", origin=None):
    """Set ``model``'s layers from ``sources`` (``{layer name: [arrays in Keras' order]}``),
    all or nothing: every weighted layer needs its arrays, of its shapes, except the
    classifier (a new one where the classes differ or the source has none) and the first
    conv (adapted to other input channels). ``check(name, target)`` may refuse a layer;
    ``origin`` names each layer's source (a tensor) in the messages. Returns a ``LoadReport``."""
    origin = origin or {}
    said = lambda name: f"{origin[name]!r} ({name})" if name in origin else repr(name)
    targets = _weighted(model)
    assignments, replaced, adapted = [], [], []
    for name in sources:
        if name not in targets and not naming.is_after_features(name):
            raise WeightsError(f"layer {said(name)} of {described} has no counterpart in {model.name}{hint}")
    for name, target in targets.items():
        values = sources.get(name)
        if name == naming.CLASSIFIER and (values is None or [v.shape for v in values] !=
                                          [tuple(w.shape) for w in target.weights]):
            old = f"{values[0].shape[-1]} -> " if values else ""
            replaced.append(f"{name}: {old}{target.weights[0].shape[-1]} classes")
            continue
        if values is None:
            raise WeightsError(f"{described} has no weights for layer {name!r} of {model.name}")
        if check:
            check(name, target)
        if len(values) != len(target.weights):
            raise WeightsError(f"layer {said(name)} has {len(target.weights)} tensors, {described}'s has "
                               f"{len(values)}")
        have, want = values[0].shape[2:3], tuple(target.weights[0].shape[2:3])
        if name in naming.FIRST_CONVS and values[0].ndim == 4 and have != want:
            values = [adapt_input_conv(values[0], want[0]), *values[1:]]
            adapted.append(f"{name}: {have[0]} -> {want[0]} input channels")
        for variable, value in zip(target.weights, values):
            if tuple(variable.shape) != value.shape:
                raise WeightsError(f"layer {said(name)}: {variable.path} has shape {tuple(variable.shape)}, "
                                   f"{described}'s {value.shape}")
        assignments.append((target, values))
    for target, values in assignments:
        target.set_weights(values)
    return LoadReport(str(described), len(assignments), tuple(replaced), tuple(adapted))


def adapt_input_conv(kernel, channels):
    """A first-conv kernel ``[kh, kw, c, filters]`` for ``channels`` input channels, as timm's
    ``adapt_input_conv``: summed over the channels for one, repeated and scaled by c / channels
    for more (so a pixel of equal channels gives the same response)."""
    kernel = np.asarray(kernel)
    have = kernel.shape[2]
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeated = np.concatenate([kernel] * -(-channels // have), axis=2)[:, :, :channels]
    return repeated * (have / channels)


def _compare_config(layer, target, name):
    src_config, dst_config = layer.get_config(), target.get_config()
    for key in _COMPARED.get(type(layer).__name__, ()):
        if key == "padding" and tuple(src_config["kernel_size"]) == (1, 1):
            continue  # a 1x1 kernel pads nothing either way
        if _norm(src_config.get(key)) != _norm(dst_config.get(key)):
            raise WeightsError(f"layer {name!r}: {key} is {dst_config.get(key)!r}, keras.applications' "
                               f"{layer.name!r} has {src_config.get(key)!r} (build it with variant='keras')")


def _norm(value):
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, float):
        return round(value, 12)
    return value


def load_keras_applications(model, source, architecture=None):
    """keras.applications weights (a file path or a keras.applications model) into a
    ``variant="keras"`` model, in place; returns the model. (``load_weights`` takes these
    sources too; this is its keras.applications-only form, with ``architecture`` checked.)"""
    architecture = architecture or architecture_of(model)
    if architecture not in KERAS_APPLICATIONS:
        raise WeightsError(f"unknown keras.applications model {architecture!r}; one of {', '.join(KERAS_APPLICATIONS)}")
    described = f"keras.applications {architecture}"
    if not isinstance(source, keras.Model):
        path = os.path.expanduser(str(source))
        if not os.path.isfile(path):
            raise WeightsError(f"no such weights file: {path}")
        source, described = _keras_applications_source(architecture, path), path
    _assign(model, source, described, _renamer(architecture), compare=True)
    return model


def keras_applications_model(architecture, weights=None, **kwargs):
    """The reszoo model that mirrors keras.applications' ``architecture`` (e.g. "ResNet50"),
    with ``weights`` loaded when given: ``reszoo.create_model(NAME, variant="keras", ...)``."""
    if architecture not in KERAS_APPLICATIONS:
        raise WeightsError(f"unknown keras.applications model {architecture!r}; one of {', '.join(KERAS_APPLICATIONS)}")
    model = registry.build(KERAS_APPLICATIONS[architecture][0], variant="keras", **kwargs)
    if weights is not None:
        load_keras_applications(model, weights, architecture)
    return model


def create_model(architecture, weights=None, **kwargs):
    """Deprecated: ``keras_applications_model`` (reszoo has one ``create_model``, the
    package's)."""
    warnings.warn("reszoo.weights.create_model is deprecated: use reszoo.weights.keras_applications_model, or "
                  "reszoo.create_model(NAME, variant='keras', weights=...)", DeprecationWarning, stacklevel=2)
    return keras_applications_model(architecture, weights, **kwargs)
