"""timm's weights for reszoo's models: the table of tags (``data/timm_weights.json``, written
by ``scripts/timm_weights.py``), the download through ``huggingface_hub`` (its cache,
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``), the ``model.safetensors`` read with
``safetensors`` into numpy (no PyTorch), and timm's tensor names turned into reszoo's layers
(``reszoo.naming``) with their arrays in Keras' layout; a user's own timm checkpoints
(``Checkpoint``: a state dict file, a hub folder, ``hf-hub:USER/REPO``); and the way back,
reszoo's layers as timm's state dict and hub folder (``save_timm``).

    reszoo.create_model("resnet50", weights="timm/resnet50.a1h_in1k")
    reszoo.create_model("resnet50", weights="a1h_in1k")        # the tag alone: resnet50's
    reszoo.create_model(weights="hf-hub:me/my-resnet")         # a timm fine-tune of your own
    reszoo.hub.save_timm(model, "my-timm")                     # for timm.create_model("hf-hub:...")
    reszoo.list_weights("resnet50*")
"""

import dataclasses
import difflib
import fnmatch
import functools
import json
import os
import pickle
import re

import numpy as np

from reszoo import io, layout, naming, registry
from reszoo.errors import WeightsError
from reszoo.model import build_spec

PREFIX = "timm/"
HF_HUB = "hf-hub:"  # timm's spelling of any Hugging Face repo in its layout
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # a timm hub folder's state dict, in timm's order
STATE_DICT_FILES = (".safetensors", ".bin", ".pth", ".pt")
_CLASSIFIERS = ("fc", "head.fc", "classifier")
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # timm's default
_TABLE = os.path.join(os.path.dirname(__file__), "data", "timm_weights.json")
# timm's mean / std -> reszoo.layers.ImagePreprocess's mode that computes exactly that.
_MODES = {((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)): "torch", ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)): "tf"}


@functools.cache
def table():
    """``{tag: entry}`` for every timm tag of an architecture reszoo builds."""
    with open(_TABLE) as f:
        return json.load(f)["weights"]


@functools.cache
def architectures():
    """The timm architectures reszoo builds (those of the table's tags), sorted."""
    return tuple(sorted({entry["architecture"] for entry in table().values()}))


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
    elif "." not in name and name in architectures():
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
    return _arguments(table()[tag], given)


def _arguments(entry, given):
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


def where_to_put(repo, filename="model.safetensors"):
    """The advice for a file that cannot be downloaded: where the cache must hold it."""
    return (f"put {filename} in {cache_folder(repo)}/snapshots/<revision>/ (with refs/main naming the "
            f"revision), or download it once with network: huggingface_hub.hf_hub_download({repo!r}, "
            f"{filename!r})")


def download(tag):
    """The local path of ``tag``'s ``model.safetensors``: from the Hugging Face cache, or
    downloaded into it. One line says what to do where it cannot be had."""
    return _fetch(table()[tag]["hf_hub_id"], "model.safetensors", PREFIX + tag)


def _fetch(repo, filename, described):
    """``filename`` of Hugging Face ``repo`` from the cache, or downloaded into it; a
    ``WeightsError`` saying where it goes when it cannot be had, or a ``KeyError`` when the
    repo has no such file."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return huggingface_hub.hf_hub_download(repo, filename, local_files_only=constants.HF_HUB_OFFLINE)
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise WeightsError(f"{described}: {why} and the Hugging Face cache has no copy: "
                           f"{where_to_put(repo, filename)}") from None
    except EntryNotFoundError:
        raise KeyError(filename) from None
    except Exception as err:  # HTTP errors, a repo that moved...
        raise WeightsError(f"{described}: cannot download {repo}: {type(err).__name__}: "
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


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A timm state dict that is not in the table: a user's own file (``model.safetensors``,
    ``pytorch_model.bin``, ``.pth``), a folder in timm's hub layout, or ``hf-hub:USER/REPO``;
    with the architecture and ``pretrained_cfg`` of its ``config.json`` (timm's hub layout)."""

    name: str  # as the user gave it
    path: str  # the state dict file
    architecture: str
    pretrained_cfg: dict


