"""Serving: load time and latency (batch 1 and 32) of reszoo's exported SavedModel
(training.export: signatures, top-k, preprocessing inside) against keras.applications'
equivalent exported with Keras' own ``model.export``, both through ``tf.saved_model.load``.

    python -m benchmarks.inference [--model=resnet50 --runs=10]
"""

import argparse
import json
import os
import tempfile
import time

from benchmarks.common import emit, latency_ms

PEERS = {"resnet50": "ResNet50", "densenet121": "DenseNet121"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", choices=sorted(PEERS))
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf

    import reszoo
    from training import exporter

    tmp = tempfile.mkdtemp(prefix="reszoo-bench-")
    run_dir = os.path.join(tmp, "run")
    os.makedirs(run_dir)
    reszoo.create_model(args.model).save(os.path.join(run_dir, "last.keras"))
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"model": args.model, "dataset": "imagenet"}, f)
    ours = exporter.export(run_dir, os.path.join(tmp, "saved_models"))
    peer = os.path.join(tmp, "peer")
    getattr(keras.applications, PEERS[args.model])(weights=None).export(peer, format="tf_saved_model", verbose=False)

    for label, path, call in [
        (f"reszoo {args.model} (training.export)", ours,
         lambda m: (lambda x: m.signatures["serving_default"](images=x))),
        (f"keras.applications {PEERS[args.model]} (model.export)", peer, lambda m: m.serve),
    ]:
        start = time.perf_counter()
        loaded = tf.saved_model.load(path)
        load_s = time.perf_counter() - start
        fn = call(loaded)
        for batch in (1, 32):
            x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, 224, 224, 3)).astype("float32"))
            emit(bench="serving", model=label, batch=batch, load_s=round(load_s, 2),
                 latency_ms=round(latency_ms(fn, x, args.runs if batch == 1 else max(3, args.runs // 3)), 1))


if __name__ == "__main__":
    main()
