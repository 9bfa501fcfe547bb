"""Plain nets, ResNets and pre-activation ResNets: one builder.

He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016 (arXiv 1512.03385).
He, Zhang, Ren, Sun. Identity Mappings in Deep Residual Networks. ECCV 2016 (arXiv 1603.05027).

A residual block computes ``y = F(x) + shortcut(x)`` (Eq. 1 and 2 of the first paper); a plain
block is ``F`` alone. Post-activation applies ReLU after the sum; pre-activation moves BN-ReLU
to the front of ``F`` and keeps the identity path clean (Eq. 3-4 of the second paper).
Layer names follow keras.applications: ``conv{stage}_block{i}_{j}_conv``.

``weight_tied=True`` shares one block across each stage: the first block changes the shape,
and blocks 2..n are a single sub-model ``conv{stage}_tied`` applied n - 1 times, so a stage
is an unrolled iteration x_{k+1} = T(x_k) (the recurrent view of Liao & Poggio 2016, arXiv
1604.03640; ``reszoo.lab.fixed_point``). ``weight_tied="convs"`` shares only the convolutions
and gives every iteration its own BN, as Liao & Poggio train them.

``variant="keras"`` reproduces keras.applications' ResNet50/101/152 (v1) and ResNet50V2/...
(v2) exactly, so their weights load (``reszoo.weights``): v1 convs all carry biases and
bottlenecks stride on the first 1x1 conv; v2 strides at the last block of a stage through a
1x1 max-pool shortcut, projects the first block with a biased 1x1 conv at stride 1, and gives
the last 1x1 conv a bias; both pad the stem explicitly and use BN epsilon 1.001e-5.
"""

import dataclasses
import math

import keras
from keras import layers

from reszoo import layout, naming, skeleton
from reszoo.checks import check_choice, check_float, check_int, check_int_tuple
from reszoo.factory import LayerFactory, SharedConvs
from reszoo.layers import ResidualScale, ZeroPadShortcut

# ImageNet depths, Table 1 of He et al. 2015 (+ ResNet-200 of He et al. 2016).
IMAGENET_LAYERS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """What the blocks of one net share. ``variant="keras"`` is keras.applications' layout:
    stride on the first 1x1 conv (v1), or its v2 pre-activation block (``keras_v2``).
    ``groups`` and ``width_per_group`` set a bottleneck's 3x3 width, floor(filters x
    width_per_group / 64) x groups (ResNeXt, Xie et al. 2017; Wide ResNet-50-2: 128 per group);
    ``se_ratio`` adds squeeze-excitation to each branch (Hu et al. 2018); ``avg_down`` makes a
    strided projection shortcut an average pool and a 1x1 conv (ResNet-D, He et al. 2019)."""

    block: str = "basic"
    residual: bool = True
    preact: bool = False
    shortcut: str = "A"
    residual_scale: str = None
    zero_init_last_bn: bool = False
    variant: str = "paper"
    groups: int = 1
    width_per_group: int = 64
    se_ratio: float = None
    avg_down: bool = False

    def __post_init__(self):
        check_choice("block", self.block, ("basic", "bottleneck"))
        check_choice("shortcut", self.shortcut, ("A", "B", "C"))
        check_choice("residual_scale", self.residual_scale, (None, "sqrt2", "learnable"))
        check_choice("variant", self.variant, skeleton.VARIANTS)
        check_int("groups", self.groups)
        check_int("width_per_group", self.width_per_group)
        if self.block == "basic" and (self.groups, self.width_per_group) != (1, 64):
            raise ValueError("groups and width_per_group widen bottleneck blocks only (widen basic blocks with "
                             "base_width)")
        if self.se_ratio is not None:
            check_float("se_ratio", self.se_ratio, 0.0, 1.0, high_inclusive=True)
            if self.preact or self.variant == "keras":
                raise ValueError("se_ratio goes with post-activation blocks of the paper variant")
        if self.avg_down and (self.shortcut == "A" or self.variant == "keras"):
            raise ValueError("avg_down needs projection shortcuts (shortcut='B' or 'C') and variant='paper'")

    @property
    def keras_v2(self):
        return self.variant == "keras" and self.preact


