"""Fine-tuning and residual adapters: a trained model as the start of a new task.

    import reszoo
    from reszoo import transfer

    model = reszoo.create_model(weights="runs/resnet20-digits")     # trained on 10 digits
    model = transfer.replace_classifier(model, num_classes=5)
    transfer.freeze(model, "backbone")                                # or "conv3", or None
    model.compile(...); model.fit(...)

Residual adapters keep the trained network as a frozen backbone and learn each new task as a
small correction beside its convolutions (``layers.ResidualAdapter``; Rebuffi, Bilen, Vedaldi
2017 and 2018). Only the adapters, the BatchNorm layers (each task has its own copy) and the
classifier train, so the backbone's weights stay bit-identical and every earlier task keeps
exactly its accuracy. A task saves to a file of its own (``save_task``), a small fraction of
the backbone, and ``load_task`` puts it back on the same backbone.
"""

import dataclasses
import hashlib
import json
import os
import zipfile

import keras
import numpy as np

from reszoo import io, layout, naming
from reszoo.checks import check_choice
from reszoo.factory import LayerFactory
from reszoo.layers import ResidualAdapter
from reszoo.model import BuildSpec, ZooModel, build_spec, feature_map
from reszoo.skeleton import global_pool as pool_layers


def _spec(model, **changes):
    """``model``'s build spec with ``changes`` to its arguments (None when it has none)."""
    spec = build_spec(model)
    if spec is None:
        return None
    overrides = BuildSpec.of(spec.name, {**spec.arguments(), **changes}).overrides
    return dataclasses.replace(spec, overrides=overrides)


def replace_classifier(model, num_classes, classifier_activation=None):
    """``model`` (its layers and weights, shared) with a new classifier ``fc`` of
    ``num_classes`` on its pooled features (float32 under a mixed dtype policy, as the
    builders make it). ``model``'s ``avg_pool`` layer must be its own, not shared with
    another model (Keras gives a shared layer's first output only)."""
    names = [layer.name for layer in model.layers]
    pooled = naming.pooled(names)
    if pooled is None:
        raise ValueError(f"{model.name} has no pooling layer ({', '.join(naming.POOLS)}) to put a classifier on "
                         f"(layers end with {names[-3:]}); build it with include_top=True or pooling='avg'")
    features = model.get_layer(pooled).output
    logits = LayerFactory().classifier(features, num_classes, classifier_activation)
    new = ZooModel(model.inputs, logits, name=model.name)
    new.build_spec = _spec(model, num_classes=num_classes, include_top=True,
                           classifier_activation=classifier_activation)
    return new


def reset_classifier(model, num_classes, global_pool=None):
    """timm's ``reset_classifier``, returning a model (Keras models are not changed in place):
    ``model``'s backbone layers with a new classifier of ``num_classes`` (0: none, the pooled
    features out), pooling as ``global_pool`` says ("avg", "max", "avgmax", "catavgmax"; ""
    with ``num_classes=0``: the unpooled map), or as ``model`` pools."""
    names = [layer.name for layer in model.layers]
    pooled = naming.pooled(names)
    if global_pool is None and pooled is None:
        raise ValueError(f"{model.name} does not pool (layers end with {names[-3:]}): give global_pool")
    pool = model.get_layer(pooled) if pooled else None
    if global_pool is not None:
        check_choice("global_pool", global_pool, ("", *naming.POOLED))
        if global_pool == "" and num_classes:
            raise ValueError("global_pool='' leaves the map unpooled: a classifier needs num_classes=0 with it")
        unpooled = feature_map(model)
        features = unpooled if global_pool == "" else pool_layers(unpooled, global_pool, layout.of(model))
    else:
        features = pool.output
        global_pool = next(kind for kind, name in naming.POOLED.items() if name == pooled)
    head = features if not num_classes else LayerFactory().classifier(features, num_classes)
    new = ZooModel(model.inputs, head, name=model.name)
    new.build_spec = _spec(model, num_classes=num_classes, include_top=bool(num_classes), global_pool=global_pool,
                           pooling=None)
    return new


