"""What every family's builder shares: argument checks, the conv/norm factory, input and head."""

import dataclasses
import math
import numbers
import re
import sys

import keras
from keras import layers

from reszoo import naming
from reszoo.layers import BatchNorm

# Keras builds, traces and saves functional graphs recursively: ~600+ layer nets
# (ResNet-1202, pre-act ResNet-1001) overflow Python's default limit of 1000.
_RECURSION_LIMIT = 20000


def ensure_recursion_limit():
    if sys.getrecursionlimit() < _RECURSION_LIMIT:
        sys.setrecursionlimit(_RECURSION_LIMIT)


def check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(name, value, low, high, high_inclusive=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    ok = low <= value <= high if high_inclusive else low <= value < high
    if not ok:
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value}")
    return float(value)


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_int_tuple(name, value, length=None):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a sequence of integers, got {value!r}")
    value = tuple(value)
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(value)}")
    for v in value:
        check_int(name, v, 1)
    return value


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Conv, norm and dense layers with the builder-wide hooks: normalisation (``None``
    removes every BN, for the signal-propagation experiments), BN momentum/epsilon, kernel
    initializer and regularizer. Convs followed by BN carry no bias, as in the papers
    (``conv_bias=True`` gives every conv one, as keras.applications' ResNet v1 does)."""

    norm: str = "batch"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    kernel_initializer: object = "he_normal"
    kernel_regularizer: object = None
    conv_bias: bool = False

    def __post_init__(self):
        check_choice("norm", self.norm, ("batch", None))
        check_float("bn_momentum", self.bn_momentum, 0.0, 1.0)
        if not isinstance(self.bn_epsilon, numbers.Real) or self.bn_epsilon <= 0:
            raise ValueError(f"bn_epsilon must be a positive number, got {self.bn_epsilon!r}")

    def conv_layer(self, filters, kernel_size, strides=1, name=None, use_bias=None, padding="same"):
        return layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding,
            use_bias=self.conv_bias if use_bias is None else use_bias,
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer, name=name,
        )

    def conv(self, x, filters, kernel_size, strides=1, name=None, use_bias=None, padding="same"):
        return self.conv_layer(filters, kernel_size, strides, name, use_bias, padding)(x)

    def bn(self, x, name, zero_init=False):
        if self.norm is None:
            return x
        return BatchNorm(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            gamma_initializer="zeros" if zero_init else "ones", name=name,
        )(x)

    def bn_relu(self, x, name):
        x = self.bn(x, name=f"{name}_bn")
        return layers.ReLU(name=f"{name}_relu")(x)

    def dense(self, x, units, activation=None, name=None):
        mixed = keras.config.dtype_policy().name.startswith("mixed")
        return layers.Dense(
            units, activation=activation, kernel_regularizer=self.kernel_regularizer,
            dtype="float32" if mixed else None, name=name,
        )(x)


class SharedConvs:
    """A ``LayerFactory`` whose convolutions are shared between blocks: the conv that would be
    ``conv3_block5_2_conv`` is ``conv3_tied_2_conv``, one layer for every block it serves.
    Norm layers stay per block (time-specific BN, Liao & Poggio 2016)."""

    def __init__(self, factory):
        self.factory, self.convs = factory, {}

    def __getattr__(self, name):
        return getattr(self.factory, name)

    def conv(self, x, filters, kernel_size, strides=1, name=None, use_bias=None, padding="same"):
        key = re.sub(r"_block\d+_", "_tied_", name)
        if key not in self.convs:
            self.convs[key] = self.factory.conv_layer(filters, kernel_size, strides, key, use_bias, padding)
        return self.convs[key](x)


def model_input(input_shape, input_tensor, default_shape, min_size=1):
    """``(model inputs, first tensor)``: a new ``Input`` of ``input_shape`` (default
    ``default_shape``), or, as in keras.applications, the graph that ``input_tensor`` (a
    Keras tensor, e.g. the output of a preprocessing layer) comes from. Images smaller than
    ``min_size`` (the net's total stride) on a side are refused."""
    if input_tensor is not None:
        if not keras.backend.is_keras_tensor(input_tensor):
            raise ValueError("input_tensor must be a Keras tensor (from keras.Input or a layer)")
        _check_min_size(tuple(input_tensor.shape[1:]), min_size)
        sources = keras.utils.get_source_inputs(input_tensor)
        return (sources[0] if len(sources) == 1 else sources), input_tensor
    shape = default_shape if input_shape is None else tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}")
    for dim in shape[:2]:
        if dim is not None:
            check_int("input_shape", dim, 1)
    check_int("input_shape channels", shape[2], 1)
    _check_min_size(shape, min_size)
    inputs = layers.Input(shape=shape, name="input")
    return inputs, inputs


