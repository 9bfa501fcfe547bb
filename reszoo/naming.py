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
    conv{s}_end                   the map stage s hands on (an identity layer), where timm
                                  takes its features: the stem's output before pooling, a
                                  block stack's output (a dense block's before its
                                  transition; DenseNet's last after the final BN-ReLU)
    pool{s}_*                     DenseNet's transition after stage s: part of stage s
    post_*                        the final BN-ReLU of pre-activation nets and DenseNet
    avg_pool, max_pool, fc        the head; fc is the classifier (avgmax_pool, catavgmax_pool:
                                  timm's mean and concatenation of the two pools)
"""

import re

PREPROCESS = "preprocess"
CLASSIFIER = "fc"
AVG_POOL, MAX_POOL = "avg_pool", "max_pool"
AVGMAX_POOL, CATAVGMAX_POOL = "avgmax_pool", "catavgmax_pool"  # timm's mean and concatenation of both
POOLS = (AVG_POOL, MAX_POOL, AVGMAX_POOL, CATAVGMAX_POOL)
# timm's global_pool -> the layer whose output is the pooled features ("": none, the map).
POOLED = {"avg": AVG_POOL, "max": MAX_POOL, "avgmax": AVGMAX_POOL, "catavgmax": CATAVGMAX_POOL}


def pooled(names):
    """Of a model's layer ``names``, the one whose output is its pooled features (the last
    pooling layer: a merge of average and max pools comes after both), or None."""
    return next((name for name in reversed(names) if name in POOLS), None)
POST = "post"
STEM = 1
BLOCK_ENDS = ("out", "add", "sqrt2", "concat")
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


_BLOCK_END = re.compile(rf"conv\d+_block\d+_(?:{'|'.join(BLOCK_ENDS)})")


def block_end(name):
    """Whether ``name`` is a layer that ends a block (the last of them is the block's output)."""
    return _BLOCK_END.fullmatch(name) is not None


def stage_name(stage_index):
    """``conv{s}``: the prefix of stage ``s``'s layers (``conv1`` is the stem)."""
    return f"conv{stage_index}"


def block_name(stage_index, block_index):
    return f"{stage_name(stage_index)}_block{block_index}"


def layer(prefix, j, kind):
    """The j-th layer of a block's branch (``conv3_block2_1_conv``; j = 0 is the shortcut),
    or of the stem (``layer("conv1", None, "conv")`` is ``conv1_conv``)."""
    return f"{prefix}_{kind}" if j is None else f"{prefix}_{j}_{kind}"


def part(prefix, kind):
    """A named part of a block or stage: ``conv3_block2_add``, ``conv3_block2_preact``,
    ``conv2_concat``."""
    return f"{prefix}_{kind}"


def tied(stage_index):
    """The shared block, or prefix of the shared convolutions, of a weight-tied stage."""
    return f"{stage_name(stage_index)}_tied"


def untie(name):
    """The shared convolution's name for a block's convolution (``conv3_block5_2_conv`` ->
    ``conv3_tied_2_conv``)."""
    return re.sub(r"_block\d+_", "_tied_", name, count=1)


def pad_of(conv):
    """The explicit padding layer before the convolution or pool ``conv``
    (``conv3_block1_2_conv`` -> ``conv3_block1_2_pad``)."""
    return re.sub(r"_[a-z]+$", "_pad", conv)


def transition(stage_index):
    """DenseNet's transition after stage ``s``: ``pool{s}`` (part of stage s)."""
    return f"pool{stage_index}"


STEM_CONV = layer(stage_name(STEM), None, "conv")
DEEP_STEM_CONV = layer(stage_name(STEM), 1, "conv")  # a deep stem's first conv: conv1_1_conv
FIRST_CONVS = (STEM_CONV, DEEP_STEM_CONV)  # the conv that reads the image
STEM_POOL = layer(transition(STEM), None, "pool")


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


def branch_layers(names, block, kind):
    """Of ``names``, the layers of ``block``'s residual branch of ``kind`` (j >= 1), in order."""
    pattern = re.compile(rf"{re.escape(block)}_([1-9]\d*)_{kind}")
    return [n for n in names if pattern.fullmatch(n)]


_BRANCH = re.compile(r"(conv\d+_block\d+)_(\d+)_([a-z]+)")


def split_branch(name):
    """``(block, j, kind)`` of a branch layer's name (``("conv3_block2", 1, "bn")`` for
    ``conv3_block2_1_bn``), else None."""
    match = _BRANCH.fullmatch(name)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else None


def is_part(name, kind):
    """Whether ``name`` is a part of kind ``kind`` (``is_part("conv2_block1_concat", "concat")``)."""
    return name.endswith(f"_{kind}")


def is_head(name):
    return name == CLASSIFIER or name in POOLS


def is_after_features(name):
    """A layer a backbone (``features_only``) may leave out: the head, and the final BN-ReLU
    of pre-activation nets, which follows their last level."""
    return is_head(name) or name.startswith(f"{POST}_")


def stages(model):
    """The stage numbers of ``model``'s layers, ascending (the stem included)."""
    return sorted({s for s in (stage(layer.name) for layer in model.layers) if s is not None})
