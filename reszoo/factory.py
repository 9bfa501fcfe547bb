"""The layers a builder makes, with its builder-wide hooks: convolutions, normalisation and
the classifier (``LayerFactory``), and the convolutions a weight-tied stage shares
(``SharedConvs``)."""

import dataclasses
import numbers

import keras
from keras import layers

from reszoo import naming
from reszoo.checks import check_choice, check_float
from reszoo.layers import BatchNorm


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

    def conv(self, x, filters, kernel_size, strides=1, name=None, use_bias=None, padding="same"):
        key = naming.untie(name)
        if key not in self.convs:
            self.convs[key] = self.factory.conv_layer(filters, kernel_size, strides, key, use_bias, padding)
        return self.convs[key](x)