def _branch_convs(opts, filters, strides):
    """(kernel, filters, strides, groups) of the residual function F. Bottlenecks stride on the
    3x3 conv, as torchvision ("ResNet v1.5"), or on the first 1x1 (the paper's Caffe model and
    keras.applications' v1)."""
    if opts.block == "basic":
        return [(3, filters, strides, 1), (3, filters, 1, 1)]
    width = math.floor(filters * opts.width_per_group / 64) * opts.groups
    first, middle = (strides, 1) if opts.variant == "keras" and not opts.preact else (1, strides)
    return [(1, width, first, 1), (3, width, middle, opts.groups), (1, filters * EXPANSION[opts.block], 1, 1)]


def squeeze_excite(x, ratio, f, name):
    """x times a per-channel gate sigmoid(W2 relu(W1 avgpool(x))), W1 reducing the channels by
    ``ratio`` to a multiple of 8 (Hu et al. 2018, Eq. 2-4; timm's ``SEModule``)."""
    channels = layout.channels(x.shape)
    reduced = max(8, int(channels * ratio + 4) // 8 * 8)
    s = layers.GlobalAveragePooling2D(keepdims=True, name=naming.part(name, "se_squeeze"))(x)
    s = f.conv(s, reduced, 1, name=naming.part(name, "se_reduce"), use_bias=True, activation="relu")
    s = f.conv(s, channels, 1, name=naming.part(name, "se_expand"), use_bias=True, activation="sigmoid")
    return layers.Multiply(name=naming.part(name, "se_excite"))([x, s])


def _shortcut(x, preact_x, out_filters, strides, opts, f, name):
    """Option A: zero-padded identity; B: 1x1 projection where the shape changes; C:
    projection everywhere (He et al. 2015, Sec. 4.1). Pre-activation projections read the
    pre-activated input and carry no BN (He et al. 2016)."""
    same_shape = strides == 1 and layout.channels(x.shape) == out_filters
    conv = naming.layer(name, 0, "conv")
    if opts.keras_v2:
        if layout.channels(x.shape) != out_filters:
            return f.conv(preact_x, out_filters, 1, strides, name=conv, use_bias=True)
        return layers.MaxPooling2D(1, strides, name=naming.layer(name, 0, "pool"))(x) if strides > 1 else x
    if opts.shortcut != "C" and same_shape:
        return x
    if opts.shortcut == "A":
        return ZeroPadShortcut(out_filters, strides, name=naming.layer(name, 0, "pad"))(x)
    if opts.avg_down and strides > 1:
        x = preact_x = layers.AveragePooling2D(2, strides, padding="same", name=naming.layer(name, 0, "pool"))(
            preact_x if opts.preact else x)
        strides = 1
    if opts.preact:
        return f.conv(preact_x, out_filters, 1, strides, name=conv)
    s = f.conv(x, out_filters, 1, strides, name=conv)
    return f.bn(s, name=naming.layer(name, 0, "bn"))


def _merge(shortcut, y, opts, drop_rate, name):
    if opts.residual_scale == "learnable":
        y = ResidualScale(name=naming.part(name, "scale"))(y)
    if drop_rate > 0:
        y = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=naming.part(name, "drop_path"))(y)
    x = layers.Add(name=naming.part(name, "add"))([shortcut, y])
    if opts.residual_scale == "sqrt2":
        x = layers.Rescaling(1.0 / math.sqrt(2.0), name=naming.part(name, "sqrt2"))(x)
    return x


