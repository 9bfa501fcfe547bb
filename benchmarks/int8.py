"""int8 beside float32 on the CPU: median latency of ResNet-50 (random weights with BatchNorm
statistics, 224 px) at batch 1 and 16 as the float32 SavedModel (TensorFlow), as ONNX Runtime
float32 (tf2onnx's model.onnx) and as ONNX Runtime int8 (``training.quantize``, what
``reszoo-export --quantize=int8`` writes), in one run, with the int8 model's top-1 agreement
with float32 on held-out random images.

    python -m benchmarks.int8 [--model=resnet50 --size=224 --runs=10 --calibration=32]
"""

import argparse
import os
import tempfile

from benchmarks.common import emit, latency_ms, machine, randomized


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--batches", default="1,16")
    args = parser.parse_args()
    import keras
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    import reszoo
    from training import export, quantize

    rng = np.random.default_rng(0)
    model = reszoo.create_model(args.model, input_shape=(args.size, args.size, 3), preprocessing="torch")
    randomized(model, rng)
    x = rng.uniform(0, 255, (args.calibration + 64, args.size, args.size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        core = os.path.join(tmp, "core")
        spec = keras.InputSpec(shape=(None, args.size, args.size, 3), dtype="float32")
        model.export(core, format="tf_saved_model", input_signature=[spec], verbose=False)
        export._export_onnx(core, os.path.join(tmp, "model.onnx"))
        held = x[args.calibration:]
        float_session = ort.InferenceSession(os.path.join(tmp, "model.onnx"), providers=["CPUExecutionProvider"])
        labels = float_session.run(["logits"], {"images": held})[0].argmax(1)  # top-1 against float32 = agreement
        report = quantize.quantize(os.path.join(tmp, "model.onnx"), os.path.join(tmp, "model_int8.onnx"),
                                   x[:args.calibration], (held, labels), 100.0)
        int8_session = ort.InferenceSession(os.path.join(tmp, "model_int8.onnx"), providers=["CPUExecutionProvider"])
        saved = tf.saved_model.load(core).signatures["serve"]
        runners = {"SavedModel float32 (TensorFlow)": lambda b: saved(tf.constant(b)),
                   "ONNX Runtime float32": lambda b: float_session.run(["logits"], {"images": b}),
                   "ONNX Runtime int8": lambda b: int8_session.run(["logits"], {"images": b})}
        print(f"| {args.model}, {args.size} px ({machine()}) | " + " | ".join(runners) + " | int8 / SavedModel |")
        print("|---|" + "---:|" * (len(runners) + 1))
        for batch in map(int, args.batches.split(",")):
            times = {name: latency_ms(run, x[:batch], args.runs) for name, run in runners.items()}
            speedup = times["SavedModel float32 (TensorFlow)"] / times["ONNX Runtime int8"]
            print(f"| batch {batch} | " + " | ".join(f"{t:.1f} ms" for t in times.values()) + f" | {speedup:.2f}x |",
                  flush=True)
            emit(benchmark="int8", model=args.model, size=args.size, batch=batch, speedup=speedup,
                 **{name: round(t, 2) for name, t in times.items()})
        print(f"int8 top-1 agreement with float32 on {len(held)} random images: {report['top1_agreement']:.1f}%")


if __name__ == "__main__":
    main()
