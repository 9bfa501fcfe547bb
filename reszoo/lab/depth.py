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

from reszoo import diagnostics, naming
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
    """Test error over a whole test set, predicted in batches."""
    return float(np.mean(np.argmax(model.predict(x, verbose=0), -1) != y))


def blocks(model):
    """Block names (``conv{stage}_block{i}``) in depth order."""
    names = []
    for layer in model.layers:
        found = naming.block(layer.name)
        if found and naming.block_name(*found) not in names:
            names.append(naming.block_name(*found))
    return names


def without_plain_block(model, block):
    """``model`` with the plain block ``block`` deleted: its layers are skipped, the next block
    reading this block's input (blocks that keep the shape only)."""
    x = model.inputs[0]
    for layer in model.layers[1:]:
        if naming.block(layer.name) != naming.block(naming.part(block, "")):
            x = layer(x)
    return keras.Model(model.inputs, x)


def deletion_errors(model, x, y):
    """Test error with each block deleted in turn: {block: error}, plus "none". A residual
    block's merge returns its skip alone (``reszoo.diagnostics.lesion_errors``, so
    ``relu(x + 0) = relu(x)``); a plain block is skipped."""
    found = diagnostics.structure(model)
    if found.blocks:
        errors = diagnostics.lesion_errors(model, found, x, y)
        return {name if name == "none" else naming.block_name(*naming.block(name)): e for name, e in errors.items()}
    errors = {"none": error(model, x, y)}
    for block in blocks(model):
        try:
            errors[block] = error(without_plain_block(model, block), x, y)
        except ValueError:  # a plain block that changes the shape cannot be skipped
            continue
    return errors
