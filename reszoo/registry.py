"""The model registry: named configs of the family builders, and the package's face
(``create_model``, ``list_models``, ``model_card``)."""

import dataclasses
import difflib
import fnmatch
import inspect
import re

from reszoo import flops

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


def create_model(name, **overrides):
    """Build a registered model; keyword ``overrides`` replace its default config."""
    spec = get_spec(name)
    accepted = inspect.signature(spec.builder).parameters
    for key in overrides:
        if key not in accepted:
            raise ValueError(
                f"{name}: unknown argument {key!r}{_suggest(key, list(accepted))}"
            )
    config = dict(spec.config)
    if overrides.keys() & _LAYOUT_KEYS:
        for key in _LAYOUT_KEYS - overrides.keys():
            config.pop(key, None)
    return spec.builder(**{**config, "name": name, **overrides})


def model_card(name, model=None):
    """Family, depth, parameters, multiply-adds at the default input size, paper and
    published results of a registered model (its default config, or ``model`` if given
    already built)."""
    spec = get_spec(name)
    model = create_model(name) if model is None else model
    trainable = count_params(model)
    card = {
        "name": name,
        "family": spec.family,
        "depth": _depth(spec, model),
        "dataset": spec.dataset,
        "input_shape": tuple(model.input_shape[1:]),
        "num_classes": model.output_shape[-1],
        "params": trainable,
        "total_params": int(model.count_params()),
        "macs": flops.count_macs(model),
        "paper": spec.paper,
        "published": dict(spec.published),
        "config": dict(spec.config),
    }
    if spec.notes:
        card["notes"] = spec.notes
    return card


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
        depth = len([l for l in weighted if not l.name.endswith("_0_conv")])
    return depth
