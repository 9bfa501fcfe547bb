"""DenseNet and DenseNet-BC: one builder.

Huang, Liu, van der Maaten, Weinberger. Densely Connected Convolutional Networks. CVPR 2017
(arXiv 1608.06993). Layer l receives the concatenation of all earlier feature maps,
``x_l = H_l([x_0, ..., x_{l-1}])`` (Eq. 2), with H_l = BN-ReLU-Conv3x3 producing ``k``
(growth rate) maps; "B" adds a BN-ReLU-Conv1x1 bottleneck of 4k maps, "C" compresses each
transition by theta. Layer names follow keras.applications; ``variant="keras"`` also takes
its explicit stem padding and BN epsilon (1.001e-5), so its DenseNet weights load.
"""

import dataclasses

import keras
from keras import layers

from reszoo import layout, naming, skeleton
from reszoo.checks import check_float, check_int, check_int_tuple
from reszoo.factory import LayerFactory
from reszoo.layers import Recompute

# ImageNet layouts, Table 1 of Huang et al. (DenseNet-161 is k=48 with a 96-channel stem).
IMAGENET_BLOCKS = {
    121: (6, 12, 24, 16),
    161: (6, 12, 36, 24),
    169: (6, 12, 32, 32),
    201: (6, 12, 48, 32),
    264: (6, 12, 64, 48),
}


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """What the dense layers of one net share: the "B" bottleneck of ``bottleneck_width * k``
    maps, the "C" compression theta of the transitions, dropout, and recomputation."""

    bottleneck: bool = False
    bottleneck_width: int = 4
    compression: float = 1.0
    dropout_rate: float = 0.0
    memory_efficient: bool = False


def _dropout(x, rate, name):
    return layers.Dropout(rate, name=name)(x) if rate > 0 else x


def _first_conv(y, growth_rate, opts, f, name):
    """BN-ReLU and H_l's first conv: the 1x1 bottleneck of 4k maps ("B"), else the 3x3 of k."""
    y = f.bn_relu(y, name=naming.part(name, "0"))
    if opts.bottleneck:
        return f.conv(y, opts.bottleneck_width * growth_rate, 1, name=naming.layer(name, 1, "conv"))
    return f.conv(y, growth_rate, 3, name=naming.layer(name, 2, "conv"))


def _rest(y, growth_rate, opts, f, name):
    """The rest of H_l: [dropout-BN-ReLU-Conv3x3(k) after a bottleneck], dropout."""
    if opts.bottleneck:
        y = _dropout(y, opts.dropout_rate, name=naming.layer(name, 1, "drop"))
        y = f.bn_relu(y, name=naming.part(name, "1"))
        y = f.conv(y, growth_rate, 3, name=naming.layer(name, 2, "conv"))
    return _dropout(y, opts.dropout_rate, name=naming.layer(name, 2, "drop"))


def dense_layer(x, growth_rate=12, opts=LayerOptions(), f=LayerFactory(), name="layer"):
    """H_l: [BN-ReLU-Conv1x1(4k)]-BN-ReLU-Conv3x3(k), concatenated to its input."""
    y = _rest(_first_conv(x, growth_rate, opts, f, name), growth_rate, opts, f, name)
    return layers.Concatenate(layout.channel_axis(), name=naming.part(name, "concat"))([x, y])


def efficient_dense_layer(features, growth_rate, opts, f, name):
    """H_l for ``memory_efficient``: concat-BN-ReLU-conv(first) is one sub-model whose call is
    rematerialised (``layers.Recompute``), so the backward pass recomputes the concatenation and
    its normalised copies instead of storing them per layer (Pleiss et al. 2017). Returns the
    new ``k`` maps only; the block concatenates once at its end."""
    inputs = [keras.Input(t.shape[1:], dtype=t.dtype) for t in features]
    y = layers.Concatenate(layout.channel_axis(), name=naming.part(name, "concat"))(inputs) if len(inputs) > 1 \
        else inputs[0]
    shared = keras.Model(inputs, _first_conv(y, growth_rate, opts, f, name), name=naming.part(name, "shared"))
    y = Recompute(shared, name=naming.part(name, "recompute"))(features)
    return _rest(y, growth_rate, opts, f, name)


def dense_block(x, count, growth_rate, opts, f, stage):
    """``count`` layers H_l, each reading the concatenation of all before it (Eq. 2)."""
    if not opts.memory_efficient:
        for i in range(count):
            x = dense_layer(x, growth_rate, opts, f, name=naming.block_name(stage, i + 1))
        return x
    features = [x]
    for i in range(count):
        features.append(efficient_dense_layer(features, growth_rate, opts, f, name=naming.block_name(stage, i + 1)))
    return layers.Concatenate(layout.channel_axis(), name=naming.part(naming.stage_name(stage), "concat"))(features)


