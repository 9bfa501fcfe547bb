"""Depth experiments on trained nets.

Degradation (He et al. 2015, Fig. 1 and 6): with the same recipe a deeper plain net trains
worse than a shallower one, while a deeper ResNet does not. Ensemble view (Veit et al. 2016,
arXiv 1605.06431): deleting one residual block from a trained ResNet barely changes its test
error, because the paths through the network do not all depend on it; deleting a layer of a
plain net destroys it.
"""

import re

import keras
import numpy as np

from reszoo import naming
from reszoo.resnet import resnet


def train_curve(model, x, y, epochs, batch_size=64, learning_rate=0.05, verbose=0):
    """Train with SGD (momentum 0.9) on integer labels; training error per epoch."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose)
    return 1.0 - np.asarray(history.history["accuracy"])


def train_nets(x, y, names, epochs, base_width=8, num_classes=None, seed=0, verbose=0, say=None):
    """CIFAR-stem nets named "resnet{depth}" or "plain{depth}", each trained from the same
    seed with ``train_curve``: ``{name: (model, training error per epoch)}``."""
    trained = {}
    for name in names:
        kind, depth = re.fullmatch(r"(resnet|plain)(\d+)", name).groups()
        if say:
            say(f"training {name}")
        keras.utils.set_random_seed(seed)
        model = resnet(int(depth), stem="cifar", residual=kind == "resnet", base_width=base_width,
                              input_shape=x.shape[1:], num_classes=num_classes or int(np.max(y)) + 1)
        trained[name] = (model, train_curve(model, x, y, epochs, verbose=verbose))
    return trained


def error(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) != y))


def blocks(model):
    """Block names (``conv{stage}_block{i}``) in depth order."""
    names = []
    for layer in model.layers:
        found = naming.block(layer.name)
        if found and naming.block_name(*found) not in names:
            names.append(naming.block_name(*found))
    return names


def without_block(model, block):
    """``model`` with ``block`` deleted. Residual block: its branch is zeroed (the last BN's
    gamma and beta), leaving the shortcut, so ``relu(x + 0) = x``. Plain block: the layers are
    skipped, the next block reading this block's input (blocks that keep the shape only).
    Returns (model, restore); call ``restore()`` to put zeroed weights back."""
    layers = model.layers
    names = [layer.name for layer in layers]
    if naming.part(block, "add") in names:
        last_bn = model.get_layer(naming.branch_layers(names, block, "bn")[-1])
        saved = last_bn.get_weights()
        zeroed = [np.zeros_like(w) if i < 2 else w for i, w in enumerate(saved)]  # gamma, beta
        last_bn.set_weights(zeroed)
        return model, lambda: last_bn.set_weights(saved)
    x = model.inputs[0]
    for layer in layers[1:]:
        if naming.block(layer.name) != naming.block(naming.part(block, "")):
            x = layer(x)
    return keras.Model(model.inputs, x), lambda: None


def deletion_errors(model, x, y):
    """Test error with each block deleted in turn: {block: error}, plus "none"."""
    errors = {"none": error(model, x, y)}
    for block in blocks(model):
        try:
            pruned, restore = without_block(model, block)
        except ValueError:  # a plain block that changes the shape cannot be skipped
            continue
        errors[block] = error(pruned, x, y)
        restore()
    return errors
