"""timm's weights for reszoo's models: the table of tags (``data/timm_weights.json``, written
by ``scripts/timm_weights.py``), the download through ``huggingface_hub`` (its cache,
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``), the ``model.safetensors`` read with
``safetensors`` into numpy (no PyTorch), and timm's tensor names turned into reszoo's layers
(``reszoo.naming``) with their arrays in Keras' layout.

    reszoo.create_model("resnet50", weights="timm/resnet50.a1h_in1k")
    reszoo.create_model("resnet50", weights="a1h_in1k")        # the tag alone: resnet50's
    reszoo.list_weights("resnet50*")
"""

import difflib
import fnmatch
import functools
import json
import os
import re

import numpy as np

from reszoo import naming
from reszoo.errors import WeightsError

PREFIX = "timm/"
_TABLE = os.path.join(os.path.dirname(__file__), "data", "timm_weights.json")
# timm's mean / std -> reszoo.layers.ImagePreprocess's mode that computes exactly that.
_MODES = {((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)): "torch", ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): "tf"}


@functools.cache
def table():
    """``{tag: entry}`` for every timm tag of an architecture reszoo builds."""
    with open(_TABLE) as f:
        return json.load(f)["weights"]


def is_tag(weights):
    return isinstance(weights, str) and weights.startswith(PREFIX)


def list_weights(pattern="*"):
    """The timm weights reszoo loads, as ``"timm/ARCH.TAG"``, matching a shell-style pattern on
    the tag (``"resnet50*"``, ``"*in1k"``), sorted."""
    return sorted(PREFIX + tag for tag in table() if fnmatch.fnmatchcase(tag, pattern.removeprefix(PREFIX)))


def resolve(model_name, weights):
    """The table's tag for ``weights`` on the registered model ``model_name``: "timm/ARCH.TAG",
    "timm/ARCH" (timm's default tag, its first), or a bare "TAG" when ``model_name`` is the
    architecture. A ``WeightsError`` suggests close tags (of ``model_name`` for a bare tag), or
    names the architecture a tag is for."""
    tags = table()
    name = weights.removeprefix(PREFIX)
    if "." not in name and model_name and f"{model_name}.{name}" in tags:
        name = f"{model_name}.{name}"
    elif "." not in name and name in {entry["architecture"] for entry in tags.values()}:
        name = next(tag for tag in tags if tag.split(".")[0] == name)
    if name not in tags:
        raise WeightsError(f"unknown timm weights {weights!r}{_suggestions(model_name, name)}")
    architecture = tags[name]["architecture"]
    if model_name is not None and architecture != model_name:
        raise WeightsError(f"{PREFIX}{name} are weights of {architecture}, not {model_name}: "
                           f"reszoo.create_model({architecture!r}, weights={PREFIX + name!r})")
    return name


def _suggestions(model_name, name):
    """"; did you mean ..." with the tags closest to ``name`` (a bare tag is read as
    ``model_name``'s, or compared with every architecture's), and ``model_name``'s tags."""
    tags = table()
    if "." in name:
        close = difflib.get_close_matches(name, list(tags), n=4, cutoff=0.6)
    elif model_name:
        close = difflib.get_close_matches(f"{model_name}.{name}", list(tags), n=4, cutoff=0.6)
    else:
        by_tag = {}
        for tag in tags:
            by_tag.setdefault(tag.split(".", 1)[1], []).append(tag)
        close = [t for found in difflib.get_close_matches(name, list(by_tag), n=2, cutoff=0.6) for t in by_tag[found]][:4]
    ours = [t for t in tags if t.split(".")[0] == model_name][:8]
    return ((f"; did you mean {', '.join(close)}?" if close else "")
            + (f" ({model_name} has {', '.join(PREFIX + t for t in ours)})" if ours else
               " (reszoo.list_weights() lists them)"))


def build_arguments(tag, given):
    """The builder arguments the weights need, unless ``given``: timm's padding, its classes
    (when it has a classifier) and its preprocessing inside the model, so raw pixels in give
    timm's answer."""
    entry = table()[tag]
    arguments = {"padding": "symmetric"}
    if entry.get("num_classes"):
        arguments["num_classes"] = entry["num_classes"]
    stats = (tuple(entry["mean"]), tuple(entry["std"]))
    arguments["preprocessing"] = _MODES.get(stats) or {"mean": [255 * m for m in entry["mean"]],
                                                        "std": [255 * s for s in entry["std"]]}
    return {key: value for key, value in arguments.items() if key not in given}


