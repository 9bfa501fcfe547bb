"""Layer names are an interface: the rule every builder follows, and the one place other
code reads them from (freezing, weight mapping, the lab's measurements). It extends
keras.applications' names:

    preprocess                    input normalisation inside the model (optional)
    conv1_*, pool1_*              the stem: stage 1
    conv{s}_block{b}_{j}_{kind}   stage s >= 2, block b >= 1: the j-th layer of the residual
                                  branch (j >= 1; j = 0 is the shortcut projection), kind
                                  conv / bn / relu / pad; conv{s}_block{b}_preact_* is a
                                  pre-activation block's BN-ReLU
    conv{s}_block{b}_{end}        the block's end: out (post-activation ReLU), add (the sum),
                                  sqrt2 (the scaled sum), concat (DenseNet)
    conv{s}_tied[_...]            the shared block (or convs) of a weight-tied stage
    conv{s}_end                   the map stage s hands on (an identity layer): the stem's
                                  output before pooling, a block stack's output, DenseNet's
                                  BN-ReLU before the transition, and after the final BN-ReLU
                                  for the last stage of pre-activation nets and DenseNet
    pool{s}_*                     DenseNet's transition after stage s: part of stage s
    post_*                        the final BN-ReLU of pre-activation nets and DenseNet
    avg_pool, max_pool, fc        the head; fc is the classifier
"""

import re

PREPROCESS = "preprocess"
CLASSIFIER = "fc"
POOLS = ("avg_pool", "max_pool")
STEM = 1
_STAGE = re.compile(r"(?:conv|pool)(\d+)_")
_END = re.compile(r"conv(\d+)_end")
_BLOCK = re.compile(r"conv(\d+)_block(\d+)_(?:(\d+)_)?")


def stage(name):
    """The stage (1 for the stem) a layer belongs to, or None (preprocess, post, head)."""
    match = _STAGE.match(name)
    return int(match.group(1)) if match else None


def block(name):
    """``(stage, block)`` of a layer inside a residual or dense block, else None."""
    match = _BLOCK.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


_BLOCK_END = re.compile(r"conv\d+_block\d+_(?:out|add|sqrt2|concat)")


def block_end(name):
    """Whether ``name`` is a layer that ends a block (the last of them is the block's output)."""
    return _BLOCK_END.fullmatch(name) is not None


def block_name(stage_index, block_index):
    return f"conv{stage_index}_block{block_index}"


def stage_end(stage_index):
    """The name of stage ``stage_index``'s output layer."""
    return f"conv{stage_index}_end"


def end_stage(name):
    """The stage whose output layer ``name`` is, or None."""
    match = _END.fullmatch(name)
    return int(match.group(1)) if match else None


def is_shortcut(name):
    """A shortcut projection (branch index 0) of a block."""
    match = _BLOCK.match(name)
    return bool(match and match.group(3) == "0")


def is_head(name):
    return name == CLASSIFIER or name in POOLS


def stages(model):
    """The stage numbers of ``model``'s layers, ascending (the stem included)."""
    return sorted({s for s in (stage(layer.name) for layer in model.layers) if s is not None})
