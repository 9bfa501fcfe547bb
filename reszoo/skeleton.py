"""The skeleton every family's model shares around its stages: input, preprocessing, stem,
the pyramid of stage outputs, and the head (``assemble``), with the options that describe
them (``ModelIO``, and ``LayerFactory``'s hooks)."""

import dataclasses
import difflib
import math
import sys

import keras
from keras import layers

from reszoo import layout, naming
from reszoo.checks import check_choice, check_int
from reszoo.factory import LayerFactory
from reszoo.layers import ImagePreprocess
from reszoo.model import ZooModel

# Keras builds, traces and saves functional graphs recursively: ~600+ layer nets
# (ResNet-1202, pre-act ResNet-1001) overflow Python's default limit of 1000.
_RECURSION_LIMIT = 20000
VARIANTS = ("paper", "keras")
KERAS_BN_EPSILON = 1.001e-5
STEMS = ("cifar", "imagenet", "deep")


@dataclasses.dataclass(frozen=True)
class ModelIO:
    """What goes into a model and what comes out, the same for every family.

    ``num_classes``, ``input_shape``, ``input_tensor``, ``include_top``, ``pooling``,
    ``classifier_activation`` and ``name`` are keras.applications'; without the classifier
    (or with ``features_only``) the default input size is free, ``(None, None, 3)``. As in
    keras.applications, ``input_shape`` and every tensor follow
    ``keras.config.image_data_format()`` when the model is built: ``(3, 224, 224)``
    channels-first.
    ``features_only`` / ``out_levels``: a backbone whose output is a dict of stage outputs
    keyed by level, "Pk" at stride 2**k (``Pyramid``; keras-hub's ``pyramid_outputs``), all
    levels or those in ``out_levels``. ``preprocessing``: the model's first layer, so it takes
    raw pixels: None, "caffe", "tf" or "torch" (keras.applications' ``preprocess_input``), or
    ``{"mean": [...], "std": [...]}`` per channel; "auto" is the family's default (that of
    keras.applications for ``variant="keras"``, else None). timm's spellings work too:
    ``num_classes=0`` is no classifier, pooled features out; ``global_pool`` ("avg", "max",
    "avgmax", "catavgmax", or "" for the unpooled map) pools before the classifier or in its
    place."""

    num_classes: int = None
    global_pool: str = None
    input_shape: tuple = None
    input_tensor: object = None
    include_top: bool = True
    pooling: str = None
    classifier_activation: object = None
    features_only: bool = False
    out_levels: tuple = None
    preprocessing: object = "auto"
    name: str = None


# LayerFactory's hooks a builder takes (conv_bias is the family's own choice).
HOOKS = ("norm", "bn_momentum", "bn_epsilon", "kernel_initializer", "kernel_regularizer", "padding")
OPTIONS = tuple(field.name for field in dataclasses.fields(ModelIO)) + HOOKS


