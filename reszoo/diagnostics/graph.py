"""The residual structure of a functional Keras model, found in its graph: every ``Add`` (or
DenseNet's ``Concatenate``) of two tensors is a block, its branch the input with the longer path
from the model's input; stages are runs of blocks at one spatial size (layer names by
``reszoo.naming`` where they follow it)."""

import dataclasses

import keras
import numpy as np

from reszoo import layout, naming


@dataclasses.dataclass(frozen=True)
class Block:
    """A residual block: its merge layer, the skip and branch tensors it merges, its stage."""

    name: str
    stage: int
    skip: object
    branch: object
    layer: object
    skip_index: int


@dataclasses.dataclass(frozen=True)
class Structure:
    """Blocks in depth order, each conv kernel's stage (0: the stem), BatchNorm layers per stage."""

    blocks: tuple
    kernels: tuple  # (stage, variable)
    norms: tuple  # (stage, layer)
    stages: tuple  # stage indices, in order


def _tensors(value):
    """The Keras tensors of a layer's ``input`` or ``output`` (a tensor, or a nest of them)."""
    return [t for t in keras.tree.flatten(value) if isinstance(t, keras.KerasTensor)]


def _graph(model):
    """``(producers, lengths)``: each tensor's producing layer, and the longest path (in
    layers) from the model's inputs to it, by id; through Keras' public ``layer.input`` and
    ``layer.output`` (a layer called more than once, which has neither, ends no path)."""
    producers, lengths = {}, {id(t): 0 for t in model.inputs}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            inputs, outputs = _tensors(layer.input), _tensors(layer.output)
        except (AttributeError, ValueError):  # a shared layer: several inbound nodes
            continue
        reached = [lengths[id(t)] for t in inputs if id(t) in lengths]
        if inputs and not reached:
            continue
        depth = 1 + max(reached, default=0)
        for t in outputs:
            producers[id(t)] = layer
            lengths[id(t)] = max(lengths.get(id(t), 0), depth)
    return producers, lengths


def _spatial(tensor, data_format):
    shape = tuple(tensor.shape)
    return layout.spatial(shape, data_format) if len(shape) == 4 else None


def structure(model):
    """The residual structure of a functional ``model``: a ``Structure``. A model without
    merges (a plain net) has no blocks; its stages come from the naming rule."""
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError("reszoo.diagnostics needs a functional Keras model (built from keras.Input)")
    producers, lengths = _graph(model)
    merges = [layer for layer in model.layers if isinstance(layer, (keras.layers.Add, keras.layers.Concatenate))
              and isinstance(layer.input, (list, tuple)) and len(layer.input) == 2]
    blocks, sizes = [], []
    data_format = layout.of(model)
    for layer in merges:
        inputs = list(layer.input)
        depths = [lengths.get(id(t), 0) for t in inputs]
        skip_index = int(np.argmin(depths))
        size = _spatial(layer.output, data_format)
        if size not in sizes:
            sizes.append(size)
        blocks.append(Block(layer.name, sizes.index(size) + 1, inputs[skip_index], inputs[1 - skip_index], layer,
                            skip_index))
    stage_of = _layer_stages(model, blocks, producers)
    kernels = tuple((stage_of[layer.name], layer.kernel) for layer in model.layers
                    if isinstance(layer, keras.layers.Conv2D) and layer.name in stage_of
                    and not naming.is_shortcut(layer.name))
    norms = tuple((stage_of[layer.name], layer) for layer in model.layers
                  if hasattr(layer, "moving_mean") and layer.name in stage_of)
    stages = tuple(sorted({s for s, _ in kernels}))
    return Structure(tuple(blocks), kernels, norms, stages)


def _layer_stages(model, blocks, producers):
    """Each layer's stage, up to the last block (the head has none): by ``reszoo.naming``
    (``convN_``: N - 1, the stem 0) where every conv follows it, else by position between
    the stages' last merges (the layers up to the first block's skip are the stem)."""
    layers = model.layers
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    if convs and all(naming.stage(layer.name) is not None for layer in convs):
        return {layer.name: naming.stage(layer.name) - naming.STEM for layer in layers
                if naming.stage(layer.name) is not None and not naming.is_head(layer.name)}
    if not blocks:
        return {layer.name: 1 for layer in layers}
    index = {layer.name: i for i, layer in enumerate(layers)}
    stem_end = index[producers[id(blocks[0].skip)].name]
    ends = {}
    for block in blocks:
        ends[block.stage] = index[block.name]
    stages = {}
    for i, layer in enumerate(layers):
        if i <= stem_end:
            stages[layer.name] = 0
            continue
        for stage in sorted(ends):
            if i <= ends[stage]:
                stages[layer.name] = stage
                break
    return stages
