"""Input pipeline throughput of the CIFAR augmentation (pad 4, random crop, flip; stateless,
per-epoch order) on this machine's cores, against the rate the training step consumes.

    python -m benchmarks.pipeline [--batches=200]
"""

import argparse
import time

from benchmarks.common import emit


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    import numpy as np

    import reszoo
    from benchmarks.train_step import keras_throughput
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
    step = keras_throughput(reszoo.create_model("resnet56"), args.batch, 10, (32, 32, 3), 10, ["fit"], 2)["fit"]
    emit(bench="input_pipeline", consumer="reszoo resnet56 train step (fit)", batch=args.batch,
         images_per_s=round(step, 1), pipeline_headroom=round(rate / step, 2))


if __name__ == "__main__":
    main()