def split_options(options, *, variant, stem, preprocessing, conv_bias=False):
    """A builder's ``**options`` as ``(ModelIO, LayerFactory)``: unknown names are a
    ValueError with the closest ones; the family's defaults fill ``preprocessing="auto"``,
    ``num_classes`` (10 for CIFAR, 1000 for ImageNet) and ``bn_epsilon`` (1.001e-5 for the
    "keras" variant, else 1e-5)."""
    check_choice("stem", stem, STEMS)
    check_choice("variant", variant, VARIANTS)
    unknown = [key for key in options if key not in OPTIONS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], OPTIONS, n=3, cutoff=0.5)
        raise TypeError(f"unexpected argument {unknown[0]!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    hooks = {key: options[key] for key in HOOKS if key in options}
    if hooks.get("bn_epsilon") is None:
        hooks["bn_epsilon"] = KERAS_BN_EPSILON if variant == "keras" else 1e-5
    io = ModelIO(**{key: value for key, value in options.items() if key not in HOOKS})
    if io.preprocessing == "auto":
        io = dataclasses.replace(io, preprocessing=preprocessing)
    if io.num_classes is None:
        io = dataclasses.replace(io, num_classes=10 if stem == "cifar" else 1000)
    return _timm_head(io), LayerFactory(**hooks, conv_bias=conv_bias)


def _timm_head(io):
    """timm's ``num_classes=0`` and ``global_pool`` as Keras' ``include_top`` and ``pooling``."""
    if io.global_pool is not None:
        check_choice("global_pool", io.global_pool, ("", *naming.POOLED))
        if io.pooling is not None and io.pooling != io.global_pool:
            raise ValueError(f"pooling={io.pooling!r} and global_pool={io.global_pool!r} disagree: give one")
        if io.global_pool == "" and io.include_top and io.num_classes:
            raise ValueError("global_pool='' leaves the feature map unpooled: give num_classes=0 (or "
                             "include_top=False) too")
    if io.num_classes == 0 and not io.features_only:
        io = dataclasses.replace(io, include_top=False, pooling="avg" if io.global_pool is None else io.global_pool)
    pooling = io.global_pool if io.global_pool is not None and not io.include_top else io.pooling
    return dataclasses.replace(io, pooling=pooling or None)


def assemble(io, f, stem, stages, body, default_name):
    """The model: input (``io``), preprocessing, ``body(x, pyramid)`` (the family's stem and
    stages, marking each stage's output in ``pyramid``), then the pyramid's levels
    (``features_only``) or the head."""
    ensure_recursion_limit()
    inputs, x = model_input(io.input_shape, io.input_tensor, default_input(stem, io.include_top, io.features_only),
                            min_input_size(stem, stages))
    x = preprocess(x, io.preprocessing)
    pyramid = Pyramid()
    x = body(x, pyramid)
    if io.features_only:
        outputs = pyramid.outputs(io.out_levels)
    else:
        if io.out_levels is not None:
            raise ValueError("out_levels needs features_only=True")
        outputs = head(x, f, io.include_top, io.pooling if not io.include_top else (io.global_pool or "avg"),
                       io.num_classes, io.classifier_activation)
    return ZooModel(inputs, outputs, name=io.name or default_name)


def ensure_recursion_limit():
    if sys.getrecursionlimit() < _RECURSION_LIMIT:
        sys.setrecursionlimit(_RECURSION_LIMIT)


def model_input(input_shape, input_tensor, default_shape, min_size=1):
    """``(model inputs, first tensor)``: a new ``Input`` of ``input_shape`` (default
    ``default_shape``), or, as in keras.applications, the graph that ``input_tensor`` (a
    Keras tensor, e.g. the output of a preprocessing layer) comes from. Images smaller than
    ``min_size`` (the net's total stride) on a side are refused."""
    if input_tensor is not None:
        if not keras.backend.is_keras_tensor(input_tensor):
            raise ValueError("input_tensor must be a Keras tensor (from keras.Input or a layer)")
        _check_min_size(layout.spatial(input_tensor.shape), min_size)
        sources = keras.utils.get_source_inputs(input_tensor)
        return (sources[0] if len(sources) == 1 else sources), input_tensor
    shape = layout.image_shape(*default_shape) if input_shape is None else tuple(input_shape)
    if len(shape) != 3:
        spelled = "(height, width, channels)" if layout.current() == layout.LAST else "(channels, height, width)"
        raise ValueError(f"input_shape must be {spelled} ({layout.current()}), got {input_shape!r}")
    for dim in layout.spatial((None, *shape)):
        if dim is not None:
            check_int("input_shape", dim, 1)
    check_int("input_shape channels", layout.channels((None, *shape)), 1)
    _check_min_size(layout.spatial((None, *shape)), min_size)
    inputs = layers.Input(shape=shape, name="input")
    return inputs, inputs


def min_input_size(stem, stages):
    """The smallest image side a net takes: its total stride, so that the last stage sees at
    least one position computed from distinct pixels (keras.applications' 32 for ResNet-50)."""
    return (1 if stem == "cifar" else 4) * 2 ** (stages - 1)


def _check_min_size(spatial, min_size):
    small = [d for d in spatial if d is not None and d < min_size]
    if small:
        raise ValueError(f"images of {spatial[0]}x{spatial[1]} are too small for this net: it takes at least "
                         f"{min_size}x{min_size} (its total stride)")


def preprocess(x, preprocessing):
    """The ``preprocess`` layer on ``x``: keras.applications' ``preprocess_input`` by mode
    ("caffe", "tf", "torch"), or per-channel standardisation with ``{"mean", "std"}``."""
    if preprocessing is None:
        return x
    if isinstance(preprocessing, str):
        return ImagePreprocess(preprocessing, name=naming.PREPROCESS)(x)
    if not isinstance(preprocessing, dict) or set(preprocessing) != {"mean", "std"}:
        raise ValueError('preprocessing must be None, "caffe", "tf", "torch" or {"mean": [...], "std": [...]}, '
                         f"got {preprocessing!r}")
    mean, std = (list(map(float, preprocessing[k])) for k in ("mean", "std"))
    channels = layout.channels(x.shape)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"preprocessing needs a mean and a positive std per channel ({channels}), got "
                         f"{len(mean)} and {len(std)} values")
    return layers.Normalization(axis=layout.channel_axis(), mean=mean, variance=[s * s for s in std],
                                name=naming.PREPROCESS)(x)


def cifar_stem(x, f, filters, pyramid, norm=True):
    """3x3 conv [-BN-ReLU] at stride 1: stage 1's output."""
    x = f.conv(x, filters, 3, name=naming.STEM_CONV)
    if norm:
        x = f.bn_relu(x, name=naming.stage_name(naming.STEM))
    return pyramid.end(x, naming.STEM, 1)


