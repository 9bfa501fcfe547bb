"""The package's face: ``create_model`` (a registered model, with weights from any source),
``list_weights`` (the published weights it loads by name) and ``model_card`` (what a model
is, and where its numbers come from)."""

import dataclasses
import fnmatch

from reszoo import flops, hub, naming, registry, weights as weights_lib
from reszoo.model import count_params, features


def create_model(model_name=None, /, *, weights=None, **overrides):
    """Build a registered model; keyword ``overrides`` replace its default config (``name``
    included: it names the Keras model). ``weights`` loads weights into it
    (``reszoo.weights.load_weights``):

    - published weights by name: ``"timm/resnet50.a1h_in1k"`` (or the tag alone, ``"a1h_in1k"``,
      or ``"timm/resnet50"`` for timm's default), downloaded once into the Hugging Face cache;
      the model takes timm's padding, classes and preprocessing (raw pixels in), so it gives
      timm's answer; ``"imagenet"``: keras.applications' own weights, fetched as it fetches
      them, into the "keras" variant (``include_top=False`` takes the notop file);
    - a timm state dict of your own: ``model.safetensors``, ``pytorch_model.bin`` or a ``.pth``
      training checkpoint (unwrapped), a folder in timm's hub layout, or ``"hf-hub:USER/REPO"``;
      the architecture comes from ``config.json`` beside it (or the model name), the classes
      from the file;
    - a training run folder, a ``.keras`` or ``.weights.h5`` file, keras.applications' ``.h5``
      file (the "keras" variant is then the default), or a Keras model.
    - any of these resolved already (``reszoo.weights.resolve``: a ``Source``), handed down as it is.

    With another ``num_classes`` than the weights' the classifier is new. The model name may be
    left out when the weights say how they were built (a run folder or a ``.keras`` file of
    reszoo's); a task model saved with residual adapters (``reszoo.transfer.add_adapters``) is
    built again with them. ``reszoo.list_weights()`` lists the published weights."""
    source = None if weights is None else weights_lib.resolve(model_name, weights)
    if source is not None and source.kind == "checkpoint":
        found = source.checkpoint
        state = hub.read_checkpoint(found)
        model = weights_lib.build(found.architecture, {**hub.checkpoint_arguments(found, state, overrides),
                                                       **overrides}, loading=True)
        weights_lib.assign_state(model, state, source.name)
        model.build_spec = dataclasses.replace(model.build_spec, weights=source.name)
        return model
    if source is not None and source.kind == "timm":
        return _published(model_name or hub.table()[source.tag]["architecture"], source,
                          {**hub.build_arguments(source.tag, overrides), **overrides})
    if source is not None and source.kind == weights_lib.IMAGENET:
        if model_name is None:
            raise weights_lib.WeightsError(
                f"weights='imagenet' are keras.applications' weights: name the model, one of "
                f"{', '.join(sorted(weights_lib.KERAS_APPLICATIONS_MODELS))}")
        if model_name not in weights_lib.KERAS_APPLICATIONS_MODELS:
            raise weights_lib.WeightsError(
                f"weights='imagenet' are keras.applications' weights, for "
                f"{', '.join(sorted(weights_lib.KERAS_APPLICATIONS_MODELS))}; for {model_name} see "
                f"reszoo.list_weights({(model_name or '') + '*'!r})")
        return _published(model_name, source, {"variant": "keras", **overrides})
    saved = None if source is None else weights_lib.saved_spec(source.given)
    if model_name is None:
        if weights is None:
            raise ValueError("create_model needs a model name (reszoo.list_models() lists them) or weights")
        if saved is None:
            raise weights_lib.WeightsError(
                f"{weights} does not say which model it holds (not saved from a reszoo model): "
                "give the model name, e.g. reszoo.create_model('resnet50', weights=...)")
        model_name, overrides = saved.name, {**saved.arguments(), **overrides}
    registry.get_spec(model_name)
    if (weights is not None and "variant" not in overrides and model_name in weights_lib.KERAS_APPLICATIONS_MODELS
            and weights_lib.is_keras_applications_file(source.given)):
        overrides["variant"] = "keras"
    model = weights_lib.build(model_name, overrides, None if saved is None else saved.adapters,
                              loading=weights is not None)
    if source is not None:
        weights_lib.load(model, source)
    return model


def _published(model_name, source, overrides):
    """The model with published weights (a resolved ``weights.Source``: a timm tag or
    "imagenet"), which its build spec records for its card."""
    model = weights_lib.build(model_name, overrides, loading=True)
    weights_lib.load(model, source)
    model.build_spec = dataclasses.replace(model.build_spec, weights=source.name)
    return model


def list_weights(pattern="*"):
    """The published weights ``create_model(..., weights=NAME)`` loads: every timm tag of an
    architecture reszoo builds ("timm/resnet50.a1h_in1k") and keras.applications' ImageNet
    weights ("imagenet" for resnet50, preact_resnet50, densenet121 ..., listed as
    "keras/resnet50"), matching a shell-style ``pattern`` on the model and tag, sorted."""
    if not isinstance(pattern, str):
        raise TypeError(f"list_weights(pattern): pattern is a shell-style string such as 'resnet50*', "
                        f"not {pattern!r}")
    keras_models = sorted(f"keras/{name}" for name in weights_lib.KERAS_APPLICATIONS_MODELS
                          if fnmatch.fnmatchcase(name, pattern))
    return hub.list_weights(pattern) + keras_models


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
    spec = registry.get_spec(name)
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
        "features": features(model),
    }
    found = getattr(model, "build_spec", None)
    if found is not None and found.overrides:
        card["overrides"] = dict(found.overrides)
    if found is not None and found.weights is not None:
        card["weights"] = _weights_card(name, found.weights)
    if found is not None and found.adapters is not None:
        card["adapters"] = found.adapters
    if spec.notes:
        card["notes"] = spec.notes
    return card


def _weights_card(model_name, weights):
    if hub.is_tag(weights):
        return hub.card(hub.resolve(model_name, weights))
    if weights != weights_lib.IMAGENET:  # a timm state dict (reszoo.hub.Checkpoint), by the name it was given
        return {"tag": weights, "source": f"timm state dict {weights}"}
    architecture = next(a for a, (name, _) in weights_lib.KERAS_APPLICATIONS.items() if name == model_name)
    table = weights_lib.keras_weights_table()
    return {"tag": weights, "source": f"keras.applications {architecture}", "license": "MIT (keras.applications)",
            "imagenet": {"top1": table["top1"][architecture], "img_size": 224, "note": "as keras.io lists it"},
            "preprocessing": weights_lib.KERAS_APPLICATIONS[architecture][1]}


def _depth(spec, model):
    depth = spec.config.get("depth")
    if depth is None:
        weighted = [layer for layer in model.layers if type(layer).__name__ in ("Conv2D", "Dense")]
        depth = len([layer for layer in weighted if not naming.is_shortcut(layer.name)])
    return depth
