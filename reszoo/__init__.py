"""reszoo: plain, ResNet, pre-activation ResNet and DenseNet models by name, for Keras 3.

    import reszoo
    model = reszoo.create_model("resnet56")
    reszoo.list_models("preact*")
    reszoo.model_card("densenet_bc100_k12")["params"]
    reszoo.create_model("resnet50", weights="resnet50_weights_tf_dim_ordering_tf_kernels.h5")
    reszoo.create_model(weights="runs/resnet20-digits", num_classes=5)   # fine-tune: a new head
"""

from reszoo import naming, registry, transfer, weights  # noqa: F401
from reszoo import optim  # noqa: F401  (registers the training schedule and optimizers)
from reszoo.api import create_model, list_weights, model_card
from reszoo.densenet import densenet
from reszoo.layers import BatchNorm, ImagePreprocess, ResidualAdapter, ResidualScale, ZeroPadShortcut
from reszoo.model import BuildSpec, ZooModel, build_spec, count_params, features
from reszoo.registry import get_spec, list_models, register
from reszoo.resnet import resnet
from reszoo.sizing import match_params

__version__ = "0.1.0"

__all__ = [
    "BatchNorm", "BuildSpec", "ImagePreprocess", "ResidualAdapter", "ResidualScale", "ZeroPadShortcut", "ZooModel",
    "build_spec", "count_params", "create_model", "densenet", "features", "get_spec", "list_models", "list_weights",
    "match_params",
    "model_card", "register", "resnet",
]
