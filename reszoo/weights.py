"""Pretrained weights in: keras.applications' ResNet, ResNetV2 and DenseNet weights into
reszoo's ``variant="keras"`` models.

    model = reszoo.create_model("resnet50", variant="keras")   # takes raw RGB pixels
    reszoo.weights.load_keras_applications(model, "~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels.h5")

The file is read by keras.applications itself (any format its ``weights=`` accepts: the
downloaded ``.h5`` files, with or without top, or ``.weights.h5``); every weighted layer is
then matched by its role in the network (stage, block, conv index: the names both libraries
give it), and its configuration (kernel, strides, padding, bias, BN epsilon) and every tensor
shape must agree. Nothing is assigned unless everything matches.
"""

import os

import keras

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
# keras.applications layer name -> reszoo layer name, where they differ.
_RENAMES = {"predictions": "fc", "bn": "post_bn"}


def _target_name(name, architecture):
    """reszoo's name for a keras.applications layer. Its v2 blocks name a BN after the conv
    it follows (``_1_bn`` after ``_1_conv``); reszoo after the conv it pre-activates (``_2_bn``)."""
    import re

    if architecture.endswith("V2"):
        match = re.fullmatch(r"(conv\d+_block\d+)_(\d)_bn", name)
        if match:
            return f"{match.group(1)}_{int(match.group(2)) + 1}_bn"
    return _RENAMES.get(name, name)
_COMPARED = {
    "Conv2D": ("kernel_size", "strides", "padding", "dilation_rate", "use_bias", "filters"),
    "Dense": ("units", "use_bias"),
    "BatchNormalization": ("epsilon", "center", "scale"),
    "BatchNorm": ("epsilon", "center", "scale"),
}


class WeightsError(ValueError):
    """Weights that cannot be loaded; the message names the layer or file."""


def create_model(architecture, weights=None, **kwargs):
    """The reszoo model that mirrors keras.applications' ``architecture`` (e.g. "ResNet50"),
    with ``weights`` (a file path or a keras.applications model) loaded when given."""
    import reszoo

    if architecture not in KERAS_APPLICATIONS:
        raise WeightsError(f"unknown keras.applications model {architecture!r}; one of {', '.join(KERAS_APPLICATIONS)}")
    model = reszoo.create_model(KERAS_APPLICATIONS[architecture][0], variant="keras", **kwargs)
    if weights is not None:
        load_keras_applications(model, weights, architecture)
    return model


def architecture_of(model):
    """The keras.applications name with ``model``'s structure: its family (ResNet v1,
    pre-activation v2, DenseNet) and its blocks per stage."""
    import re

    from reszoo.densenet import IMAGENET_BLOCKS
    from reszoo.resnet import IMAGENET_LAYERS

    names = [layer.name for layer in model.layers]
    blocks = {}
    for name in names:
        match = re.match(r"conv(\d+)_block(\d+)_", name)
        if match:
            stage, block = map(int, match.groups())
            blocks[stage] = max(blocks.get(stage, 0), block)
    layout = tuple(blocks[s] for s in sorted(blocks))
    if any(n.endswith("_concat") for n in names):
        family, depths = "DenseNet{}", {v: k for k, v in IMAGENET_BLOCKS.items()}
    else:
        family = "ResNet{}V2" if any(n.endswith("_preact_bn") for n in names) else "ResNet{}"
        depths = {v: k for k, (block, v) in IMAGENET_LAYERS.items() if block == "bottleneck"}
    architecture = family.format(depths.get(layout, "?"))
    if architecture not in KERAS_APPLICATIONS:
        raise WeightsError(f"model {model.name!r} (blocks per stage {layout}) has no keras.applications "
                           f"counterpart; one of {', '.join(KERAS_APPLICATIONS)}")
    return architecture


def _source(architecture, path, model):
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise WeightsError(f"no such weights file: {path}")
    build = getattr(keras.applications, architecture)
    shape = tuple(model.input_shape[1:])
    fc = [layer for layer in model.layers if layer.name == "fc"]
    classes = fc[0].units if fc else 1000
    errors = []
    for include_top in (True, False):
        try:
            return build(weights=path, include_top=include_top, input_shape=shape, classes=classes,
                         classifier_activation=None)
        except Exception as err:  # keras raises ValueError, OSError, KeyError... for a wrong file
            errors.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    raise WeightsError(f"{path} does not hold {architecture} weights ({errors[-1][:200]})")


def _weighted(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


def load_keras_applications(model, source, architecture=None):
    """Load keras.applications weights (a file path or a keras.applications model) into a
    reszoo ``variant="keras"`` model, in place; returns the model. Raises WeightsError naming
    the first layer that is missing, unmapped or different."""
    architecture = architecture or architecture_of(model)
    if architecture not in KERAS_APPLICATIONS:
        raise WeightsError(f"unknown keras.applications model {architecture!r}; one of {', '.join(KERAS_APPLICATIONS)}")
    src = source if isinstance(source, keras.Model) else _source(architecture, source, model)
    targets, sources = _weighted(model), _weighted(src)
    if "predictions" in sources and "fc" not in targets:
        del sources["predictions"]  # a backbone takes the weights without their classifier
    assignments = []
    for name, layer in sources.items():
        target_name = _target_name(name, architecture)
        target = targets.pop(target_name, None)
        if target is None:
            raise WeightsError(f"keras.applications layer {name!r} has no counterpart {target_name!r} in "
                               f"{model.name} (build it with variant='keras')")
        src_config, dst_config = layer.get_config(), target.get_config()
        for key in _COMPARED.get(type(layer).__name__, ()):
            if key == "padding" and tuple(src_config["kernel_size"]) == (1, 1):
                continue  # a 1x1 kernel pads nothing either way
            if _norm(src_config.get(key)) != _norm(dst_config.get(key)):
                raise WeightsError(f"layer {target_name!r}: {key} is {dst_config.get(key)!r}, keras.applications' "
                                   f"{name!r} has {src_config.get(key)!r} (build it with variant='keras')")
        values = layer.get_weights()
        for variable, value in zip(target.weights, values):
            if tuple(variable.shape) != value.shape:
                raise WeightsError(f"{variable.path}: shape {tuple(variable.shape)} != keras.applications' "
                                   f"{name} {value.shape}")
        if len(values) != len(target.weights):
            raise WeightsError(f"layer {target_name!r} has {len(target.weights)} tensors, keras.applications' "
                               f"{name!r} has {len(values)}")
        assignments.append((target, values))
    if targets:
        raise WeightsError(f"no keras.applications weights for layer(s) {', '.join(sorted(targets))} of {model.name}")
    for target, values in assignments:
        target.set_weights(values)
    return model


def _norm(value):
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, float):
        return round(value, 12)
    return value
