"""Near-identity blocks (Hardt & Ma 2017; Weyl's inequality): if the residual branch's
Jacobian J_F has spectral norm at most eps, every singular value of the block's Jacobian
I + J_F lies in [1 - eps, 1 + eps]. A plain block (F alone) has no such floor."""

import keras
import numpy as np

from reszoo import naming
from reszoo.factory import LayerFactory
from reszoo.resnet import BlockOptions, pre_activation_block


def jacobian(model, x, step=1e-3):
    """Central-difference Jacobian of ``model`` (one image in, one map out) at ``x``, as a
    (outputs, inputs) matrix. Exact up to rounding for piecewise-linear (ReLU) nets."""
    x = np.asarray(x, "float64")
    eye = np.eye(x.size).reshape(x.size, *x.shape) * step
    batch = np.concatenate([x + eye, x - eye]).astype("float32")
    out = np.asarray(model.predict(batch, verbose=0, batch_size=256), "float64").reshape(2, x.size, -1)
    return ((out[0] - out[1]) / (2 * step)).T


def block_spectra(eps=0.1, shape=(4, 4, 4), seed=0):
    """Singular values of a pre-activation basic branch F at He init, of F scaled so that
    ||J_F||_2 = eps, and of the residual block x + F(x) with that branch (no normalisation)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    opts = BlockOptions(residual=False, preact=True)
    branch = keras.Model(inputs, pre_activation_block(inputs, shape[-1], 1, opts, LayerFactory(norm=None),
                                                      name="b"))
    x = np.random.default_rng(seed).normal(size=shape)
    plain = np.linalg.svd(jacobian(branch, x), compute_uv=False)
    last = branch.get_layer(naming.layer("b", 2, "conv"))
    last.kernel.assign(last.kernel * (eps / plain[0]))  # F is linear in its last kernel
    scaled = np.linalg.svd(jacobian(branch, x), compute_uv=False)
    block = keras.Model(inputs, keras.layers.Add()([inputs, branch(inputs)]))
    residual = np.linalg.svd(jacobian(block, x), compute_uv=False)
    return plain, scaled, residual
