"""Loss landscape slices (Li, Xu, Taylor, Studer, Goldstein 2018, arXiv 1712.09913).

Directions are filter-normalised: a Gaussian direction with each filter (output channel of a
kernel) rescaled to the norm of the corresponding filter of the weights, and zero on biases
and BN parameters, so that slices of nets with different weight scales compare. The loss is
L(w + a d1 + b d2) on a fixed batch, BN in inference mode.
"""

import keras
import numpy as np

from reszoo.lab.depth import train_nets


def filter_normalized_direction(model, seed=0):
    """One direction per trainable variable (numpy arrays, same order)."""
    rng = np.random.default_rng(seed)
    direction = []
    for v in model.trainable_variables:
        w = np.asarray(v)
        if w.ndim < 2:
            direction.append(np.zeros_like(w))
            continue
        d = rng.normal(size=w.shape).astype(w.dtype)
        axes = tuple(range(w.ndim - 1))
        norm = lambda a: np.sqrt(np.sum(np.square(a), axis=axes, keepdims=True))
        d *= norm(w) / (norm(d) + 1e-12)
        direction.append(d)
    return direction


def loss_at(model, x, y):
    logits = model.predict(x, verbose=0, batch_size=len(x))
    return float(keras.ops.convert_to_numpy(
        keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)).mean())


def surface(model, x, y, alphas, betas=None, seed=0):
    """Losses on the grid ``alphas`` (x ``betas``, for 2-D) around the current weights:
    shape (len(alphas),) or (len(betas), len(alphas)). The weights are restored after."""
    variables = model.trainable_variables
    origin = [np.asarray(v) for v in variables]
    d1 = filter_normalized_direction(model, seed)
    d2 = filter_normalized_direction(model, seed + 1) if betas is not None else None
    losses = np.zeros((1 if betas is None else len(betas), len(alphas)))
    try:
        for j, b in enumerate([0.0] if betas is None else betas):
            for i, a in enumerate(alphas):
                for k, v in enumerate(variables):
                    v.assign(origin[k] + a * d1[k] + (b * d2[k] if d2 is not None else 0))
                losses[j, i] = loss_at(model, x, y)
    finally:
        for v, w in zip(variables, origin):
            v.assign(w)
    return losses[0] if betas is None else losses


def compare(x, y, depth, epochs, steps, samples=512, base_width=8, num_classes=None, seed=0, say=None):
    """ResNet and plain nets of ``depth`` trained alike (``reszoo.lab.depth.train_nets``),
    then sliced along ``steps`` in 1-D and on a ``steps`` x ``steps`` grid on the first
    ``samples`` training examples: ``{name: {"1d": [...], "2d": [[...]]}}``."""
    xs, ys = x[:samples], y[:samples]
    results = {}
    for name, (model, _) in train_nets(x, y, (f"resnet{depth}", f"plain{depth}"), epochs, base_width,
                                        num_classes, seed, say=say).items():
        if say:
            say(f"slicing {name}: 1-D, then a {len(steps)}x{len(steps)} grid")
        results[name] = {"1d": surface(model, xs, ys, steps).tolist(),
                         "2d": surface(model, xs, ys, steps, steps).tolist()}
    return results
