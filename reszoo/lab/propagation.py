"""Signal propagation at initialisation.

He et al. 2016 (arXiv 1603.05027), Eq. 5: with identity shortcuts, dL/dx_l = dL/dx_L (1 +
d/dx_l sum F), so the gradient reaches early layers through the "1" term undiminished.
Without normalisation, x_{l+1} = x_l + F(x_l) with a variance-preserving branch doubles the
activation variance every block; scaling the sum by 1/sqrt(2) keeps it flat, and a learnable
branch scale at 0 (SkipInit/ReZero) makes each block the identity.
"""

import keras
import numpy as np

from reszoo import diagnostics, naming


def conv_kernels(model):
    """Conv kernels in depth order (the stem first, shortcut projections left out)."""
    return [v for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
            and not naming.is_shortcut(layer.name) for v in layer.weights if v.path.endswith("kernel")]


def gradient_norms(model, x, y):
    """Frobenius norm of dL/dW for every conv kernel, first layer to last, for softmax
    cross-entropy on ``(x, y)`` in training mode (BN with batch statistics), through
    ``reszoo.diagnostics.gradients`` (the callback's own measurement)."""
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return np.array([float(np.linalg.norm(g)) for g in diagnostics.gradients(model, loss, x, y, conv_kernels(model))])


def block_outputs(model, x):
    """Outputs of every residual block (the layer ending a block, ``reszoo.naming``: ``out``
    post-activation, ``sqrt2`` if scaled, else ``add``), in depth order, as numpy arrays."""
    ends = {}
    for layer in model.layers:
        if naming.block_end(layer.name):
            ends[naming.block(layer.name)] = layer  # the last of a block's ends wins
    probe = keras.Model(model.inputs, [layer.output for layer in ends.values()])
    return [np.asarray(o) for o in probe.predict(x, verbose=0)]


def block_second_moments(model, x):
    """Mean squared activation after each block, divided by that of the first block's input
    (the stem's output). Use one stage (``layers=(L,)``) to leave out downsampling blocks,
    whose zero-padded or projected shortcuts change the scale by themselves."""
    stem = model.get_layer(naming.stage_end(naming.STEM))
    first = keras.Model(model.inputs, stem.output).predict(x, verbose=0)
    base = float(np.mean(np.square(first)))
    return np.array([float(np.mean(np.square(o))) / base for o in block_outputs(model, x)])