def card(tag):
    """What the model card shows of the weights: source, published accuracy with its eval size
    and crop, the recipe's paper, licence, mean / std, interpolation, input and test sizes."""
    entry = dict(table()[tag])
    entry["tag"] = PREFIX + tag
    return entry


def cache_folder(repo):
    """Where the Hugging Face cache keeps ``repo`` ("timm/resnet50.a1h_in1k"): its
    ``models--OWNER--NAME`` folder under ``HF_HUB_CACHE``."""
    from huggingface_hub import constants

    return os.path.join(constants.HF_HUB_CACHE, f"models--{repo.replace('/', '--')}")


def where_to_put(repo):
    """The advice for a file that cannot be downloaded: where the cache must hold it."""
    return (f"put model.safetensors in {cache_folder(repo)}/snapshots/<revision>/ (with refs/main naming the "
            f"revision), or download it once with network: huggingface_hub.hf_hub_download({repo!r}, "
            "'model.safetensors')")


def download(tag):
    """The local path of ``tag``'s ``model.safetensors``: from the Hugging Face cache, or
    downloaded into it. One line says what to do where it cannot be had."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = table()[tag]["hf_hub_id"]
    try:
        return huggingface_hub.hf_hub_download(repo, "model.safetensors")
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise WeightsError(f"{PREFIX}{tag}: {why} and the Hugging Face cache has no copy: "
                           f"{where_to_put(repo)}") from None
    except Exception as err:  # HTTP errors, a repo that moved...
        raise WeightsError(f"{PREFIX}{tag}: cannot download {repo}: {type(err).__name__}: "
                           f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None


def read(path, tag):
    """The state dict in ``path`` as numpy arrays. A damaged file (a truncated download, say)
    is refused and its cache entry removed, so that the next call downloads it again; a file
    the entry links to outside the cache (a user's own) is left as it is."""
    from huggingface_hub import constants
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as err:  # SafetensorError, or an OSError
        repo = table()[tag]["hf_hub_id"]
        outside = _forget(path, cache_folder(repo))
        done = (f"it links to {outside}, outside the cache, which was left as it is; the link was removed"
                if outside else "it was removed from the cache")
        then = where_to_put(repo) if constants.HF_HUB_OFFLINE else "call again to download it"
        raise WeightsError(f"{PREFIX}{tag}: {path} is damaged ({type(err).__name__}: "
                           f"{str(err).strip().splitlines()[0]}); {done}: {then}") from None


def _inside(path, folder):
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def _forget(path, cache):
    """Remove a damaged cache entry: the snapshot's link and the blob it points to, never
    anything outside ``cache`` (a repo's cache folder). Returns the real path of a file the
    link points to outside it, or None."""
    target = os.path.realpath(path)
    outside = None if _inside(target, cache) else target
    doomed = [path] if _inside(os.path.dirname(path), cache) else []
    if outside is None and target != os.path.abspath(path):
        doomed.append(target)
    for entry in doomed:
        try:
            os.remove(entry)
        except OSError:
            pass
    return outside


# timm's module path -> reszoo's layer name. A rule's function takes the regex match and the
# module's kind ("conv", "bn" or "dense") and returns the name. One table per family of timm.
def _block(m, offset=1):
    return naming.block_name(int(m[1]) + offset, int(m[2]) + 1)


_STEM_DEEP = {"0": (1, "conv"), "1": (1, "bn"), "3": (2, "conv"), "4": (2, "bn"), "6": (3, "conv")}
_RULES = (
    # timm.models.resnet.ResNet (torchvision's layout, and ResNet-D, ResNeXt, Wide, SE).
    (r"conv1", lambda m, kind: naming.STEM_CONV),
    (r"conv1\.(\d)", lambda m, kind: naming.layer(naming.stage_name(naming.STEM), *_STEM_DEEP[m[1]])),
    (r"bn1", lambda m, kind: naming.part(naming.stage_name(naming.STEM), "bn")),
    (r"layer(\d)\.(\d+)\.(?:conv|bn)(\d)", lambda m, kind: naming.layer(_block(m), int(m[3]), kind)),
    (r"layer(\d)\.(\d+)\.downsample\.\d", lambda m, kind: naming.layer(_block(m), 0, kind)),
    (r"layer(\d)\.(\d+)\.se\.fc([12])", lambda m, kind: naming.part(_block(m), ("se_reduce", "se_expand")[int(m[3]) - 1])),
    (r"fc", lambda m, kind: naming.CLASSIFIER),
    # timm.models.resnetv2.ResNetV2 (pre-activation).
    (r"stem\.conv", lambda m, kind: naming.STEM_CONV),
    (r"stages\.(\d)\.blocks\.(\d+)\.norm1", lambda m, kind: naming.part(_block(m, 2), "preact_bn")),
    (r"stages\.(\d)\.blocks\.(\d+)\.(?:conv|norm)(\d)", lambda m, kind: naming.layer(_block(m, 2), int(m[3]), kind)),
    (r"stages\.(\d)\.blocks\.(\d+)\.downsample\.conv", lambda m, kind: naming.layer(_block(m, 2), 0, kind)),
    (r"norm", lambda m, kind: naming.part(naming.POST, "bn")),
    (r"head\.fc", lambda m, kind: naming.CLASSIFIER),
    # timm.models.densenet.DenseNet (torchvision's layout).
    (r"features\.conv0", lambda m, kind: naming.STEM_CONV),
    (r"features\.norm0", lambda m, kind: naming.part(naming.stage_name(naming.STEM), "bn")),
    (r"features\.denseblock(\d)\.denselayer(\d+)\.norm1",
     lambda m, kind: naming.layer(naming.block_name(int(m[1]) + 1, int(m[2])), 0, "bn")),
    (r"features\.denseblock(\d)\.denselayer(\d+)\.(?:conv|norm)([12])",
     lambda m, kind: naming.layer(naming.block_name(int(m[1]) + 1, int(m[2])), int(m[3]) - (kind == "bn"), kind)),
    (r"features\.transition(\d)\.(?:norm|conv)", lambda m, kind: naming.part(naming.transition(int(m[1]) + 1), kind)),
    (r"features\.norm5", lambda m, kind: naming.part(naming.POST, "bn")),
    (r"classifier", lambda m, kind: naming.CLASSIFIER),
)


def _layer_name(module, kind):
    for pattern, name in _RULES:
        match = re.fullmatch(pattern, module)
        if match:
            return name(match, kind)
    return None


def convert(state, tag):
    """timm's state dict as ``({reszoo layer: [arrays in Keras' order]}, {layer: timm tensor})``:
    conv kernels [out, in, kh, kw] -> [kh, kw, in, out], linear (or 1x1 conv head) weights
    transposed, BatchNorm as gamma, beta, moving mean, moving variance. A tensor that no rule
    places is a ``WeightsError`` naming it."""
    modules = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        if tensor != "num_batches_tracked":
            modules.setdefault(module, {})[tensor] = value
    values, origin = {}, {}
    for module, tensors in modules.items():
        weight = tensors.get("weight")
        if "running_mean" in tensors:
            kind = "bn"
            arrays = [tensors["weight"], tensors["bias"], tensors["running_mean"], tensors["running_var"]]
        elif weight is not None and weight.ndim == 4 and not re.fullmatch(r"(?:head\.)?fc|classifier", module):
            kind, arrays = "conv", [np.transpose(weight, (2, 3, 1, 0))]
        elif weight is not None:
            kind, arrays = "dense", [weight.reshape(weight.shape[0], -1).T]
        else:
            raise WeightsError(f"{PREFIX}{tag}: tensor {next(iter(tensors))!r} of module {module!r} is not a conv, "
                               "BatchNorm or linear weight")
        if kind != "bn" and "bias" in tensors:
            arrays.append(tensors["bias"])
        name = _layer_name(module, kind)
        if name is None:
            raise WeightsError(f"{PREFIX}{tag}: tensor {module}.{next(iter(tensors))} has no counterpart in reszoo's "
                               "layers")
        values[name] = [np.ascontiguousarray(a, "float32") for a in arrays]
        origin[name] = f"{module}.weight"
    return values, origin