def test_time_pool(model, original_pool):
    """timm's ``TestTimePoolHead``, which its validate.py ``--test-pool`` applies to images
    larger than the training size: the feature map is average-pooled over windows of
    ``original_pool`` cells (the map of a training-size image) at stride 1, the classifier
    runs on every window, and the map of logits is reduced to the mean of its average and its
    maximum. Returns a model sharing ``model``'s layers and weights."""
    names = [layer.name for layer in model.layers]
    if naming.CLASSIFIER not in names or naming.pooled(names) is None:
        raise ValueError(f"{model.name} has no pooled classifier {naming.CLASSIFIER!r} (layers end with "
                         f"{names[-3:]}): test-time pooling needs one")
    classifier = model.get_layer(naming.CLASSIFIER)
    if keras.activations.serialize(classifier.activation) != "linear":
        raise ValueError(f"{model.name}'s classifier applies {classifier.activation.__name__}: test-time pooling "
                         "averages logits, build it with classifier_activation=None")
    if not isinstance(original_pool, int) or original_pool < 1:
        raise ValueError(f"original_pool must be a positive number of feature-map cells, got {original_pool!r}")
    data_format = layout.of(model)
    windows = keras.layers.AveragePooling2D(original_pool, strides=1, padding="valid", data_format=data_format,
                                            name="test_time_pool")(feature_map(model))
    if data_format == layout.FIRST:  # the classifier reads the channels last
        windows = keras.layers.Permute((2, 3, 1), name="test_time_pool_channels_last")(windows)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return ZooModel(inputs, pool_layers(classifier(windows), "avgmax", layout.LAST), name=model.name)


def freeze(model, up_to="backbone", train_bn=False):
    """Freeze ``model`` in place: "backbone" (every layer but the classifier), a stage
    ("conv3": the input layers, the stem and stages up to 3, by ``reszoo.naming``), or None
    (nothing). Frozen BatchNorm layers run in inference mode, as Keras runs any frozen BN;
    ``train_bn=True`` leaves BN layers trainable everywhere (per-task statistics). Returns
    the frozen layers' names."""
    if up_to is None or up_to == "none":
        return []
    stages = naming.stages(model)
    if up_to == "backbone":
        chosen = [layer for layer in model.layers if layer.name != naming.CLASSIFIER]
    else:
        wanted = naming.stage(up_to + "_") if isinstance(up_to, str) and up_to.startswith("conv") else None
        if wanted is None or wanted not in stages:
            raise ValueError(f"freeze={up_to}: no such stage; use none, backbone or one of "
                             f"{', '.join(f'conv{s}' for s in stages)}")
        last = max(i for i, layer in enumerate(model.layers) if naming.stage(layer.name) == wanted)
        chosen = model.layers[: last + 1]
    frozen = []
    for layer in chosen:
        if train_bn and isinstance(layer, keras.layers.BatchNormalization):
            continue
        layer.trainable = False
        frozen.append(layer.name)
    return frozen


def lr_multipliers(model, backbone=1.0, head=1.0):
    """Per-variable learning-rate factors (``reszoo.optim`` optimizers take them): the
    classifier's variables get ``head``, all others ``backbone``. Factors of 1 are left out."""
    classifier = set(id(v) for v in model.get_layer(naming.CLASSIFIER).trainable_variables)
    factors = {v.path: head if id(v) in classifier else backbone for v in model.trainable_variables}
    return {path: f for path, f in factors.items() if f != 1.0}


def _adaptable(layer):
    """The convolutions adapters go beside: k x k (k > 1) convs of the stages (not the stem)."""
    return (isinstance(layer, keras.layers.Conv2D) and max(layer.kernel_size) > 1
            and (naming.stage(layer.name) or 0) > naming.STEM)


def add_adapters(model, mode="parallel", num_classes=None):
    """A new model for a task on ``model``'s backbone: a ``ResidualAdapter`` beside every
    k x k convolution of the stages, a copy of every BatchNorm layer (the task's own), and
    ``model``'s classifier copied (or a new one of ``num_classes``). The backbone's other
    layers are shared with ``model`` and frozen. At first it computes what ``model`` does."""
    if mode not in ResidualAdapter.MODES:
        raise ValueError(f"mode must be one of {list(ResidualAdapter.MODES)}, got {mode!r}")
    if adapter_mode(model) is not None:
        raise ValueError(f"{model.name} has adapters already (a task's model); add them to its backbone")
    if any(isinstance(layer, keras.Model) or hasattr(layer, "inner") for layer in model.layers):
        raise ValueError(f"{model.name} has sub-models (weight-tied stages or memory-efficient DenseNet "
                         "layers): adapters go into plain stages only")
    if not any(_adaptable(layer) for layer in model.layers):
        raise ValueError(f"{model.name} has no convolution to adapt (k x k convolutions inside stages "
                         "conv2, conv3, ...)")

    def clone(layer):
        if _adaptable(layer):
            layer.trainable = False
            return ResidualAdapter(layer, mode, name=layer.name)
        if isinstance(layer, keras.layers.BatchNormalization) or naming.is_head(layer.name):
            return _copy(layer)  # the head too, so that its output in this graph is its only one
        if not layer.weights:  # a layer of its own, so that its output in this graph is its only one
            return layer.__class__.from_config(layer.get_config())
        layer.trainable = False
        return layer

    adapted = keras.models.clone_model(model, clone_function=clone)
    adapted = ZooModel(adapted.inputs, adapted.outputs, name=model.name)
    spec = build_spec(model)
    adapted.build_spec = None if spec is None else dataclasses.replace(spec, adapters=mode)
    if num_classes is not None and num_classes != model.output_shape[-1]:
        adapted = replace_classifier(adapted, num_classes)
    return adapted