def imagenet_stem(x, f, filters, variant, pyramid, norm=True, conv_bias=None):
    """7x7/2 conv [-BN-ReLU] (stage 1's output, stride 2) + 3x3/2 max pool. The "keras"
    variant pads explicitly (3, then 1) and pools "valid", as keras.applications does; "same"
    padding samples other pixels."""
    keras_layout = variant == "keras"
    if keras_layout:
        x = layers.ZeroPadding2D(3, name=naming.layer(naming.stage_name(naming.STEM), None, "pad"))(x)
    x = f.conv(x, filters, 7, 2, name=naming.STEM_CONV, use_bias=conv_bias,
               padding="valid" if keras_layout else "same")
    if norm:
        x = f.bn_relu(x, name=naming.stage_name(naming.STEM))
    x = pyramid.end(x, naming.STEM, 2)
    if keras_layout:
        x = layers.ZeroPadding2D(1, name=naming.layer(naming.transition(naming.STEM), None, "pad"))(x)
    pyramid.stride = 4
    if keras_layout:
        return layers.MaxPooling2D(3, strides=2, padding="valid", name=naming.STEM_POOL)(x)
    return f.max_pool(x, naming.STEM_POOL, nonnegative=norm)


def deep_stem(x, f, filters, pyramid, norm=True):
    """Three 3x3 convs, the first at stride 2, of ``filters // 2``, ``filters // 2`` and
    ``filters`` maps [-BN-ReLU] (stage 1's output, stride 2) + 3x3/2 max pool: the "deep stem"
    of ResNet-C/D (He et al. 2019, Bag of Tricks, Fig. 2b; timm's ``stem_type="deep"``)."""
    stem = naming.stage_name(naming.STEM)
    for j, (width, stride) in enumerate(((filters // 2, 2), (filters // 2, 1), (filters, 1)), start=1):
        x = f.conv(x, width, 3, stride, name=naming.layer(stem, j, "conv"))
        if j < 3:
            x = f.bn_relu(x, name=naming.part(stem, str(j)))
    if norm:
        x = f.bn_relu(x, name=stem)
    x = pyramid.end(x, naming.STEM, 2)
    pyramid.stride = 4
    return f.max_pool(x, naming.STEM_POOL, nonnegative=norm)


class Pyramid:
    """Each stage's output, marked by an identity layer ``conv{s}_end`` on the main path
    (``reszoo.naming``), with its stride: the maps a detection or segmentation head reads.
    Level "Pk" is the map at stride 2**k (keras-hub's ``pyramid_outputs``); where two stages
    share a stride (a CIFAR stem and its first stage, or the last two stages of
    keras.applications' ResNetV2, which downsamples at the end of a stage), the later stage
    is the level."""

    def __init__(self):
        self.ends, self.stride = [], 1

    def end(self, x, stage, stride):
        x = layers.Identity(name=naming.stage_end(stage))(x)
        self.ends.append((stage, stride, x))
        self.stride = stride
        return x

    def levels(self):
        return {level_name(stride): x for _, stride, x in self.ends}

    def outputs(self, out_levels=None):
        levels = self.levels()
        if out_levels is None:
            return levels
        if isinstance(out_levels, str) or not all(isinstance(k, str) for k in out_levels):
            raise ValueError(f"out_levels must be a list of level names such as ['P3', 'P4'], got {out_levels!r}")
        missing = [k for k in out_levels if k not in levels]
        if missing:
            raise ValueError(f"out_levels {missing} are not levels of this model; it has {list(levels)}")
        return {k: levels[k] for k in out_levels}


def level_name(stride):
    """"Pk" for a map at stride 2**k."""
    return f"P{int(round(math.log2(stride)))}"


def default_input(stem, include_top, features_only):
    """The input shape when none is given, as (height, width, channels): the papers' size with
    a classifier, else any size (keras-hub's default for backbones)."""
    if features_only or not include_top:
        return (None, None, 3)
    return (32, 32, 3) if stem == "cifar" else (224, 224, 3)


def head(x, factory, include_top, pooling, num_classes, classifier_activation):
    """``include_top``: global pool (average by default; timm's ``global_pool`` otherwise) +
    dense classifier (logits by default, as in timm; ``classifier_activation="softmax"`` as in
    keras.applications). Otherwise the feature map, or a pooled vector (``pooling``)."""
    if include_top:
        check_int("num_classes", num_classes, 1)
        return factory.classifier(global_pool(x, pooling), num_classes, classifier_activation)
    check_choice("pooling", pooling, (None, *naming.POOLED))
    return x if pooling is None else global_pool(x, pooling)


def global_pool(x, kind, data_format=None):
    """timm's ``SelectAdaptivePool2d`` over the whole map: "avg", "max", "avgmax" (their mean)
    or "catavgmax" (both, concatenated), into the layer ``naming.POOLED[kind]``."""
    average = layers.GlobalAveragePooling2D(data_format, name=naming.AVG_POOL) if kind != "max" else None
    maximum = layers.GlobalMaxPooling2D(data_format, name=naming.MAX_POOL) if kind != "avg" else None
    if kind == "avg":
        return average(x)
    if kind == "max":
        return maximum(x)
    merge = layers.Average if kind == "avgmax" else layers.Concatenate
    return merge(name=naming.POOLED[kind])([average(x), maximum(x)])