def post_activation_block(x, filters, strides=1, opts=BlockOptions(), f=LayerFactory(), drop_rate=0.0,
                          name="block"):
    """conv-BN-ReLU ... conv-BN, add the shortcut, ReLU (He et al. 2015, Fig. 2 and 5)."""
    convs = _branch_convs(opts, filters, strides)
    y = x
    for j, (kernel, width, stride, groups) in enumerate(convs, start=1):
        last = j == len(convs)
        y = f.conv(y, width, kernel, stride, name=naming.layer(name, j, "conv"), groups=groups)
        y = f.bn(y, name=naming.layer(name, j, "bn"), zero_init=last and opts.zero_init_last_bn)
        if not last:
            y = layers.ReLU(name=naming.layer(name, j, "relu"))(y)
    if opts.se_ratio:
        y = squeeze_excite(y, opts.se_ratio, f, name)
    if opts.residual:
        shortcut = _shortcut(x, x, convs[-1][1], strides, opts, f, name)
        y = _merge(shortcut, y, opts, drop_rate, name)
    return layers.ReLU(name=naming.part(name, "out"))(y)


def pre_activation_block(x, filters, strides=1, opts=BlockOptions(preact=True), f=LayerFactory(),
                         drop_rate=0.0, name="block"):
    """BN-ReLU-conv ... BN-ReLU-conv, add the untouched shortcut (He et al. 2016, Fig. 4e)."""
    convs = _branch_convs(opts, filters, strides)
    preact = f.bn_relu(x, name=naming.part(name, "preact"))
    y = preact
    for j, (kernel, width, stride, groups) in enumerate(convs, start=1):
        if j > 1:
            y = f.bn(y, name=naming.layer(name, j, "bn"), zero_init=j == len(convs) and opts.zero_init_last_bn)
            y = layers.ReLU(name=naming.layer(name, j, "relu"))(y)
        padding = "same"
        if opts.keras_v2 and kernel > 1:
            y = layers.ZeroPadding2D(kernel // 2, name=naming.layer(name, j, "pad"))(y)
            padding = "valid"
        y = f.conv(y, width, kernel, stride, name=naming.layer(name, j, "conv"), padding=padding,
                   use_bias=opts.keras_v2 and j == len(convs), groups=groups)
    if not opts.residual:
        return y
    shortcut = _shortcut(x, preact, convs[-1][1], strides, opts, f, name)
    return _merge(shortcut, y, opts, drop_rate, name)


def _tied_block(x, block_fn, filters, opts, f, name):
    """One block as a sub-model on ``x``'s shape, to be applied repeatedly."""
    inputs = keras.Input(x.shape[1:], name=naming.part(name, "input"))
    return keras.Model(inputs, block_fn(inputs, filters, 1, opts, f, 0.0, name=name), name=name)


def _stage_layout(depth, block, stem, stage_layers):
    """Resolve (depth, block, layers) from whichever the caller gave."""
    if stage_layers is not None:
        block = block or "basic"
        stage_layers = check_int_tuple("layers", stage_layers)
        derived = sum(stage_layers) * CONVS_PER_BLOCK[block] + 2
        if depth is not None and depth != derived:
            raise ValueError(f"depth={depth} does not match layers={stage_layers} ({derived})")
        return derived, block, stage_layers
    if depth is None:
        raise ValueError("give depth (or layers)")
    depth = check_int("depth", depth, 1)
    if stem != "cifar":
        if depth not in IMAGENET_LAYERS:
            raise ValueError(
                f"depth must be one of {sorted(IMAGENET_LAYERS)} for the ImageNet stem "
                f"(or give layers), got {depth}"
            )
        table_block, stage_layers = IMAGENET_LAYERS[depth]
        if block not in (None, table_block):
            raise ValueError(f"depth={depth} is a {table_block} net; block={block!r} conflicts")
        return depth, table_block, stage_layers
    block = block or "basic"
    return depth, block, (cifar_blocks(depth, block),) * 3


def cifar_blocks(depth, block="basic"):
    """Blocks per stage of a three-stage CIFAR net of ``depth`` weighted layers: depth =
    6n + 2 for basic blocks, 9n + 2 for bottlenecks (He et al. 2015, Sec. 4.2; He et al.
    2016). A ValueError says which depths there are."""
    per_block = 3 * CONVS_PER_BLOCK[block]
    if depth < per_block + 2 or (depth - 2) % per_block:
        raise ValueError(
            f"depth must be {per_block}n+2 for a CIFAR {block} net "
            f"(e.g. {per_block + 2}, {2 * per_block + 2}), got {depth}"
        )
    return (depth - 2) // per_block


def linear_rates(max_rate, count):
    """Stochastic-depth drop rates rising linearly to ``max_rate`` at the last of ``count``
    blocks (Huang et al. 2016, Eq. 4)."""
    return [max_rate * (i + 1) / count for i in range(count)]


def resnet(
    depth=None,
    *,
    block=None,
    stem="cifar",
    layers=None,
    base_width=None,
    stem_width=None,
    groups=1,
    width_per_group=64,
    se_ratio=None,
    avg_down=False,
    residual=True,
    preact=False,
    shortcut=None,
    residual_scale=None,
    zero_init_last_bn=False,
    drop_path_rate=0.0,
    head_norm=True,
    weight_tied=False,
    variant="paper",
    **options,
):
    """Build a plain net, ResNet or pre-activation ResNet.

    Args:
      depth: weighted layers. CIFAR stem: 6n+2 (basic) or 9n+2 (bottleneck), three stages of
        n blocks at widths (16, 32, 64) x ``base_width``/16. ImageNet stem: 18/34/50/101/152/200.
      block: "basic" or "bottleneck" (default: from the depth table, else "basic").
      stem: "cifar" (3x3 conv, stride 1), "imagenet" (7x7/2 conv + 3x3/2 max pool) or "deep"
        (three 3x3 convs, the first at stride 2, + 3x3/2 max pool: ResNet-C/D).
      layers: blocks per stage, overriding the depth tables (e.g. (2, 2, 2, 2)).
      base_width: first stage's width (default 16 for CIFAR, 64 for ImageNet); doubles per stage.
      stem_width: the stem's output width (default base_width; Wide ResNets keep 16).
      groups, width_per_group: a bottleneck's 3x3 conv has groups x floor(width x
        width_per_group / 64) maps in ``groups`` groups (ResNeXt-50 32x4d: 32, 4; Wide ResNet-50-2:
        1, 128).
      se_ratio: squeeze-excitation on each branch, reducing by this ratio (SE-ResNet: 1/16).
      avg_down: strided projection shortcuts average-pool first, then a 1x1 conv (ResNet-D).
      residual: False builds the plain twin (no shortcuts).
      preact: pre-activation blocks (He et al. 2016) with a final BN-ReLU (see head_norm).
      shortcut: "A", "B" or "C". Default "A" for CIFAR basic nets, "B" otherwise.
      residual_scale: None, "sqrt2" (sum times 1/sqrt(2)) or "learnable" (branch times a
        scalar initialised at 0, ReZero/SkipInit).
      zero_init_last_bn: start each branch's last BN gamma at 0 (Goyal et al. 2017).
      drop_path_rate: stochastic depth, rising linearly to this rate at the last block.
      head_norm: pre-activation nets only: the BN-ReLU before pooling. The popular CIFAR
        PreAct ResNet-18 (kuangliu/pytorch-cifar) leaves it out.
      weight_tied: True: blocks 2..n of each stage share one set of weights (BN included), a
        sub-model ``conv{stage}_tied`` called n - 1 times; "convs": they share their
        convolutions (``conv{stage}_tied_{j}_conv``) and keep their own BN.
      variant: "paper", or "keras" for keras.applications' layout (ImageNet stem; see the
        module docstring); its preprocessing ("auto") is caffe for v1, tf for v2.
      **options: what every family takes: the input, head and backbone options of
        ``reszoo.skeleton.ModelIO`` (num_classes, input_shape, input_tensor, include_top,
        pooling, classifier_activation, features_only, out_levels, preprocessing, name) and
        the layer hooks of ``reszoo.factory.LayerFactory`` (norm, bn_momentum, bn_epsilon,
        kernel_initializer, kernel_regularizer).
    """
    keras_layout = variant == "keras"
    auto = ("tf" if preact else "caffe") if keras_layout else None
    io, f = skeleton.split_options(options, variant=variant, stem=stem, preprocessing=auto,
                                   conv_bias=keras_layout and not preact)
    check_choice("block", block, (None, "basic", "bottleneck"))
    if keras_layout and (stem != "imagenet" or f.padding != "same"):
        raise ValueError("variant='keras' needs stem='imagenet' (keras.applications has no CIFAR ResNets) and "
                         "padding='same' (it pads in its own way)")
    depth, block, stage_layers = _stage_layout(depth, block, stem, layers)
    shortcut = shortcut or ("A" if stem == "cifar" and block == "basic" else "B")
    opts = BlockOptions(block, residual, preact, shortcut, residual_scale, zero_init_last_bn, variant, groups,
                        width_per_group, se_ratio, bool(avg_down))
    drop_path_rate = check_float("drop_path_rate", drop_path_rate, 0.0, 1.0)
    if not residual and (drop_path_rate or residual_scale):
        raise ValueError("drop_path_rate and residual_scale need residual=True")
    check_choice("weight_tied", weight_tied, (False, True, "convs"))
    if weight_tied and (drop_path_rate or keras_layout):
        raise ValueError("weight_tied needs drop_path_rate=0 and variant='paper' (the shared block "
                         "has one drop rate and strides in no block)")
    base_width = check_int("base_width", base_width or (16 if stem == "cifar" else 64))
    stem_width = check_int("stem_width", stem_width or base_width)

    def body(x, pyramid):
        if stem == "cifar":
            x = skeleton.cifar_stem(x, f, stem_width, pyramid, norm=not preact)
        elif stem == "deep":
            x = skeleton.deep_stem(x, f, stem_width, pyramid, norm=not preact)
        else:
            x = skeleton.imagenet_stem(x, f, stem_width, variant, pyramid, norm=not preact,
                                       conv_bias=keras_layout or None)
        return _stages(x, stage_layers, base_width, opts, f, weight_tied, drop_path_rate, head_norm, pyramid)

    default_name = ("preact_" if preact else "") + ("resnet" if residual else "plain") + str(depth)
    return skeleton.assemble(io, f, stem, len(stage_layers), body, default_name)


def _stages(x, stage_layers, base_width, opts, f, weight_tied, drop_path_rate, head_norm, pyramid):
    """Stages 2, 3, ... of blocks; each stage's output is marked in ``pyramid``. A
    pre-activation stage hands on the sum of its last block (the residual stream, not
    normalised: each block normalises its own input), the last stage too, before the final
    BN-ReLU of ``head_norm`` (as timm's ResNetV2 features)."""
    block_fn = pre_activation_block if opts.preact else post_activation_block
    rates = iter(linear_rates(drop_path_rate, sum(stage_layers)))
    stride = pyramid.stride
    for s, count in enumerate(stage_layers):
        stage = s + 2
        filters = base_width * 2**s
        tied, shared = None, SharedConvs(f)
        for b in range(count):
            if weight_tied is True and b > 0:
                tied = tied or _tied_block(x, block_fn, filters, opts, f, name=naming.tied(stage))
                x = tied(x)
                continue
            if opts.keras_v2:  # keras.applications v2: the last block of stages 2-4 strides
                strides = 2 if s < len(stage_layers) - 1 and b == count - 1 else 1
            else:
                strides = 2 if s > 0 and b == 0 else 1
            stride *= strides
            factory = shared if weight_tied == "convs" and b > 0 else f
            x = block_fn(x, filters, strides, opts, factory, next(rates), name=naming.block_name(stage, b + 1))
        x = pyramid.end(x, stage, stride)
    if opts.preact and head_norm:
        x = f.bn_relu(x, name=naming.POST)
    return x