def adapter_mode(model):
    """"parallel" or "series" for a model with adapters, else None."""
    modes = {layer.mode for layer in model.layers if isinstance(layer, ResidualAdapter)}
    return modes.pop() if len(modes) == 1 else None


def _copy(layer):
    """A new layer like ``layer`` with a copy of its weights."""
    copy = layer.__class__.from_config(layer.get_config())
    copy.build(layer.input.shape)
    copy.set_weights(layer.get_weights())
    return copy


def task_layers(model):
    """The layers a task owns: adapters, BatchNorm copies, the classifier."""
    return [layer for layer in model.layers if isinstance(layer, (ResidualAdapter, keras.layers.BatchNormalization))
            or layer.name == naming.CLASSIFIER]


def _task_weights(model):
    out = {}
    for layer in task_layers(model):
        values = layer.adapter.get_weights() if isinstance(layer, ResidualAdapter) else layer.get_weights()
        for i, value in enumerate(values):
            out[f"{layer.name}/{i}"] = value
    return out


def backbone_fingerprint(model):
    """A digest of the shared backbone's weights (every weighted layer but the task's): a
    task file records it, and loads only onto the backbone with the same one."""
    digest = hashlib.sha256()
    for layer in model.layers:
        if isinstance(layer, ResidualAdapter):
            values = layer.conv.get_weights()
        elif isinstance(layer, keras.layers.BatchNormalization) or layer.name == naming.CLASSIFIER:
            continue
        else:
            values = layer.get_weights()
        for value in values:
            digest.update(layer.name.encode())
            digest.update(np.ascontiguousarray(value, "float32").tobytes())
    return digest.hexdigest()


def save_task(model, path):
    """Write the task of an adapted ``model`` (adapters, BN layers, classifier) to ``path``
    (``.npz``), written whole or not at all. Returns the file's size in bytes."""
    mode = adapter_mode(model)
    if mode is None:
        raise ValueError(f"{model.name} has no adapters (reszoo.transfer.add_adapters makes them)")
    meta = {"mode": mode, "num_classes": int(model.output_shape[-1]), "backbone": backbone_fingerprint(model),
            "input_shape": list(model.input_shape[1:])}

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, __task__=np.array(json.dumps(meta)), **_task_weights(model))

    io.atomic_write(os.fspath(path), write)
    return os.path.getsize(path)


def load_task(backbone, path):
    """The adapted model of the task in ``path`` on ``backbone`` (the model the task was
    trained on: its weights must be the same, which the task file checks)."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            meta = json.loads(str(data["__task__"]))
            values = {k: data[k] for k in data.files if k != "__task__"}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a truncated file: BadZipFile
        raise ValueError(f"{os.fspath(path)} is not a reszoo task file, or is damaged "
                         f"({type(err).__name__}: {err})") from None
    adapted = add_adapters(backbone, meta["mode"], meta["num_classes"])
    if backbone_fingerprint(adapted) != meta["backbone"]:
        raise ValueError(f"{path} was trained on another backbone than {backbone.name} (its weights differ)")
    for layer in task_layers(adapted):
        target = layer.adapter if isinstance(layer, ResidualAdapter) else layer
        count = len(target.weights)
        if any(f"{layer.name}/{i}" not in values for i in range(count)):
            raise ValueError(f"{path} has no weights for layer {layer.name!r}")
        target.set_weights([values[f"{layer.name}/{i}"] for i in range(count)])
    return adapted
