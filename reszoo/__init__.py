"""reszoo: plain, ResNet, pre-activation ResNet and DenseNet models by name, for Keras 3.

    import reszoo
    model = reszoo.create_model("resnet56")
    reszoo.list_models("preact*")
    reszoo.model_card("densenet_bc100_k12")["params"]
    reszoo.weights.create_model("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels.h5")
"""

from reszoo import optim  # noqa: F401  (registers the training schedule and optimizers)
from reszoo import weights  # noqa: F401  (keras.applications weights in)
from reszoo import zoo as _zoo  # noqa: F401  (registers the catalogue)
from reszoo.densenet import densenet
from reszoo.layers import BatchNorm, ImagePreprocess, ResidualScale, ZeroPadShortcut
from reszoo.registry import count_params, create_model, get_spec, list_models, model_card
from reszoo.resnet import resnet
from reszoo.sizing import match_params

__version__ = "0.1.0"

__all__ = [
    "BatchNorm", "ImagePreprocess", "ResidualScale", "ZeroPadShortcut", "count_params", "create_model",
    "densenet", "get_spec", "list_models", "match_params", "model_card", "resnet",
]
