"""Training throughput (images/s) of one optimizer step: reszoo against keras.applications,
an independent Keras CIFAR ResNet-56, and PyTorch eager, in one process.

    python -m benchmarks.train_step                 # CIFAR ResNet-56 (batch 128) + ImageNet nets (batch 16)
    python -m benchmarks.train_step --nets=cifar --torch

Paths: ``fit`` is model.fit as users run it (compile defaults); ``fit_spe`` adds
steps_per_execution; ``fit_xla`` adds jit_compile. Every path trains on one repeated batch, so
the input pipeline costs nothing here (benchmarks/pipeline.py measures it).
"""

import argparse
import os

from benchmarks.common import best_time, emit


def keras_cifar_resnet56(keras, num_classes=10):
    """An independent Keras CIFAR ResNet-56: the keras.io "ResNet v1 for CIFAR-10" layout
    (conv-BN-ReLU, 1x1 projection where the shape changes), with stock Keras layers."""
    layers = keras.layers

    def conv_bn(x, filters, strides=1, relu=True, kernel=3):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          kernel_initializer="he_normal")(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu")(x) if relu else x

    inputs = keras.Input((32, 32, 3))
    x = conv_bn(inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(9):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, filters, strides)
            y = conv_bn(y, filters, relu=False)
            if strides > 1:
                x = conv_bn(x, filters, strides, relu=False, kernel=1)
            x = layers.Activation("relu")(layers.add([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x), name="keras_resnet56")


def torch_resnet56():
    """ResNet-56 of He et al. 2015 in PyTorch (option A shortcuts), for the eager peer."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            if self.extra:
                s = nn.functional.pad(s, (0, 0, 0, 0, 0, self.extra))
            return torch.relu(y + s)

    blocks, cin = [], 16
    for stage, cout in enumerate((16, 32, 64)):
        for b in range(9):
            blocks.append(Block(cin, cout, 2 if stage > 0 and b == 0 else 1))
            cin = cout
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def keras_throughput(model, batch, steps, shape, classes, paths, repeats):
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, *shape)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, classes, batch), classes)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    results = {}
    for path in paths:
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                      jit_compile=path == "fit_xla", steps_per_execution=steps if path != "fit" else 1)
        seconds = best_time(lambda: model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0), repeats)
        results[path] = batch * steps / seconds
    return results


def torch_throughput(model, batch, steps, shape, classes, repeats, compile_=False):
    import torch

    torch.set_num_threads(os.cpu_count())
    model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, shape[2], shape[0], shape[1]).to(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(step_model(x), y).backward()
            opt.step()

    return batch * steps / best_time(run, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="cifar,imagenet", help="cifar (ResNet-56), imagenet (ResNet-50, DenseNet-121)")
    parser.add_argument("--paths", default="fit,fit_spe", help="fit, fit_spe, fit_xla (XLA: slow on CPU)")
    parser.add_argument("--cifar_batch", type=int, default=128)
    parser.add_argument("--imagenet_batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args()
    import keras

    import reszoo

    paths = args.paths.split(",")
    nets = args.nets.split(",")
    if "cifar" in nets:
        shape, batch = (32, 32, 3), args.cifar_batch
        for label, build in [("reszoo resnet56", lambda: reszoo.create_model("resnet56")),
                             ("keras resnet56 (independent)", lambda: keras_cifar_resnet56(keras))]:
            for path, rate in keras_throughput(build(), batch, args.steps * 4, shape, 10, paths, args.repeats).items():
                emit(bench="train_step", model=label, path=path, batch=batch, images_per_s=round(rate, 1))
        if not args.no_torch:
            import torch
            rate = torch_throughput(torch_resnet56(), batch, args.steps * 4, shape, 10, args.repeats)
            emit(bench="train_step", model="torch resnet56", path="eager channels_last", batch=batch,
                 images_per_s=round(rate, 1), backend=f"torch {torch.__version__}")
    if "imagenet" in nets:
        shape, batch = (224, 224, 3), args.imagenet_batch
        for label, build in [
            ("reszoo resnet50", lambda: reszoo.create_model("resnet50")),
            ("keras.applications ResNet50", lambda: keras.applications.ResNet50(weights=None, classifier_activation=None)),
            ("reszoo densenet121", lambda: reszoo.create_model("densenet121")),
            ("keras.applications DenseNet121", lambda: keras.applications.DenseNet121(weights=None, classifier_activation=None)),
        ]:
            for path, rate in keras_throughput(build(), batch, args.steps, shape, 1000, paths, args.repeats).items():
                emit(bench="train_step", model=label, path=path, batch=batch, images_per_s=round(rate, 1))


if __name__ == "__main__":
    main()
