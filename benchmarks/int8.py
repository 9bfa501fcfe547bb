"""int8 and bf16 beside float32 on the CPU: median latency of ResNet-50 (random weights with
BatchNorm statistics, 224 px) at batch 1 and 32 in every runtime an export can be served with
(``training.runtimes``: the float32 SavedModel in TensorFlow, ONNX Runtime float32 and int8,
OpenVINO float32, bf16 and int8, the int8 files made as ``reszoo-export --quantize=int8`` makes
them), in one run, with each file's size and each reduced precision's top-1 agreement with
float32 on held-out random images; and the CPU flags that decide (avx512_vnni, avx512_bf16,
amx_int8, amx_bf16).

    python -m benchmarks.int8 [--model=resnet50 --size=224 --runs=10 --calibration=32 --batches=1,32]
"""

import argparse
import os
import tempfile

from benchmarks.common import emit, latency_ms, machine, randomized
from training.runtimes import cpu_flags

LABELS = {"saved_model": "SavedModel float32 (TensorFlow)", "onnx": "ONNX Runtime float32",
          "onnx_int8": "ONNX Runtime int8", "openvino": "OpenVINO float32", "openvino_bf16": "OpenVINO bf16",
          "openvino_int8": "OpenVINO int8"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    import keras
    import numpy as np
    import tensorflow as tf

    import reszoo
    from training import engines, export, quantize, runtimes

    rng = np.random.default_rng(0)
    model = reszoo.create_model(args.model, input_shape=(args.size, args.size, 3), preprocessing="torch")
    randomized(model, rng)
    x = rng.uniform(0, 255, (args.calibration + 64, args.size, args.size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        core = os.path.join(tmp, "core")
        spec = keras.InputSpec(shape=(None, args.size, args.size, 3), dtype="float32")
        model.export(core, format="tf_saved_model", input_signature=[spec], verbose=False)
        export._export_onnx(core, os.path.join(tmp, runtimes.RUNTIMES["onnx"].file))
        export.export_openvino(tmp)
        held = x[args.calibration:]
        labels = engines.logits(engines.open_runtime("onnx", tmp), held).argmax(1)  # top-1 against float32
        quantize.quantize(tmp, x[:args.calibration], (held, labels), 100.0)
        saved = tf.saved_model.load(core).signatures["serve"]
        runners = {"saved_model": lambda b: saved(tf.constant(b))}
        runners.update({name: engines.open_runtime(name, tmp) for name in LABELS if name != "saved_model"})
        size_mb = {name: sum(os.path.getsize(os.path.join(tmp, f)) for f in runtimes.files_of(runtimes.RUNTIMES[name]))
                   / 2 ** 20 for name in runners if name != "saved_model"}
        size_mb["saved_model"] = sum(os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(core)
                                     for f in fs) / 2 ** 20
        agreement = {name: 100 * float(np.mean(engines.logits(runners[name], held).argmax(1) == labels))
                     for name in runners if name != "saved_model"}
        print(f"{args.model}, {args.size} px; {machine()}; CPU flags: {', '.join(cpu_flags()) or 'none of note'}")
        print("| runtime | " + " | ".join(f"batch {b}: ms, images/s" for b in args.batches.split(","))
              + " | file MB | top-1 agreement with float32 | vs SavedModel at the largest batch |")
        print("|---|" + "---:|" * (len(args.batches.split(",")) + 3))
        times = {name: {batch: latency_ms(run, x[:batch], args.runs) for batch in map(int, args.batches.split(","))}
                 for name, run in runners.items()}
        last = int(args.batches.split(",")[-1])
        for name, by_batch in times.items():
            cells = [f"{t:.1f} ms, {1000 * b / t:.0f}" for b, t in by_batch.items()]
            shown = "-" if name in ("saved_model", "onnx", "openvino") else f"{agreement[name]:.1f}%"
            speedup = times["saved_model"][last] / by_batch[last]
            print(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {size_mb[name]:.1f} | {shown} | {speedup:.2f}x |",
                  flush=True)
            emit(benchmark="int8", model=args.model, size=args.size, runtime=name, size_mb=round(size_mb[name], 2),
                 agreement=agreement.get(name), speedup=speedup, **{f"batch_{b}_ms": round(t, 3)
                                                                     for b, t in by_batch.items()})


if __name__ == "__main__":
    main()
