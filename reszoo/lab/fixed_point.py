"""The fixed-point view of a weight-tied residual stage.

A stage built with ``weight_tied=True`` applies one block T K times, x_{k+1} = T(x_k); for the
post-activation block T(x) = relu(x + F(x)). If T is nonexpansive (Lipschitz constant c <= 1)
the updates never grow, ||x_{k+2} - x_{k+1}|| = ||T(x_{k+1}) - T(x_k)|| <= c ||x_{k+1} - x_k||,
and for c < 1 they shrink geometrically to T's unique fixed point (Banach).

A small branch is not enough: T = I + F has Lipschitz constant about 1 or more for a generic F
however small. The branch must be contractive in the sense of contraction theory (Lohmiller &
Slotine 1998): its Jacobian's symmetric part negative semi-definite, so that the residual
update is a damped step. The symmetric branch of Haber & Ruthotto 2017 (arXiv 1705.03341),
F(x) = -h W^T relu(W x), is one: it is -h grad E for the convex E(x) = 1/2 ||relu(W x)||^2, so
with h ||W||^2 <= 2 the block is a projected gradient step on E, which is nonexpansive.
"""

import keras
import numpy as np
from keras import ops

from reszoo import naming
from reszoo.lab.jacobian import jacobian


def shared_block(model, stage=2):
    """The weight-tied block of ``stage`` (``conv{stage}_tied``) of a ``weight_tied`` ResNet."""
    return model.get_layer(naming.tied(stage))


def iterate(block, x, steps):
    """Apply ``block`` ``steps`` times from ``x``; per-image update norms ||x_{k+1} - x_k||,
    shape (steps, batch)."""
    x = ops.convert_to_tensor(np.asarray(x, "float32"))
    norms = []
    for _ in range(steps):
        nxt = block(x, training=False)
        norms.append(ops.convert_to_numpy(ops.sqrt(ops.sum(ops.square(nxt - x), axis=(1, 2, 3)))))
        x = nxt
    return np.stack(norms)


def local_lipschitz(block, x):
    """Largest singular value of T's Jacobian at one image ``x`` (exact for ReLU nets away
    from kinks): the local Lipschitz constant of the block map."""
    return float(np.linalg.svd(jacobian(block, x), compute_uv=False)[0])


def conv_adjoint(kernel):
    """Kernel of the adjoint of a stride-1 "same" convolution: flipped in space, in and out
    channels swapped."""
    return np.flip(np.asarray(kernel), (0, 1)).transpose(0, 1, 3, 2)


def conv_norm(kernel, shape, iterations=100, seed=0):
    """Spectral norm of the stride-1 "same" convolution by ``kernel`` on maps of ``shape``
    (height, width, channels), by power iteration on W^T W."""
    kernel = ops.convert_to_tensor(np.asarray(kernel, "float32"))
    adjoint = ops.convert_to_tensor(conv_adjoint(kernel).astype("float32"))
    v = np.random.default_rng(seed).normal(size=(1, *shape)).astype("float32")
    v = ops.convert_to_tensor(v / np.linalg.norm(v))
    sigma2 = 0.0
    for _ in range(iterations):
        w = ops.conv(ops.conv(v, kernel, padding="same"), adjoint, padding="same")
        sigma2 = float(ops.convert_to_numpy(ops.sqrt(ops.sum(ops.square(w)))))
        v = w / sigma2
    return float(np.sqrt(sigma2))


def make_gradient_branch(block, shape, step=1.0):
    """Set the basic block's second conv to -h W^T with h = ``step`` / ||W||^2, W its first
    conv (norm=None, post-activation), so that F(x) = -h grad E(x): the branch is
    contractive and T nonexpansive for ``step`` in (0, 2]. Returns h."""
    name = block.name
    first, second = block.get_layer(f"{name}_1_conv"), block.get_layer(f"{name}_2_conv")
    if first.use_bias or second.use_bias or any(isinstance(l, keras.layers.BatchNormalization)
                                                for l in block.layers):
        raise ValueError("make_gradient_branch needs a block without BN and conv biases (norm=None)")
    w = np.asarray(first.kernel)
    h = step / conv_norm(w, shape) ** 2
    second.kernel.assign(-h * conv_adjoint(w))
    return h
