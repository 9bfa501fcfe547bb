"""The linear toys of residual-learning theory (numpy only).

Deep linear nets: the spectrum of W^L collapses (or explodes) geometrically with depth, while
(I + W)^L for small W stays near 1 (Hardt & Ma 2017, "Identity matters in deep learning").
Two weights, one input: f(x) = w2 w1 x fitted to y = x has a saddle at the origin (gradient 0,
Hessian eigenvalues -1 and +1, loss 1/2); with a skip connection, f(x) = x + w2 w1 x, the
origin is a global minimum of the same loss (loss 0).
"""

import numpy as np


def product_spectra(width=16, depth=50, scale=0.05, seed=0):
    """|eigenvalues| of W^L and of (I + W)^L for one random W with entries N(0, scale^2/width)
    per layer (a different W each layer), sorted descending."""
    rng = np.random.default_rng(seed)
    plain = residual = np.eye(width)
    for _ in range(depth):
        w = rng.normal(0, scale / np.sqrt(width), (width, width))
        plain = w @ plain
        residual = (np.eye(width) + w) @ residual
    eig = lambda m: np.sort(np.abs(np.linalg.eigvals(m)))[::-1]
    return eig(plain), eig(residual)


def two_weight_loss(w1, w2, skip):
    """Loss 1/2 E(f(x) - x)^2 with E x^2 = 1, for f = w2 w1 x (+ x with the skip)."""
    gain = w2 * w1 + (1.0 if skip else 0.0)
    return 0.5 * (gain - 1.0) ** 2


def hessian_at_origin(skip, eps=1e-4):
    """Finite-difference Hessian of ``two_weight_loss`` at (0, 0), and its gradient there."""
    f = lambda w: two_weight_loss(w[0], w[1], skip)
    h = np.zeros((2, 2))
    g = np.zeros(2)
    for i in range(2):
        e_i = np.eye(2)[i] * eps
        g[i] = (f(e_i) - f(-e_i)) / (2 * eps)
        for j in range(2):
            e_j = np.eye(2)[j] * eps
            h[i, j] = (f(e_i + e_j) - f(e_i - e_j) - f(-e_i + e_j) + f(-e_i - e_j)) / (4 * eps**2)
    return g, h
