"""int8 and bf16 beside float32 on the CPU: median latency of ResNet-50 (random weights with
BatchNorm statistics, 224 px) at batch 1 and 32 in every runtime an export can be served with
(``training.common.runtimes``: the float32 SavedModel in TensorFlow, ONNX Runtime float32 and int8,
OpenVINO float32, bf16 and int8, LiteRT int8, the int8 files made as ``reszoo-export --quantize=int8`` makes
them), and the SavedModel under TensorFlow's oneDNN bf16 rewrite (grappler's
``auto_mixed_precision_onednn_bfloat16``, which no export option turns on), in one run, with each file's size and each reduced precision's top-1 agreement with
float32 on held-out random images; beside them torchvision's net of the same name in PyTorch
eager (where torchvision has one); and the CPU flags that decide (avx512_vnni, avx512_bf16,
amx_int8, amx_bf16). ``--model=densenet121`` or ``resnext50_32x4d`` measure those.

    python -m benchmarks.int8 [--model=resnet50 --size=224 --runs=10 --calibration=32 --batches=1,32]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import emit, latency_ms, machine, randomized
from training.common.runtimes import cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LABELS = {"saved_model": "SavedModel float32 (TensorFlow)", "saved_model_bf16": "SavedModel, TensorFlow's oneDNN bf16",
          "onnx": "ONNX Runtime float32",
          "onnx_int8": "ONNX Runtime int8", "openvino": "OpenVINO float32", "openvino_bf16": "OpenVINO bf16",
          "openvino_int8": "OpenVINO int8", "litert_int8": "LiteRT int8",
          "torch_eager": "PyTorch eager float32 (torchvision's net, own process)"}

# PyTorch eager float32, torchvision's net of the same name, in a process of its own (PyTorch
# beside TensorFlow in one process crashes): median ms per batch size, as latency_ms measures.
TORCH_EAGER = r"""
import json, sys, torch, torchvision
from benchmarks.common import latency_ms
name, size, batches, runs = sys.argv[1], int(sys.argv[2]), [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4])
model = getattr(torchvision.models, name)().eval().to(memory_format=torch.channels_last)
with torch.inference_mode():
    found = {batch: latency_ms(model, torch.rand(batch, 3, size, size).to(memory_format=torch.channels_last), runs)
             for batch in batches}
print("RESULT" + json.dumps(found))
"""


def torch_eager(name, size, batches, runs):
    """``{batch: ms}`` of torchvision's ``name`` in PyTorch eager, or None where torchvision has
    no such net (or PyTorch is not installed)."""
    proc = subprocess.run([sys.executable, "-c", TORCH_EAGER, name, str(size), ",".join(map(str, batches)),
                           str(runs)], capture_output=True, text=True, cwd=ROOT)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT")), None)
    return None if line is None else {int(b): t for b, t in json.loads(line[len("RESULT"):]).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--batches", default="1,32")
    args = parser.parse_args()
    import numpy as np
    import tensorflow as tf

    import reszoo
    from training import exporter, quantize
    from training.common import engines, runtimes

    rng = np.random.default_rng(0)
    model = reszoo.create_model(args.model, input_shape=(args.size, args.size, 3), preprocessing="torch")
    randomized(model, rng)
    x = rng.uniform(0, 255, (args.calibration + 64, args.size, args.size, 3)).astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        core = os.path.join(tmp, "core")
        exporter.export_core(model, core, (args.size, args.size, 3))
        exporter._export_onnx(core, os.path.join(tmp, runtimes.RUNTIMES["onnx"].file))
        exporter.export_openvino(tmp)
        held = x[args.calibration:]
        labels = engines.logits(engines.open_runtime("onnx", tmp), held).argmax(1)  # top-1 against float32
        quantize.quantize(tmp, core, x[:args.calibration], (held, labels), 100.0)
        saved = tf.saved_model.load(core).signatures["serve"]
        saved(tf.constant(x[:1]))  # its graph optimised as float32 before the bf16 rewrite is switched on
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": True})
        saved_bf16 = tf.saved_model.load(core).signatures["serve"]
        runners = {"saved_model": lambda b: saved(tf.constant(b)),
                   "saved_model_bf16": lambda b: next(iter(saved_bf16(tf.constant(b)).values())).numpy()}
        runners.update({name: engines.open_runtime(name, tmp) for name in runtimes.RUNTIMES if name != "saved_model"})
        size_mb = {name: sum(os.path.getsize(os.path.join(tmp, f)) for f in runtimes.files_of(runtimes.RUNTIMES[name]))
                   / 2 ** 20 for name in runtimes.RUNTIMES if name != "saved_model"}
        size_mb["saved_model"] = size_mb["saved_model_bf16"] = sum(
            os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(core) for f in fs) / 2 ** 20
        agreement = {name: 100 * float(np.mean(engines.logits(runners[name], held).argmax(1) == labels))
                     for name in runners if name != "saved_model"}
        print(f"{args.model}, {args.size} px; {machine()}; CPU flags: {', '.join(cpu_flags()) or 'none of note'}")
        print("| runtime | " + " | ".join(f"batch {b}: ms, images/s" for b in args.batches.split(","))
              + " | file MB | top-1 agreement with float32 | vs SavedModel at the largest batch |")
        print("|---|" + "---:|" * (len(args.batches.split(",")) + 3))
        batches = [int(b) for b in args.batches.split(",")]
        times = {name: {batch: latency_ms(run, x[:batch], args.runs) for batch in batches}
                 for name, run in runners.items()}
        eager = torch_eager(args.model, args.size, batches, args.runs)
        if eager is not None:
            times["torch_eager"] = eager
        last = batches[-1]
        for name, by_batch in times.items():
            cells = [f"{t:.1f} ms, {1000 * b / t:.0f}" for b, t in by_batch.items()]
            shown = f"{agreement[name]:.1f}%" if name in runtimes.INT8 or name.endswith("_bf16") else "-"
            speedup = times["saved_model"][last] / by_batch[last]
            mb = f"{size_mb[name]:.1f}" if name in size_mb else "-"
            print(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {mb} | {shown} | {speedup:.2f}x |", flush=True)
            emit(benchmark="int8", model=args.model, size=args.size, runtime=name,
                 size_mb=round(size_mb[name], 2) if name in size_mb else None, agreement=agreement.get(name),
                 speedup=speedup, **{f"batch_{b}_ms": round(t, 3) for b, t in by_batch.items()})


if __name__ == "__main__":
    main()
