"""The catalogue: every named model as a config of a family builder (``CATALOGUE``, which
``reszoo.registry`` serves).

Published results are test error % (CIFAR) from the papers' tables, or top-1 accuracy % of
torchvision's V1 weights (ImageNet), which are the numbers users reproduce against.
"""

import dataclasses

from reszoo.densenet import densenet
from reszoo.resnet import resnet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One named model: its family builder and config, its paper and published results."""

    name: str
    family: str
    builder: object
    config: dict
    paper: str
    dataset: str
    published: dict = dataclasses.field(default_factory=dict)
    notes: str = ""


CATALOGUE = []


def _entry(name, builder, family, paper, dataset, published=None, notes="", **config):
    CATALOGUE.append(ModelSpec(name, family, builder, config, paper, dataset, published or {}, notes))


HE2015 = "He et al. 2015, Deep Residual Learning for Image Recognition (arXiv 1512.03385)"
HE2016 = "He et al. 2016, Identity Mappings in Deep Residual Networks (arXiv 1603.05027)"
HUANG2017 = "Huang et al. 2017, Densely Connected Convolutional Networks (arXiv 1608.06993)"
HE2019 = "He et al. 2019, Bag of Tricks for Image Classification with Convolutional Neural Networks (arXiv 1812.01187)"
XIE2017 = "Xie et al. 2017, Aggregated Residual Transformations for Deep Neural Networks (arXiv 1611.05431)"
ZAGORUYKO2016 = "Zagoruyko & Komodakis 2016, Wide Residual Networks (arXiv 1605.07146)"
HU2018 = "Hu et al. 2018, Squeeze-and-Excitation Networks (arXiv 1709.01507)"
TIMM = "timm (Wightman 2019, github.com/huggingface/pytorch-image-models): its layout and padding, so its weights load"

# He et al. 2015, Table 6 (CIFAR-10 test error %, option A shortcuts).
for depth, error in [(20, 8.75), (32, 7.51), (44, 7.17), (56, 6.97), (110, 6.43), (1202, 7.93)]:
    _entry(f"resnet{depth}", resnet, "resnet", HE2015, "cifar10",
             {"cifar10_error": error}, depth=depth, stem="cifar")
    if depth <= 110:
        _entry(f"plain{depth}", resnet, "plain", HE2015, "cifar10",
                 notes=f"plain twin of resnet{depth}: same layers, no shortcuts",
                 depth=depth, stem="cifar", residual=False)

# He et al. 2016, Table 3 (test error %, pre-activation).
for depth, block, published in [
    (110, "basic", {"cifar10_error": 6.37}),
    (164, "bottleneck", {"cifar10_error": 5.46, "cifar100_error": 24.33}),
    (1001, "bottleneck", {"cifar10_error": 4.92, "cifar100_error": 22.71}),
]:
    _entry(f"preact_resnet{depth}", resnet, "preact_resnet", HE2016, "cifar10", published,
             depth=depth, block=block, stem="cifar", preact=True)
_entry("preact_resnet18_cifar", resnet, "preact_resnet", HE2016, "cifar10",
         notes="the common CIFAR baseline of kuangliu/pytorch-cifar (about 95% on CIFAR-10): "
               "3x3 stem, widths 64-512, projection shortcuts, no BN-ReLU before pooling",
         layers=(2, 2, 2, 2), block="basic", base_width=64, stem="cifar", preact=True,
         shortcut="B", head_norm=False)

# ImageNet: torchvision V1 top-1 %.
for depth, top1 in [(18, 69.76), (34, 73.31), (50, 76.13), (101, 77.37), (152, 78.31)]:
    _entry(f"resnet{depth}", resnet, "resnet", HE2015, "imagenet",
             {"imagenet_top1_torchvision": top1}, depth=depth, stem="imagenet")
for depth in (18, 34):
    _entry(f"plain{depth}", resnet, "plain", HE2015, "imagenet",
             notes=f"plain twin of resnet{depth}(shortcut='A')", depth=depth, stem="imagenet",
             residual=False)
for depth in (18, 34, 50, 101, 152, 200):
    _entry(f"preact_resnet{depth}", resnet, "preact_resnet", HE2016, "imagenet",
             depth=depth, stem="imagenet", preact=True)

# timm's variants of the ImageNet ResNet, each a few keyword arguments; symmetric (PyTorch)
# padding, so that timm's weights give timm's outputs.
for depth in (18, 34, 50, 101, 152):
    _entry(f"resnet{depth}d", resnet, "resnet", HE2019, "imagenet", notes="ResNet-D: deep stem (32, 32, 64), "
           "average-pool downsampling in the projection shortcuts; " + TIMM,
           depth=depth, stem="deep", avg_down=True, padding="symmetric")
for name, depth, groups, width, paper in [
    ("resnext50_32x4d", 50, 32, 4, XIE2017), ("resnext101_32x8d", 101, 32, 8, XIE2017),
    ("wide_resnet50_2", 50, 1, 128, ZAGORUYKO2016), ("wide_resnet101_2", 101, 1, 128, ZAGORUYKO2016),
]:
    _entry(name, resnet, "resnext" if groups > 1 else "wide_resnet", paper, "imagenet",
           notes=f"bottleneck 3x3 conv of {groups} group(s) of {width} x (stage width / 64) maps; " + TIMM,
           depth=depth, stem="imagenet", groups=groups, width_per_group=width, padding="symmetric")
_entry("seresnet50", resnet, "seresnet", HU2018, "imagenet", notes="squeeze-excitation (ratio 1/16) on every "
       "branch; " + TIMM, depth=50, stem="imagenet", se_ratio=1 / 16, padding="symmetric")
for depth in (50, 101):
    _entry(f"resnetv2_{depth}", resnet, "preact_resnet", HE2016, "imagenet",
           notes="timm's pre-activation ResNet (its ResNetV2 with BatchNorm): the same layers as "
                 f"preact_resnet{depth}, with timm's padding; " + TIMM,
           depth=depth, stem="imagenet", preact=True, padding="symmetric")

# Zagoruyko & Komodakis 2016, Table 4 (CIFAR test error %, median of 5 runs): pre-activation
# basic blocks widened k times, a 16-map stem, projections where the width changes.
for depth, k, params, errors in [(28, 10, "36.5M", (4.00, 19.25)), (16, 8, "11.0M", (4.27, 20.43)),
                                 (40, 4, "8.9M", (4.53, 21.18))]:
    n = (depth - 4) // 6
    _entry(f"wrn{depth}_{k}", resnet, "wide_resnet", ZAGORUYKO2016, "cifar10",
           {"cifar10_error": errors[0], "cifar100_error": errors[1]},
           notes=f"WRN-{depth}-{k} ({params} in the paper); its depth counts the 3 projection shortcuts",
           layers=(n, n, n), block="basic", stem="cifar", preact=True, shortcut="B", stem_width=16,
           base_width=16 * k)

# Huang et al. 2017, Table 2 (test error %; "+" = standard augmentation).
for name, depth, k, bc, errors in [
    ("densenet40_k12", 40, 12, False, (7.00, 5.24, 27.55, 24.42)),
    ("densenet100_k12", 100, 12, False, (5.77, 4.10, 23.79, 20.20)),
    ("densenet100_k24", 100, 24, False, (5.83, 3.74, 23.42, 19.25)),
    ("densenet_bc100_k12", 100, 12, True, (5.92, 4.51, 24.15, 22.27)),
    ("densenet_bc250_k24", 250, 24, True, (5.19, 3.62, 19.64, 17.60)),
    ("densenet_bc190_k40", 190, 40, True, (None, 3.46, None, 17.18)),
]:
    keys = ("cifar10_error", "cifar10+_error", "cifar100_error", "cifar100+_error")
    published = {key: e for key, e in zip(keys, errors) if e is not None}
    bc_config = dict(bottleneck=True, compression=0.5) if bc else {}
    _entry(name, densenet, "densenet", HUANG2017, "cifar10", published,
             depth=depth, growth_rate=k, stem="cifar", **bc_config)

for depth, top1 in [(121, 74.43), (161, 77.14), (169, 75.60), (201, 76.90), (264, None)]:
    k, init = (48, 96) if depth == 161 else (32, 64)
    _entry(f"densenet{depth}", densenet, "densenet", HUANG2017, "imagenet",
             {"imagenet_top1_torchvision": top1} if top1 else {},
             depth=depth, growth_rate=k, init_channels=init, bottleneck=True,
             compression=0.5, stem="imagenet")