def min_input_size(stem, stages):
    """The smallest image side a net takes: its total stride, so that the last stage sees at
    least one position computed from distinct pixels (keras.applications' 32 for ResNet-50)."""
    return (1 if stem == "cifar" else 4) * 2 ** (stages - 1)


def _check_min_size(shape, min_size):
    small = [d for d in shape[:2] if d is not None and d < min_size]
    if small:
        raise ValueError(f"images of {shape[0]}x{shape[1]} are too small for this net: it takes at least "
                         f"{min_size}x{min_size} (its total stride)")


def preprocess(x, preprocessing):
    """The ``preprocess`` layer on ``x``: keras.applications' ``preprocess_input`` by mode
    ("caffe", "tf", "torch"), or per-channel standardisation with ``{"mean", "std"}``."""
    from reszoo.layers import ImagePreprocess

    if preprocessing is None:
        return x
    if isinstance(preprocessing, str):
        return ImagePreprocess(preprocessing, name="preprocess")(x)
    if not isinstance(preprocessing, dict) or set(preprocessing) != {"mean", "std"}:
        raise ValueError('preprocessing must be None, "caffe", "tf", "torch" or {"mean": [...], "std": [...]}, '
                         f"got {preprocessing!r}")
    mean, std = (list(map(float, preprocessing[k])) for k in ("mean", "std"))
    channels = x.shape[-1]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"preprocessing needs a mean and a positive std per channel ({channels}), got "
                         f"{len(mean)} and {len(std)} values")
    return layers.Normalization(mean=mean, variance=[s * s for s in std], name="preprocess")(x)


VARIANTS = ("paper", "keras")
KERAS_BN_EPSILON = 1.001e-5


def imagenet_stem(x, f, filters, variant, pyramid, norm=True, conv_bias=None):
    """7x7/2 conv [-BN-ReLU] (stage 1's output, stride 2) + 3x3/2 max pool. The "keras"
    variant pads explicitly (3, then 1) and pools "valid", as keras.applications does; "same"
    padding samples other pixels."""
    keras_layout = variant == "keras"
    if keras_layout:
        x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = f.conv(x, filters, 7, 2, name="conv1_conv", use_bias=conv_bias,
               padding="valid" if keras_layout else "same")
    if norm:
        x = f.bn_relu(x, name="conv1")
    x = pyramid.end(x, 1, 2)
    if keras_layout:
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    pyramid.stride = 4
    return layers.MaxPooling2D(3, strides=2, padding="valid" if keras_layout else "same", name="pool1_pool")(x)


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
    """The input shape when none is given: the papers' size with a classifier, else any size
    (keras-hub's default for backbones)."""
    if features_only or not include_top:
        return (None, None, 3)
    return (32, 32, 3) if stem == "cifar" else (224, 224, 3)


def check_data_format():
    """reszoo builds channels-last models only: with a channels_first global format the
    convolutions would follow it while BatchNorm and the shortcuts normalise and pad the
    last axis, a model that runs and is wrong."""
    if keras.config.image_data_format() != "channels_last":
        raise ValueError("reszoo builds channels_last models only, and keras.config.image_data_format() is "
                         f"{keras.config.image_data_format()!r}: call keras.config.set_image_data_format("
                         "'channels_last') first (on GPUs Keras and cuDNN run channels_last at full speed)")


def outputs(x, pyramid, factory, include_top, pooling, num_classes, classifier_activation, features_only,
            out_levels):
    """The model's outputs: the pyramid's levels (``features_only``), or the head."""
    if features_only:
        return pyramid.outputs(out_levels)
    if out_levels is not None:
        raise ValueError("out_levels needs features_only=True")
    return head(x, factory, include_top, pooling, num_classes, classifier_activation)


def head(x, factory, include_top, pooling, num_classes, classifier_activation):
    """``include_top``: global average pool + dense classifier (logits by default, as in
    timm; ``classifier_activation="softmax"`` as in keras.applications). Otherwise the
    feature map, or a pooled vector when ``pooling`` is "avg" or "max"."""
    if include_top:
        check_int("num_classes", num_classes, 1)
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        return factory.dense(x, num_classes, activation=classifier_activation, name="fc")
    check_choice("pooling", pooling, (None, "avg", "max"))
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def linear_rates(max_rate, count):
    """Stochastic-depth drop rates rising linearly to ``max_rate`` at the last of ``count``
    blocks (Huang et al. 2016, Eq. 4)."""
    return [max_rate * (i + 1) / count for i in range(count)]
