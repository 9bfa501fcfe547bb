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