def is_checkpoint(weights):
    """Whether ``weights`` names a timm state dict (``Checkpoint``) rather than a tag or a
    Keras file."""
    if not isinstance(weights, (str, os.PathLike)):
        return False
    weights = os.fspath(weights)
    if weights.startswith(HF_HUB):
        return True
    path = os.path.expanduser(weights)
    return path.endswith(STATE_DICT_FILES) or (
        os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name)) for name in HUB_FILES))


def checkpoint(weights, model_name=None):
    """``weights`` (see ``is_checkpoint``) resolved once: its state dict file (from the
    Hugging Face cache for ``hf-hub:``, under its offline rules) and architecture, from
    ``config.json`` beside it or ``model_name``. A ``WeightsError`` says what is missing."""
    weights = os.fspath(weights)
    if weights.startswith(HF_HUB):
        repo = weights[len(HF_HUB):]
        path = None
        for name in HUB_FILES:
            try:
                path = _fetch(repo, name, weights)
                break
            except KeyError:
                continue
        if path is None:
            raise WeightsError(f"{weights}: the repo has none of {', '.join(HUB_FILES)} (timm's layout)")
        try:
            config_path = _fetch(repo, "config.json", weights)
        except KeyError:
            config_path = None
    else:
        path = os.path.expanduser(weights)
        if os.path.isdir(path):
            path = next(os.path.join(path, n) for n in HUB_FILES if os.path.isfile(os.path.join(path, n)))
        if not os.path.isfile(path):
            raise WeightsError(f"no such weights file: {path}")
        config_path = os.path.join(os.path.dirname(path), "config.json")
        config_path = config_path if os.path.isfile(config_path) else None
    config = _read_config(config_path)
    architecture = config.get("architecture")
    if architecture is not None and architecture not in architectures():
        close = difflib.get_close_matches(str(architecture), architectures(), n=4, cutoff=0.5)
        raise WeightsError(f"{config_path}: architecture {architecture!r} has no reszoo counterpart"
                           + (f"; the closest: {', '.join(close)}" if close else
                              f"; reszoo reads timm's {', '.join(architectures()[:6])}, ..."))
    if architecture and model_name and architecture != model_name:
        raise WeightsError(f"{weights} holds {architecture} weights ({config_path}), not {model_name}'s: "
                           f"reszoo.create_model({architecture!r}, weights={weights!r})")
    architecture = architecture or model_name
    if architecture is None:
        raise WeightsError(f"{weights}: no config.json beside it says its architecture (timm's hub layout: "
                           '{"architecture": "resnet50", ...}); or give the model name: '
                           f"reszoo.create_model('resnet50', weights={weights!r})")
    return Checkpoint(weights, path, architecture, dict(config.get("pretrained_cfg") or {}))


def _read_config(path):
    if path is None:
        return {}
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not timm's config.json ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise WeightsError(f"{path} is not timm's config.json (not a JSON object)")
    return config


def read_checkpoint(found):
    """The state dict of a ``Checkpoint`` as numpy arrays, unwrapped from a training
    checkpoint (``{"state_dict": ...}`` or ``{"model": ...}``, DataParallel's ``module.``
    prefix). PyTorch files are read with ``torch.load(weights_only=True)``: a pickle of other
    objects is refused."""
    path = found.path
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        try:
            state = load_file(path)
        except Exception as err:  # SafetensorError, or an OSError
            raise WeightsError(f"{found.name}: {path} is not a safetensors file, or is damaged ({type(err).__name__}: "
                               f"{str(err).strip().splitlines()[0]})") from None
    else:
        state = _torch_state(found.name, path)
    state = unwrap(state)
    bad = next((key for key, value in state.items() if not isinstance(value, np.ndarray)), None)
    if bad is not None or not state:
        raise WeightsError(f"{found.name}: {path} is not a state dict" + (f" ({bad!r} is no tensor)" if bad else
                                                                            " (it is empty)"))
    return state


