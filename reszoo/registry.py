"""The model registry: the catalogue's named configs (``reszoo.zoo``) and the ones users
add, looked up by name (``get_spec``, ``list_models``) and built (``build``)."""

import difflib
import fnmatch
import inspect
import re

from reszoo import skeleton
from reszoo.model import BuildSpec, count_params, features  # noqa: F401  (their home before reszoo.model)
from reszoo.zoo import CATALOGUE, ModelSpec

_REGISTRY = {}
# Alternative ways to give a net's size: overriding one replaces the others' defaults.
_LAYOUT_KEYS = {"depth", "layers", "blocks"}


def register(name, builder, family, paper, dataset, published=None, notes="", **config):
    """Add a named config of ``builder`` (a family builder such as ``reszoo.resnet``)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = ModelSpec(name, family, builder, config, paper, dataset, published or {}, notes)


_REGISTRY.update((spec.name, spec) for spec in CATALOGUE)


def suggest(name, options):
    """"; did you mean a, b?" for the options close to ``name``, else ""."""
    close = difflib.get_close_matches(name, options, n=5, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def get_spec(name):
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown model {name!r}{suggest(str(name), list(_REGISTRY))} "
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


def arguments(spec):
    """The argument names ``spec``'s builder takes: its own and every family's options."""
    own = [name for name, p in inspect.signature(spec.builder).parameters.items() if p.kind != p.VAR_KEYWORD]
    return own + [name for name in skeleton.OPTIONS if name not in own]


def build(model_name, **overrides):
    """The registered model ``model_name`` with ``overrides`` replacing its default config
    (``name`` included: it names the Keras model), remembering how it was built
    (``BuildSpec``). No weights: ``reszoo.create_model`` loads them."""
    spec = get_spec(model_name)
    accepted = arguments(spec)
    for key in overrides:
        if key not in accepted:
            raise ValueError(f"{model_name}: unknown argument {key!r}{suggest(key, accepted)}")
    config = dict(spec.config)
    if overrides.keys() & _LAYOUT_KEYS:
        for key in _LAYOUT_KEYS - overrides.keys():
            config.pop(key, None)
    model = spec.builder(**{**config, "name": model_name, **overrides})
    model.build_spec = BuildSpec.of(model_name, overrides)
    return model
