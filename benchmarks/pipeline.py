"""Input pipeline throughput of the CIFAR augmentation (pad 4, random crop, flip; stateless,
per-epoch order) on this machine's cores, against the rate the training step consumes; and a
Keras ``evaluate`` pass (a validation pass of training) through reszoo's eval pipeline, with
tf.data autotuning off as training.data sets it, against the same pipeline with tf.data's
default (autotuning on).

    python -m benchmarks.pipeline [--batches=200]
"""

import argparse
import time

from benchmarks.common import emit, interleaved_rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    import numpy as np

    import reszoo
    from benchmarks.train_step import keras_runner
    from training import data as data_lib

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50_000, 32, 32, 3), dtype=np.uint8)  # CIFAR-10's size and dtype
    y = rng.integers(0, 10, 50_000).astype("int32")
    data = data_lib.Data("synthetic_cifar", (x, y), None, 50_000, 0, [str(i) for i in range(10)],
                         (32, 32, 3), x.mean((0, 1, 2)), x.std((0, 1, 2)), "crop_flip")
    ds = data_lib.train_pipeline(data, args.batch, "crop_flip", seed=0, first_epoch=0, epochs=10)
    iterator = iter(ds)
    for _ in range(10):
        next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
        next(iterator)
    rate = args.batch * args.batches / (time.perf_counter() - start)
    emit(bench="input_pipeline", pipeline="cifar crop_flip", batch=args.batch, images_per_s=round(rate, 1))
    del iterator, ds  # its prefetch threads would compete with the training step below
    import gc
    gc.collect()
    runner = keras_runner(reszoo.create_model("resnet56"), args.batch, 10, (32, 32, 3), 10, "fit")
    step = interleaved_rates({"fit": runner}, args.batch * 10, rounds=2)["fit"][0]
    emit(bench="input_pipeline", consumer="reszoo resnet56 train step (fit)", batch=args.batch,
         images_per_s=round(step, 1), pipeline_headroom=round(rate / step, 2))
    evaluate_rates(x[:4000], y[:4000], args.batch)


def evaluate_rates(x, y, batch):
    import keras
    import tensorflow as tf

    import reszoo
    from training import data as data_lib

    test = tf.data.Dataset.from_tensor_slices((x.astype("float32"), y))
    data = data_lib.Data("synthetic_cifar", None, test, 0, len(y), [str(i) for i in range(10)], (32, 32, 3),
                         None, None, "none")
    ours = data_lib.eval_pipeline(data, batch)
    options = tf.data.Options()
    options.autotune.enabled = True
    default = ours.with_options(options)
    model = reszoo.create_model("resnet20")
    model.compile(loss=keras.losses.CategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    rates = interleaved_rates({"off": lambda: model.evaluate(ours, verbose=0),
                               "on": lambda: model.evaluate(default, verbose=0)}, len(y), rounds=8)
    for key, label in (("off", "reszoo eval pipeline (autotune off)"), ("on", "same, tf.data default (autotune on)")):
        emit(bench="evaluate", model="reszoo resnet20", pipeline=label, images=len(y),
             images_per_s=round(rates[key][0], 1), median_images_per_s=round(rates[key][1], 1),
             slowest_pass_s=round(len(y) / rates[key][2], 2))


if __name__ == "__main__":
    main()