def transition(x, opts, f, pyramid, stage):
    """BN-ReLU-Conv1x1(floor(theta * c))-AvgPool2x2 between dense blocks (``pool{stage}_*``).
    The dense block's output, before it, is the stage's output in ``pyramid`` (as timm's
    DenseNet features)."""
    name = naming.transition(stage)
    filters = int(layout.channels(x.shape) * opts.compression)
    x = f.bn_relu(pyramid.end(x, stage, pyramid.stride), name=name)
    x = f.conv(x, filters, 1, name=naming.part(name, "conv"))
    x = _dropout(x, opts.dropout_rate, name=naming.part(name, "drop"))
    x = layers.AveragePooling2D(2, strides=2, name=naming.part(name, "pool"))(x)
    pyramid.stride *= 2
    return x


def _block_layout(depth, blocks, stem, bottleneck):
    convs = 2 if bottleneck else 1
    if blocks is not None:
        blocks = check_int_tuple("blocks", blocks)
        derived = sum(blocks) * convs + len(blocks) + 1
        if depth is not None and depth != derived:
            raise ValueError(f"depth={depth} does not match blocks={blocks} ({derived})")
        return derived, blocks
    if depth is None:
        raise ValueError("give depth (or blocks)")
    depth = check_int("depth", depth, 1)
    if stem == "imagenet":
        if depth not in IMAGENET_BLOCKS:
            raise ValueError(
                f"depth must be one of {sorted(IMAGENET_BLOCKS)} for the ImageNet stem "
                f"(or give blocks), got {depth}"
            )
        return depth, IMAGENET_BLOCKS[depth]
    per = 3 * convs
    if depth < per + 4 or (depth - 4) % per:
        kind = "DenseNet-BC" if bottleneck else "DenseNet"
        raise ValueError(f"depth must be {per}n+4 for a CIFAR {kind}, got {depth}")
    return depth, ((depth - 4) // per,) * 3


def densenet(
    depth=None,
    *,
    growth_rate=12,
    blocks=None,
    bottleneck=False,
    compression=1.0,
    bottleneck_width=4,
    stem="cifar",
    init_channels=None,
    dropout_rate=0.0,
    memory_efficient=False,
    variant="paper",
    **options,
):
    """Build a DenseNet (Huang et al. 2017). A stage's feature map (``features_only``) is its
    dense block's output, the last one after the final BN-ReLU (timm's DenseNet features).

    Args:
      depth: L. CIFAR stem: 3n+4 (DenseNet) or 6n+4 (DenseNet-BC), three dense blocks of n
        layers. ImageNet stem: 121, 161, 169, 201 or 264.
      growth_rate: k, maps each layer adds.
      blocks: layers per dense block, overriding the depth rules.
      bottleneck: the "B" 1x1 conv of ``bottleneck_width * k`` maps before each 3x3 conv.
      compression: theta in (0, 1]; the "C" in BC is 0.5.
      stem: "cifar" (3x3 conv) or "imagenet" (7x7/2 conv-BN-ReLU + 3x3/2 max pool).
      init_channels: stem width (default 16 for DenseNet on CIFAR, else 2k).
      dropout_rate: dropout after each conv but the first (the paper's 0.2 without augmentation).
      memory_efficient: recompute each layer's concatenation + BN-ReLU in the backward pass
        instead of storing it (Pleiss et al. 2017, arXiv 1707.06990): less memory, more compute.
      variant: "paper", or "keras" for keras.applications' DenseNet layout (ImageNet stem);
        its preprocessing ("auto") is "torch".
      **options: as ``reszoo.resnet.resnet``'s (``reszoo.skeleton.ModelIO`` and the layer
        hooks of ``reszoo.factory.LayerFactory``).
    """
    io, f = skeleton.split_options(options, variant=variant, stem=stem,
                                   preprocessing="torch" if variant == "keras" else None)
    growth_rate = check_int("growth_rate", growth_rate)
    bottleneck_width = check_int("bottleneck_width", bottleneck_width)
    compression = check_float("compression", compression, 1e-6, 1.0, high_inclusive=True)
    dropout_rate = check_float("dropout_rate", dropout_rate, 0.0, 1.0)
    if variant == "keras" and stem != "imagenet":
        raise ValueError("variant='keras' needs stem='imagenet' (keras.applications has no CIFAR DenseNets)")
    depth, blocks = _block_layout(depth, blocks, stem, bottleneck)
    cifar = stem == "cifar"
    default_init = 16 if cifar and not bottleneck and compression == 1.0 else 2 * growth_rate
    init_channels = check_int("init_channels", init_channels or default_init)
    opts = LayerOptions(bottleneck, bottleneck_width, compression, dropout_rate, bool(memory_efficient))

    def body(x, pyramid):
        if cifar:
            x = skeleton.cifar_stem(x, f, init_channels, pyramid, norm=False)
        else:
            x = skeleton.imagenet_stem(x, f, init_channels, variant, pyramid)
        for s, count in enumerate(blocks):
            x = dense_block(x, count, growth_rate, opts, f, stage=s + 2)
            if s < len(blocks) - 1:
                x = transition(x, opts, f, pyramid, s + 2)
        return pyramid.end(f.bn_relu(x, name=naming.POST), len(blocks) + 1, pyramid.stride)

    bc = "_bc" if bottleneck and compression < 1.0 else ""
    return skeleton.assemble(io, f, stem, len(blocks), body, f"densenet{bc}{depth}_k{growth_rate}")
