"""The layers a builder makes, with its builder-wide hooks: convolutions, normalisation and
the classifier (``LayerFactory``), the convolutions a weight-tied stage shares
(``SharedConvs``), and builds whose weights are loaded next (``weights_to_come``)."""

import contextlib
import contextvars
import dataclasses
import numbers

import keras
from keras import layers

from reszoo import layout, naming
from reszoo.checks import check_choice, check_float
from reszoo.layers import BatchNorm, Pad2D

PADDINGS = ("same", "symmetric")

# The convolutions made inside ``weights_to_come``, with their configured kernel initializers.
_DEFERRED = contextvars.ContextVar("reszoo_weights_to_come", default=None)


@contextlib.contextmanager
def weights_to_come():
    """Convolutions built inside start with zero kernels instead of drawing random ones, and
    get their configured initializer back (their config is unchanged) when the block ends: for
    a model whose weights are all assigned next, where drawing ResNet-50's 23M He-normal
    numbers takes longer than reading them. The classifier keeps its own initialisation, since
    a load with other classes keeps a new one."""
    made = []
    token = _DEFERRED.set(made)
    try:
        yield
    finally:
        _DEFERRED.reset(token)
        for layer, initializer in made:
            layer.kernel_initializer = initializer


@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Conv, norm and dense layers with the builder-wide hooks: normalisation (``None``
    removes every BN, for the signal-propagation experiments), BN momentum/epsilon, kernel
    initializer and regularizer, and padding: Keras' "same", or "symmetric" (PyTorch's k // 2
    on every side, explicit before strided convs, so that timm's and torchvision's weights give
    their outputs at every input size). Convs followed by BN carry no bias, as in the papers
    (``conv_bias=True`` gives every conv one, as keras.applications' ResNet v1 does)."""

    norm: str = "batch"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    kernel_initializer: object = "he_normal"
    kernel_regularizer: object = None
    conv_bias: bool = False
    padding: str = "same"

    def __post_init__(self):
        check_choice("norm", self.norm, ("batch", None))
        check_choice("padding", self.padding, PADDINGS)
        check_float("bn_momentum", self.bn_momentum, 0.0, 1.0)
        if not isinstance(self.bn_epsilon, numbers.Real) or self.bn_epsilon <= 0:
            raise ValueError(f"bn_epsilon must be a positive number, got {self.bn_epsilon!r}")

    def conv_layer(self, filters, kernel_size, strides=1, name=None, use_bias=None, padding="same", groups=1,
                   activation=None):
        layer = layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, groups=groups, activation=activation,
            use_bias=self.conv_bias if use_bias is None else use_bias,
            kernel_initializer=self.kernel_initializer,
            kernel_regularizer=self.kernel_regularizer, name=name,
        )
        deferred = _DEFERRED.get()
        if deferred is not None:
            deferred.append((layer, layer.kernel_initializer))
            layer.kernel_initializer = keras.initializers.Zeros()
        return layer

    def conv(self, x, filters, kernel_size, strides=1, name=None, use_bias=None, padding="same", groups=1,
             activation=None):
        if padding == "same" and self.padding == "symmetric" and strides > 1 and kernel_size > 1:
            x = Pad2D(kernel_size // 2, name=naming.pad_of(name))(x)
            padding = "valid"
        return self.conv_layer(filters, kernel_size, strides, name, use_bias, padding, groups, activation)(x)

    def max_pool(self, x, name, size=3, strides=2, nonnegative=False):
        """``size`` x ``size`` max pool at ``strides``, padded as the convolutions are (with
        -inf where explicit, as PyTorch pads a pool; with 0 when ``x`` is a ReLU's output,
        which gives the same maxima and a graph int8 can quantize: -inf makes a range of
        infinite width)."""
        if self.padding == "symmetric":
            x = Pad2D(size // 2, value=0.0 if nonnegative else float("-inf"), name=naming.pad_of(name))(x)
            return layers.MaxPooling2D(size, strides, padding="valid", name=name)(x)
        return layers.MaxPooling2D(size, strides, padding="same", name=name)(x)

    def bn(self, x, name, zero_init=False):
        if self.norm is None:
            return x
        return BatchNorm(
            axis=layout.channel_axis(), momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            gamma_initializer="zeros" if zero_init else "ones", name=name,
        )(x)

    def bn_relu(self, x, name):
        x = self.bn(x, name=naming.part(name, "bn"))
        return layers.ReLU(name=naming.part(name, "relu"))(x)

    def dense(self, x, units, activation=None, name=None):
        mixed = keras.config.dtype_policy().name.startswith("mixed")
        return layers.Dense(
            units, activation=activation, kernel_regularizer=self.kernel_regularizer,
            dtype="float32" if mixed else None, name=name,
        )(x)

    def classifier(self, features, num_classes, activation=None):
        """The classifier ``fc`` (``reszoo.naming.CLASSIFIER``) on pooled features, float32
        under a mixed dtype policy."""
        return self.dense(features, num_classes, activation=activation, name=naming.CLASSIFIER)


class SharedConvs:
    """A ``LayerFactory`` whose convolutions are shared between blocks: the conv that would be
    ``conv3_block5_2_conv`` is ``conv3_tied_2_conv`` (``reszoo.naming.untie``), one layer for
    every block it serves. Norm layers stay per block (time-specific BN, Liao & Poggio 2016)."""

    def __init__(self, factory):
        self.factory, self.convs = factory, {}

    def __getattr__(self, name):
        return getattr(self.factory, name)

    def conv(self, x, filters, kernel_size, strides=1, name=None, use_bias=None, padding="same", groups=1,
             activation=None):
        key = naming.untie(name)
        if key not in self.convs:
            self.convs[key] = self.factory.conv_layer(filters, kernel_size, strides, key, use_bias, padding, groups,
                                                      activation)
        return self.convs[key](x)
