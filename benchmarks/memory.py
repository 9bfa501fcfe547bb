"""Peak memory of a DenseNet training step, with and without ``memory_efficient=True``
(recomputed concatenation + BN-ReLU, Pleiss et al. 2017). Each configuration runs in its own
process; peak resident memory (ru_maxrss) is reported with the rise over the built model.

    python -m benchmarks.memory [--model=densenet121 --batch=16 --size=224]
"""

import argparse
import json
import subprocess
import sys

from benchmarks.common import emit

CHILD = """
import os, resource, sys, time, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras, reszoo
name, batch, size, efficient = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
model = reszoo.create_model(name, input_shape=(size, size, 3), memory_efficient=efficient)
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
              loss=keras.losses.CategoricalCrossentropy(from_logits=True))
classes = model.output_shape[-1]
x = np.random.rand(batch, size, size, 3).astype("float32")
y = keras.utils.to_categorical(np.arange(batch) % classes, classes)
model.predict(x[:1], verbose=0)
built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.train_on_batch(x, y)
start = time.perf_counter()
for _ in range(3):
    model.train_on_batch(x, y)
step = (time.perf_counter() - start) / 3
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_mb": peak / 1024, "rise_mb": (peak - built) / 1024, "step_s": step}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    for efficient in (False, True):
        proc = subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.size),
                               "1" if efficient else "0"], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr[-2000:])
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        emit(bench="densenet_memory", model=args.model, memory_efficient=efficient, batch=args.batch,
             image_size=args.size, peak_rss_mb=round(result["peak_mb"]), rise_over_built_model_mb=round(result["rise_mb"]),
             step_s=round(result["step_s"], 2))


if __name__ == "__main__":
    main()
