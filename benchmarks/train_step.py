"""Training throughput (images/s) of one optimizer step: reszoo against keras.applications,
an independent Keras CIFAR ResNet-56, and PyTorch eager (in a process of its own: PyTorch and
TensorFlow crash in one process, see benchmarks/torch_peer.py).

    python -m benchmarks.train_step                 # CIFAR ResNet-56 (batch 128) + ImageNet nets (batch 16)
    python -m benchmarks.train_step --nets=cifar --dtype=bfloat16

Paths: ``fit`` is model.fit as users run it (compile defaults); ``fit_spe`` adds
steps_per_execution; ``fit_xla`` adds jit_compile. Every path trains on one repeated batch, so
the input pipeline costs nothing here (benchmarks/pipeline.py measures it). Contenders are
timed in turn, round after round (``common.interleaved_rates``); each line gives the best and
the median round. ``--dtype=bfloat16`` runs Keras under mixed_bfloat16 and PyTorch under
bfloat16 autocast.
"""

import argparse
import sys

from benchmarks.common import PeerError, ProcessPeer, emit, interleaved_rates


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


def keras_runner(model, batch, steps, shape, classes, path, autotune=False):
    """A function running ``steps`` training steps of ``model`` through ``path``, on a dataset
    built as training.data builds them (tf.data autotuning off) unless ``autotune``."""
    import keras
    import numpy as np
    import tensorflow as tf

    from training.data import without_autotune

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, *shape)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, classes, batch), classes)
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    ds = ds if autotune else without_autotune(ds)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                  jit_compile=path == "fit_xla", steps_per_execution=steps if path != "fit" else 1)
    return lambda: model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)


def _report(rates, batch, dtype, labels):
    for key, (best, median, _) in rates.items():
        emit(bench="train_step", **labels[key], batch=batch, dtype=dtype,
             images_per_s=round(best, 1), median_images_per_s=round(median, 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="cifar,imagenet", help="cifar (ResNet-56), imagenet (ResNet-50, DenseNet-121)")
    parser.add_argument("--paths", default="fit,fit_spe", help="fit, fit_spe, fit_xla (XLA: slow on CPU)")
    parser.add_argument("--cifar_batch", type=int, default=128)
    parser.add_argument("--imagenet_batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no_torch", action="store_true")
    args = parser.parse_args()
    import keras

    import reszoo

    paths = args.paths.split(",")
    nets = args.nets.split(",")
    if args.dtype == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    if "cifar" in nets:
        shape, batch, steps = (32, 32, 3), args.cifar_batch, args.steps * 4
        runners, labels = {}, {}
        for label, build in [("reszoo resnet56", lambda: reszoo.create_model("resnet56")),
                             ("keras resnet56 (independent)", lambda: keras_cifar_resnet56(keras))]:
            for path in paths:
                runners[label, path] = keras_runner(build(), batch, steps, shape, 10, path)
                labels[label, path] = dict(model=label, path=path)
        runners["autotune"] = keras_runner(reszoo.create_model("resnet56"), batch, steps, shape, 10, "fit", autotune=True)
        labels["autotune"] = dict(model="reszoo resnet56", path="fit, tf.data default (autotune on)")
        peer = None
        if not args.no_torch:
            try:
                peer = ProcessPeer([sys.executable, "-m", "benchmarks.torch_peer", f"--batch={batch}",
                                    f"--steps={steps}", f"--dtype={args.dtype}"])
            except PeerError as err:
                emit(bench="train_step", model="torch resnet56", skipped=str(err))
            else:
                runners["torch"] = peer
                labels["torch"] = dict(model="torch resnet56", path="eager channels_last, own process",
                                       backend=peer.version)
        try:
            _report(interleaved_rates(runners, batch * steps, args.repeats), batch, args.dtype, labels)
        finally:
            if peer is not None:
                peer.close()
    if "imagenet" in nets:
        shape, batch = (224, 224, 3), args.imagenet_batch
        for pair in ([("reszoo resnet50", lambda: reszoo.create_model("resnet50")),
                      ("keras.applications ResNet50",
                       lambda: keras.applications.ResNet50(weights=None, classifier_activation=None))],
                     [("reszoo densenet121", lambda: reszoo.create_model("densenet121")),
                      ("keras.applications DenseNet121",
                       lambda: keras.applications.DenseNet121(weights=None, classifier_activation=None))]):
            runners, labels = {}, {}
            for label, build in pair:
                for path in paths:
                    runners[label, path] = keras_runner(build(), batch, args.steps, shape, 1000, path)
                    labels[label, path] = dict(model=label, path=path)
            _report(interleaved_rates(runners, batch * args.steps, args.repeats), batch, args.dtype, labels)


if __name__ == "__main__":
    main()
