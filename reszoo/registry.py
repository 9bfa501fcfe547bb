"""The model registry: named configs of the family builders, and the package's face
(``create_model``, ``list_models``, ``model_card``)."""

import dataclasses
import difflib
import fnmatch
import inspect
import re

from reszoo import flops, naming

_REGISTRY = {}
# Alternative ways to give a net's size: overriding one replaces the others' defaults.
_LAYOUT_KEYS = {"depth", "layers", "blocks"}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    builder: object
    config: dict
    paper: str
    dataset: str
    published: dict = dataclasses.field(default_factory=dict)
    notes: str = ""


def register(name, builder, family, paper, dataset, published=None, notes="", **config):
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelSpec(name, family, builder, config, paper, dataset, published or {}, notes)


def _suggest(name, options):
    close = difflib.get_close_matches(name, options, n=5, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def get_spec(name):
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}{_suggest(str(name), list(_REGISTRY))} "
            "(reszoo.list_models() lists them all)"
        )
    return _REGISTRY[name]


def list_models(pattern="*", family=None):
    """Registered names matching a shell-style ``pattern`` (or a list of them), sorted."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    names = [
        n for n, spec in _REGISTRY.items()
        if any(fnmatch.fnmatchcase(n, p) for p in patterns)
        and (family is None or spec.family == family)
    ]
    return sorted(names, key=_natural_key)


def _natural_key(name):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def create_model(model_name=None, /, *, weights=None, **overrides):
    """Build a registered model; keyword ``overrides`` replace its default config (``name``
    included: it names the Keras model). ``weights`` loads weights into it
    (``reszoo.weights.load_weights``): a training run folder, a ``.keras`` or ``.weights.h5``
    file, keras.applications' ``.h5`` file (the "keras" variant is then the default), or a
    Keras model. With another ``num_classes`` than the weights' the classifier is new. The
    model name may be left out when the weights say how they were built (a run folder or a
    ``.keras`` file of reszoo's); a task model saved with residual adapters
    (``reszoo.transfer.add_adapters``) is built again with them."""
    from reszoo import weights as weights_lib
    from reszoo.model import BuildSpec

    saved = None if weights is None else _saved_spec(weights)
    if model_name is None:
        if weights is None:
            raise ValueError("create_model needs a model name (reszoo.list_models() lists them) or weights")
        if saved is None:
            raise weights_lib.WeightsError(
                f"{weights} does not say which model it holds (not saved from a reszoo model): "
                "give the model name, e.g. reszoo.create_model('resnet50', weights=...)")
        model_name, overrides = saved.name, {**saved.arguments(), **overrides}
    spec = get_spec(model_name)
    accepted = inspect.signature(spec.builder).parameters
    for key in overrides:
        if key not in accepted:
            raise ValueError(
                f"{model_name}: unknown argument {key!r}{_suggest(key, list(accepted))}"
            )
    if weights is not None and "variant" not in overrides and weights_lib.is_keras_applications_file(weights):
        overrides["variant"] = "keras"
    config = dict(spec.config)
    if overrides.keys() & _LAYOUT_KEYS:
        for key in _LAYOUT_KEYS - overrides.keys():
            config.pop(key, None)
    model = spec.builder(**{**config, "name": model_name, **overrides})
    model.build_spec = BuildSpec.of(model_name, overrides)
    if saved is not None and saved.adapters is not None:
        from reszoo import transfer

        model = transfer.add_adapters(model, saved.adapters)
    if weights is not None:
        weights_lib.load_weights(model, weights)
    return model


def _saved_spec(weights):
    """The build spec saved with a reszoo model (a ``.keras`` file's, a run folder's model's,
    or a model's in memory), or None."""
    import json
    import zipfile

    from reszoo.model import BuildSpec
    from reszoo.weights import run_model_file

    if hasattr(weights, "layers"):
        return getattr(weights, "build_spec", None)
    try:
        with zipfile.ZipFile(run_model_file(weights)) as archive:
            config = json.loads(archive.read("config.json")).get("config", {})
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):  # WeightsError is a ValueError
        return None
    return BuildSpec.from_json(config["build_spec"]) if "build_spec" in config else None


def model_card(model):
    """Family, depth, parameters, multiply-adds, paper and published results of a registered
    model: ``model`` is a registry name (its default config) or a model reszoo built, also
    one loaded from a file (it remembers how it was built)."""
    if isinstance(model, str):
        name, model = model, create_model(model)
    else:
        found = getattr(model, "build_spec", None)
        if found is None:
            raise ValueError(f"model {getattr(model, 'name', model)!r} was not built by reszoo.create_model, "
                             "so it has no card")
        name = found.name
    spec = get_spec(name)
    card = {
        "name": name,
        "family": spec.family,
        "depth": _depth(spec, model),
        "dataset": spec.dataset,
        "input_shape": tuple(model.input_shape[1:]),
        "num_classes": model.output_shape[-1],
        "params": count_params(model),
        "total_params": int(model.count_params()),
        "macs": flops.count_macs(model),
        "paper": spec.paper,
        "published": dict(spec.published),
        "config": dict(spec.config),
    }
    card["features"] = features(model)
    found = getattr(model, "build_spec", None)
    if found is not None and found.overrides:
        card["overrides"] = dict(found.overrides)
    if found is not None and found.adapters is not None:
        card["adapters"] = found.adapters
    if spec.notes:
        card["notes"] = spec.notes
    return card


def features(model):
    """Each pyramid level of ``model`` (timm's ``feature_info``): level "Pk", the stage, the
    layer (``reszoo.naming.stage_end``), channels and stride, measured on the model's input
    size (on a 256 x 256 probe where the size is free)."""
    import keras

    ends = [layer for layer in model.layers if naming.end_stage(layer.name) is not None]
    if not ends:
        return []
    height, width, channels = model.input_shape[1:]
    probe = (256, 256) if height is None or width is None else (height, width)
    shapes = keras.Model(model.inputs, [layer.output for layer in ends]).compute_output_shape(
        (1, *probe, channels))
    levels = {}
    for layer, shape in zip(ends, shapes):
        stride = probe[0] // shape[1]
        level = f"P{stride.bit_length() - 1}"
        levels[level] = {"level": level, "stage": naming.end_stage(layer.name), "layer": layer.name,
                         "channels": int(shape[-1]), "stride": stride}
    return list(levels.values())


def count_params(model):
    """Trainable parameters (weights, biases, BN gamma/beta; not BN moving statistics)."""
    return int(sum(int(_size(w.shape)) for w in model.trainable_weights))


def _size(shape):
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _depth(spec, model):
    depth = spec.config.get("depth")
    if depth is None:
        weighted = [l for l in model.layers if type(l).__name__ in ("Conv2D", "Dense")]
        depth = len([l for l in weighted if not naming.is_shortcut(l.name)])
    return depth