def _torch_state(name, path):
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{name}: reading a PyTorch file needs torch (pip install 'reszoo[torch]'); or save its "
                           "state dict with safetensors as model.safetensors") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for objects weights_only refuses, RuntimeError for a damaged file
        why = ("it holds pickled objects besides tensors" if isinstance(err, pickle.UnpicklingError) else
               f"{type(err).__name__}: {str(err).strip().splitlines()[0][:160]}")
        raise WeightsError(f"{name}: torch.load(weights_only=True) refuses {path} ({why}); save its state dict "
                           "alone (torch.save(model.state_dict(), ...)) or as model.safetensors") from None

    def numpy(value):
        if isinstance(value, dict):
            return {k: numpy(v) for k, v in value.items()}
        return value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else value

    return numpy(state) if isinstance(state, dict) else {"": state}


def unwrap(state):
    """A training checkpoint's state dict: under ``"state_dict"`` or ``"model"`` where it is
    wrapped, without DataParallel's ``module.`` prefix."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def checkpoint_arguments(found, state, given):
    """The builder arguments a ``Checkpoint`` needs, unless ``given``: as ``build_arguments``,
    with the classes its classifier has (none: pooled features, timm's ``num_classes=0``) and
    the mean and std of its ``pretrained_cfg`` (timm's ImageNet default)."""
    classifier = next((state[f"{name}.weight"] for name in _CLASSIFIERS if f"{name}.weight" in state), None)
    entry = {"mean": found.pretrained_cfg.get("mean", _IMAGENET["mean"]),
             "std": found.pretrained_cfg.get("std", _IMAGENET["std"]),
             "num_classes": 0 if classifier is None else int(classifier.shape[0])}
    arguments = _arguments(entry, given)
    if classifier is None and "num_classes" not in given:
        arguments["num_classes"] = 0
    return arguments


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


def convert(state, described):
    """timm's state dict as ``({reszoo layer: [arrays in Keras' order]}, {layer: timm tensor})``
    (``described`` names its source in the messages):
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
            raise WeightsError(f"{described}: tensor {next(iter(tensors))!r} of module {module!r} is not a conv, "
                               "BatchNorm or linear weight")
        if kind != "bn" and "bias" in tensors:
            arrays.append(tensors["bias"])
        name = _layer_name(module, kind)
        if name is None:
            raise WeightsError(f"{described}: tensor {module}.{next(iter(tensors))} has no counterpart in reszoo's "
                               "layers")
        values[name] = [np.ascontiguousarray(a, "float32") for a in arrays]
        origin[name] = f"{module}.weight"
    return values, origin


# reszoo's layers back to timm's tensors: the modules of each family of timm, as (module, kind),
# which _RULES map onto reszoo's names; inverted per model in ``timm_modules``.
def _resnet_modules(stages, blocks, downsample):
    yield from (("conv1", "conv"), ("bn1", "bn"), ("fc", "dense"))
    yield from ((f"conv1.{i}", kind) for i, kind in (("0", "conv"), ("1", "bn"), ("3", "conv"), ("4", "bn"),
                                                       ("6", "conv")))
    for s in range(1, stages + 1):
        for b in range(blocks):
            prefix = f"layer{s}.{b}"
            for j in (1, 2, 3):
                yield from ((f"{prefix}.conv{j}", "conv"), (f"{prefix}.bn{j}", "bn"))
            yield from ((f"{prefix}.downsample.{downsample}", "conv"), (f"{prefix}.downsample.{downsample + 1}", "bn"),
                        (f"{prefix}.se.fc1", "conv"), (f"{prefix}.se.fc2", "conv"))


def _resnetv2_modules(stages, blocks):
    yield from (("stem.conv", "conv"), ("norm", "bn"), ("head.fc", "dense"))
    for s in range(stages):
        for b in range(blocks):
            prefix = f"stages.{s}.blocks.{b}"
            yield from ((f"{prefix}.norm{j}", "bn") for j in (1, 2, 3))
            yield from ((f"{prefix}.conv{j}", "conv") for j in (1, 2, 3))
            yield f"{prefix}.downsample.conv", "conv"


def _densenet_modules(stages, blocks):
    yield from (("features.conv0", "conv"), ("features.norm0", "bn"), ("features.norm5", "bn"), ("classifier", "dense"))
    for s in range(1, stages + 1):
        yield from ((f"features.transition{s}.norm", "bn"), (f"features.transition{s}.conv", "conv"))
        for layer_index in range(1, blocks + 1):
            prefix = f"features.denseblock{s}.denselayer{layer_index}"
            yield from ((f"{prefix}.norm1", "bn"), (f"{prefix}.conv1", "conv"), (f"{prefix}.norm2", "bn"),
                        (f"{prefix}.conv2", "conv"))


def timm_architecture(model):
    """The timm architecture of a reszoo model, with its builder arguments; a ``WeightsError``
    where it has none (the CIFAR nets, plain nets, adapters) or pads as Keras does."""
    spec = build_spec(model)
    if spec is None or spec.name not in architectures() or spec.adapters is not None:
        name = spec.name if spec is not None else model.name
        raise WeightsError(f"{name} has no timm counterpart: timm builds {', '.join(architectures()[:8])}, ... "
                           "(reszoo's CIFAR ResNets, plain nets and adapter tasks are its own)")
    arguments = {**registry.get_spec(spec.name).config, **spec.arguments()}
    if arguments.get("padding", "same") != "symmetric":
        raise WeightsError(f"{spec.name} was built with Keras' 'same' padding, and timm pads symmetrically "
                           "(PyTorch's k // 2): build it with padding='symmetric' (--model_args=padding=symmetric) "
                           "to give timm's answers")
    return spec.name, arguments


def timm_modules(model, architecture, arguments):
    """``{reszoo layer: (timm module, kind)}`` for every weighted layer of ``model`` (its
    preprocessing aside): ``_RULES`` inverted over the modules of its timm family."""
    blocks = 1 + max((found[1] for found in map(naming.block, (l.name for l in model.layers)) if found), default=0)
    if architecture.startswith("resnetv2"):
        candidates = _resnetv2_modules(4, blocks)
    elif architecture.startswith("densenet"):
        candidates = _densenet_modules(4, blocks)
    else:
        candidates = _resnet_modules(4, blocks, 1 if arguments.get("avg_down") else 0)
    names = {}
    for module, kind in candidates:
        name = _layer_name(module, kind)
        if name is not None:
            names.setdefault(name, (module, kind))
    weighted = [layer for layer in model.layers if layer.weights and layer.name != naming.PREPROCESS]
    missing = [layer.name for layer in weighted if layer.name not in names]
    if missing:
        raise WeightsError(f"{architecture}: layer {missing[0]!r} has no counterpart in timm's {architecture}")
    return {layer.name: names[layer.name] for layer in weighted}


def timm_state(model):
    """``model``'s weights as timm's state dict (numpy, timm's names and layouts: conv
    [out, in, kh, kw], linear [out, in], BatchNorm with ``num_batches_tracked``), its
    architecture and its ``pretrained_cfg`` mean and std (in timm's 0-1 pixel units)."""
    architecture, arguments = timm_architecture(model)
    state = {}
    layers = {layer.name: layer for layer in model.layers}
    for name, (module, kind) in timm_modules(model, architecture, arguments).items():
        values = layers[name].get_weights()
        if kind == "bn":
            state.update({f"{module}.{k}": v for k, v in zip(("weight", "bias", "running_mean", "running_var"), values)})
            state[f"{module}.num_batches_tracked"] = np.zeros((), "int64")
            continue
        kernel, bias = values[0], values[1:]
        if kind == "conv":
            weight = np.transpose(kernel, (3, 2, 0, 1))
        elif architecture.startswith("resnetv2"):  # timm's ResNetV2 classifies with a 1x1 conv
            weight = kernel.T[:, :, None, None]
        else:
            weight = kernel.T
        state[f"{module}.weight"] = weight
        if bias:
            state[f"{module}.bias"] = bias[0]
    state = {key: np.ascontiguousarray(value) for key, value in state.items()}
    values, _ = convert(state, architecture)  # the loader's own mapping (tested against timm) gives them back
    if any(not all(np.array_equal(a, b) for a, b in zip(values[name], layers[name].get_weights())) for name in values):
        raise WeightsError(f"{architecture}: the state dict does not convert back to {model.name}'s weights")
    return architecture, state, _timm_stats(model)


def _timm_stats(model):
    """The mean and std timm normalises with (after dividing pixels by 255) to feed ``model``
    what it takes: its preprocessing layer's, or none (raw pixels)."""
    channels = layout.channels(model.input_shape, layout.of(model))
    layer = next((layer for layer in model.layers if layer.name == naming.PREPROCESS), None)
    if layer is None:
        return [0.0] * channels, [1 / 255] * channels
    config = layer.get_config()
    if "mode" in config:
        stats = {mode: stats for stats, mode in _MODES.items()}.get(config["mode"])
        if stats is None:
            raise WeightsError(f"{model.name} takes {config['mode']!r} preprocessing (BGR, no std), which timm's "
                               "mean and std cannot express")
        return list(stats[0]), list(stats[1])
    given = config.get("mean") is not None  # Normalization(mean=, variance=) keeps them in its config
    mean, variance = (np.asarray(v, "float64").reshape(-1) for v in
                      ((config["mean"], config["variance"]) if given else layer.get_weights()[:2]))
    return (mean / 255).tolist(), (np.sqrt(variance) / 255).tolist()


def save_timm(model, folder, card=None):
    """``model`` in timm's hub layout in ``folder``, written whole (renamed into place):
    ``model.safetensors`` (timm's names), ``config.json`` (``architecture``, ``num_classes``,
    ``pretrained_cfg`` with the model's mean, std, input size) and a ``README.md`` model card
    with timm's front matter. ``card`` adds to the card: ``license``, ``datasets``,
    ``metrics`` ({"top1": ...}), ``crop_pct``, ``interpolation``. timm loads it with
    ``timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=...))``, or as
    ``hf-hub:`` once uploaded (``huggingface_hub.upload_folder``). Returns ``folder``."""
    from safetensors.numpy import save_file

    card = dict(card or {})
    architecture, state, (mean, std) = timm_state(model)
    classes = int(state[next(f"{m}.weight" for m in _CLASSIFIERS if f"{m}.weight" in state)].shape[0]) if any(
        f"{m}.weight" in state for m in _CLASSIFIERS) else 0
    data_format = layout.of(model)
    height, width = (d or 224 for d in layout.spatial(model.input_shape, data_format))
    channels = layout.channels(model.input_shape, data_format)
    pretrained_cfg = {"input_size": [channels, height, width], "mean": mean, "std": std, "num_classes": classes,
                      "crop_pct": card.get("crop_pct", 1.0), "crop_mode": "center",
                      "interpolation": card.get("interpolation", "bilinear"), "first_conv": _first_conv(architecture),
                      "classifier": _classifier(architecture)}
    config = {"architecture": architecture, "num_classes": classes, "num_features": None,
              "pretrained_cfg": pretrained_cfg}
    if channels != 3:
        config["model_args"] = {"in_chans": channels}

    def write(tmp):
        os.makedirs(tmp)
        save_file(state, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(_model_card(architecture, model.name, card))

    io.atomic_write(os.path.normpath(folder), write)
    return folder


def _first_conv(architecture):
    if architecture.startswith("resnetv2"):
        return "stem.conv"
    if architecture.startswith("densenet"):
        return "features.conv0"
    return "conv1.0" if architecture.endswith("d") else "conv1"


def _classifier(architecture):
    return "head.fc" if architecture.startswith("resnetv2") else (
        "classifier" if architecture.startswith("densenet") else "fc")


def _model_card(architecture, name, card):
    """A model card with timm's front matter (the Hugging Face metadata timm's own carry)."""
    front = ["---", "tags:", "- image-classification", "- timm", "- reszoo", "library_name: timm",
             f"license: {card.get('license', 'apache-2.0')}"]
    if card.get("datasets"):
        front += ["datasets:", *(f"- {d}" for d in card["datasets"])]
    front.append("---")
    metrics = card.get("metrics") or {}
    lines = [f"# Model card for {name}", "",
             f"A `{architecture}` trained with reszoo (Keras) and converted to timm's layout by "
             "`reszoo.hub.save_timm`: `timm.create_model('hf-hub:USER/REPO', pretrained=True)` once uploaded "
             "with `huggingface_hub.upload_folder`.", ""]
    if metrics:
        lines += ["## Results (measured by reszoo)", "", "| metric | value |", "|---|---:|",
                  *(f"| {k} | {v} |" for k, v in metrics.items()), ""]
    return "\n".join(front + [""] + lines)
