"""Inference on the CPU, every runtime an export is served with, side by side in one run.

Speed (``--models``): ResNet-20 trained on the digits (by ``training.train``), and ResNet-50,
DenseNet-121 and ResNeXt-50 at 224 px with random weights and BatchNorm statistics. Each is
exported as ``reszoo-export --quantize=int8`` exports it (``training.common.runtimes``: the float32
SavedModel in TensorFlow, ONNX Runtime float32 and int8, OpenVINO float32, bf16 and int8, LiteRT
int8), and each file is timed: load seconds, median latency and images/s at batch 1 and 32, file
size, top-1 agreement with float32 on held-out images. Beside them: the SavedModel under
TensorFlow's oneDNN bf16 rewrite (grappler's ``auto_mixed_precision_onednn_bfloat16``, on for
its calls alone; no export option turns it on), keras.applications' net of the same name exported with Keras'
``model.export``, and torchvision's in PyTorch eager float32 (its own process), where they exist.

Accuracy (``--accuracy``): nets trained on the digits by ``training.train`` (ResNet-20, ResNet-56,
DenseNet-40) and one fine-tuned from published weights (``timm/resnet18.a1_in1k``, random with
BatchNorm statistics as tests/timm_reference.py writes them into an offline Hugging Face cache),
exported by ``training.export --quantize=int8``: float32 and int8 top-1, their agreement and the
images int8 lost and gained on the run's test split, as the export measured and wrote them into
its metadata; with ``--seeds=N``, each net trained N times and the means over them.

The CPU flags that decide int8 and bf16 (avx512_vnni, avx512_bf16, amx_int8, amx_bf16) head the
output.

    python -m benchmarks.inference [--models=resnet20_digits,resnet50,densenet121,resnext50_32x4d
        --batches=1,32 --runs=10 --calibration=32 --accuracy=resnet20,resnet56,densenet40,resnet18_timm
        --seeds=1]
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.common import emit, latency_ms, machine, randomized
from benchmarks.digits import digit_folder
from training.common.runtimes import INT8, cpu_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LABELS = {"saved_model": "SavedModel float32 (TensorFlow)", "saved_model_bf16": "SavedModel, TensorFlow's oneDNN bf16",
          "onnx": "ONNX Runtime float32", "onnx_int8": "ONNX Runtime int8", "openvino": "OpenVINO float32",
          "openvino_bf16": "OpenVINO bf16", "openvino_int8": "OpenVINO int8", "litert_int8": "LiteRT int8",
          "keras_applications": "keras.applications, model.export (float32)",
          "torch_eager": "PyTorch eager float32 (torchvision's net, own process)"}
KERAS_APPLICATIONS = {"resnet50": "ResNet50", "densenet121": "DenseNet121"}
DIGITS_SPEED = "resnet20_digits"  # the speed row of the digits' ResNet-20, trained as --accuracy trains it


@dataclasses.dataclass(frozen=True)
class DigitsNet:
    """A net of the accuracy table: its training flags and epochs, and the published weights it
    is fine-tuned from (``ARCH.TAG``, in an offline cache of random ones)."""

    label: str
    epochs: int
    train: tuple
    timm: str = None


DIGITS = {
    "resnet20": DigitsNet("ResNet-20, digits", 15, ("--model=resnet20",)),
    "resnet56": DigitsNet("ResNet-56, digits (the default recipe)", 30, ("--model=resnet56",)),
    "densenet40": DigitsNet("DenseNet-40 (k=12), digits", 15, ("--model=densenet40_k12",)),
    "resnet18_timm": DigitsNet("ResNet-18 fine-tuned from timm/resnet18.a1_in1k, digits at 32 px", 5,
                               ("--image_size=32", "--validation_split=0.2", "--init_from=timm/resnet18.a1_in1k"),
                               timm="resnet18.a1_in1k"),
}

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


def _command(*argv, **env):
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})
    if proc.returncode != 0:
        sys.exit(f"benchmark: {' '.join(argv[:2])} failed (exit {proc.returncode}): "
                 f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc


def trained(name, work, epochs, seed=0):
    """The run folder of the digits net ``name`` trained with ``--seed=seed`` (its weights'
    draw and its batches' order; a folder's split too), trained in ``work`` unless it is there."""
    net, run = DIGITS[name], os.path.join(work, name if seed == 0 else f"{name}_seed{seed}")
    if os.path.isfile(os.path.join(run, "last.keras")):
        return run
    flags, env = [*net.train, f"--epochs={epochs or net.epochs}", f"--seed={seed}"], {}
    if net.timm:
        hub, folder = os.path.join(work, "hub"), os.path.join(work, "digit_pngs")
        arch, tag = net.timm.split(".", 1)
        if not os.path.isfile(os.path.join(work, "timm_out", f"{arch}.npz")):  # written after its hub entries
            _command(os.path.join(ROOT, "tests", "timm_reference.py"), f"--cache={hub}", f"--out={work}/timm_out",
                     "--sizes=64", f"{arch}:{tag}")
        if not os.path.isdir(folder):  # written whole under another name, then renamed: a kill leaves no half
            shutil.rmtree(folder + ".part", ignore_errors=True)
            os.replace(digit_folder(folder + ".part"), folder)
        flags += ["--dataset=folder", f"--data_dir={folder}"]
        env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": hub}
    _command("-m", "training.train", *flags, f"--model_dir={run}", **env)
    return run


def _int8_records(run, work, name):
    """The export of ``run`` with ``--quantize=int8`` (nothing refused, so every file's numbers
    show): its metadata's int8 records."""
    out = os.path.join(work, "saved_models")
    _command("-m", "training.export", f"--model_dir={run}", f"--export_dir={out}", f"--name={name}",
             "--quantize=int8", "--max_accuracy_drop=100")
    version = os.path.join(out, name, max(os.listdir(os.path.join(out, name)), key=int))
    with open(os.path.join(version, "metadata.json")) as f:
        return json.load(f)["int8"]


def _per_runtime(records, fmt, missing="-"):
    """``fmt`` of each int8 runtime's record, joined with " / " (``missing`` where it is None)."""
    return " / ".join(missing if records[r] is None else fmt(records[r]) for r in INT8)


def _cells(int8):
    """The table's cells of one export's int8 records: float32 top-1, each runtime's int8
    top-1, agreement, and images lost / gained (a file its runtime could not run has none)."""
    ran = {r: int8[r] if "top1_int8" in int8[r] else None for r in INT8}
    return (f"{int8['onnx_int8']['top1_float32']:.2f}%",
            _per_runtime(ran, lambda m: f"{m['top1_int8']:.2f}%", missing="can't run"),
            _per_runtime(ran, lambda m: f"{m['top1_agreement']:.1f}%"),
            _per_runtime(ran, lambda m: f"{m['images_lost']}/{m['images_gained']}"))


def accuracy(names, work, epochs, seeds=1):
    """Each digits net trained ``seeds`` times (``--seed`` 0, 1...), each run exported with
    ``--quantize=int8``: a row per training, and with more than one, their mean top-1 and the
    images lost and gained over all of them (one test split tells int8's loss only in steps of
    one image, 0.28 points of the digits')."""
    print("\n| net | float32 top-1 | int8 top-1: ONNX Runtime / OpenVINO / LiteRT | agreement with float32 "
          "| images lost / gained |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        label = f"{DIGITS[name].label}, {epochs or DIGITS[name].epochs} epochs"
        found = []
        for seed in range(seeds):
            run = trained(name, work, epochs, seed)
            int8 = _int8_records(run, work, os.path.basename(run))
            found.append(int8)
            images = int8["onnx_int8"]["validation_images"]
            print(f"| {label}{f', seed {seed}' if seeds > 1 else ''} ({images} test images) | "
                  + " | ".join(_cells(int8)) + " |", flush=True)
            emit(benchmark="inference_accuracy", net=name, seed=seed, images=images,
                 top1_float32=int8["onnx_int8"]["top1_float32"],
                 **{r: {k: int8[r].get(k) for k in ("top1_int8", "top1_agreement", "images_lost", "images_gained")}
                    for r in INT8})
        if seeds > 1:
            mean = mean_of(found)
            print(mean_row(f"{label}, mean of {seeds} trainings", mean), flush=True)
            emit(benchmark="inference_accuracy_mean", net=name, seeds=seeds, **mean)


def mean_of(found):
    """The int8 records of several exports of one net pooled: mean top-1s, and the images lost
    and gained summed over all their test splits; a runtime that could not run one of them has
    None."""
    pooled = {"images": sum(f["onnx_int8"]["validation_images"] for f in found),
              "top1_float32": sum(f["onnx_int8"]["top1_float32"] for f in found) / len(found)}
    for r in INT8:
        pooled[r] = None if any("top1_int8" not in f[r] for f in found) else {
            "top1_int8": sum(f[r]["top1_int8"] for f in found) / len(found),
            "images_lost": sum(f[r]["images_lost"] for f in found),
            "images_gained": sum(f[r]["images_gained"] for f in found)}
    return pooled


def mean_row(label, mean):
    """``mean_of``'s table row: mean top-1s with the points each runtime lost, and the sums."""
    top1 = _per_runtime(mean, lambda m: f"{m['top1_int8']:.2f}%")
    lost = _per_runtime(mean, lambda m: f"{mean['top1_float32'] - m['top1_int8']:.2f}")
    flips = _per_runtime(mean, lambda m: f"{m['images_lost']}/{m['images_gained']}")
    return (f"| {label} ({mean['images']} test predictions) | {mean['top1_float32']:.2f}% | {top1} "
            f"(points lost: {lost}) | | {flips} |")


def _size_mb(folder, files=None):
    """MB of ``files`` in ``folder``, or of everything under it."""
    paths = ([os.path.join(folder, f) for f in files] if files is not None else
             [os.path.join(root, f) for root, _, fs in os.walk(folder) for f in fs])
    return sum(map(os.path.getsize, paths)) / 2 ** 20


def _timed_load(open_file):
    start = time.perf_counter()
    run = open_file()
    return run, time.perf_counter() - start


def speed(label, name, model, calibration, held, batches, runs):
    """``model`` exported to every runtime's file, int8 calibrated on ``calibration``, each file
    timed; agreement with float32's top-1 on ``held``. One table row each."""
    import numpy as np
    import tensorflow as tf

    from training import exporter, quantize
    from training.common import engines, runtimes

    image_shape = tuple(model.input_shape[1:])
    with tempfile.TemporaryDirectory() as tmp:
        core = os.path.join(tmp, "core")
        exporter.export_core(model, core, image_shape)
        exporter._export_onnx(core, os.path.join(tmp, runtimes.RUNTIMES["onnx"].file))
        exporter.export_openvino(tmp)
        labels = engines.logits(engines.open_runtime("onnx", tmp), held).argmax(1)
        quantize.quantize(tmp, core, calibration, (held, labels), 100.0)
        saved, load_s = {}, {}
        saved["saved_model"], load_s["saved_model"] = _timed_load(lambda: tf.saved_model.load(core).signatures["serve"])
        saved["saved_model_bf16"], load_s["saved_model_bf16"] = _timed_load(
            lambda: tf.saved_model.load(core).signatures["serve"])
        runners = {"saved_model": lambda b: saved["saved_model"](tf.constant(b)),
                   "saved_model_bf16": lambda b: next(iter(saved["saved_model_bf16"](tf.constant(b)).values())).numpy()}
        for runtime in runtimes.RUNTIMES:
            if runtime != "saved_model":
                runners[runtime], load_s[runtime] = _timed_load(lambda: engines.open_runtime(runtime, tmp))
        size_mb = {r: _size_mb(tmp, runtimes.files_of(runtimes.RUNTIMES[r])) for r in runtimes.RUNTIMES if r != "saved_model"}
        size_mb["saved_model"] = size_mb["saved_model_bf16"] = _size_mb(core)
        if name in KERAS_APPLICATIONS and image_shape == (224, 224, 3):
            import keras

            peer = os.path.join(tmp, "keras_applications")
            getattr(keras.applications, KERAS_APPLICATIONS[name])(weights=None).export(
                peer, format="tf_saved_model", verbose=False)
            loaded, load_s["keras_applications"] = _timed_load(lambda: tf.saved_model.load(peer))
            runners["keras_applications"] = lambda b: loaded.serve(tf.constant(b))
            size_mb["keras_applications"] = _size_mb(peer)
        agreement, times = {}, {}
        for runtime, run in runners.items():
            # TensorFlow picks the graph a call runs by the options in force at the call (the
            # rewrite is cached per option set and input shape): on for this runtime alone.
            tf.config.optimizer.set_experimental_options(
                {"auto_mixed_precision_onednn_bfloat16": runtime == "saved_model_bf16"})
            if runtime in INT8 or runtime.endswith("_bf16"):
                agreement[runtime] = 100 * float(np.mean(engines.logits(run, held).argmax(1) == labels))
            times[runtime] = {b: latency_ms(run, held[:b] if b <= len(held) else np.resize(held, (b, *image_shape)),
                                            runs) for b in batches}
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision_onednn_bfloat16": False})
        if image_shape[-1] == 3:
            eager = torch_eager(name, image_shape[0], batches, runs)
            if eager is not None:
                times["torch_eager"] = eager
        last = batches[-1]
        for runtime, by_batch in times.items():
            cells = [f"{t:.{1 if t >= 10 else 2}f} ms, {1000 * b / t:,.0f}" for b, t in by_batch.items()]
            shown = f"{agreement[runtime]:.1f}%" if runtime in agreement else "-"
            speedup = times["saved_model"][last] / by_batch[last]
            mb = f"{size_mb[runtime]:.1f}" if runtime in size_mb else "-"
            loaded = f"{load_s[runtime]:.2f}" if runtime in load_s else "-"
            print(f"| {label} | {LABELS[runtime]} | {loaded} | " + " | ".join(cells)
                  + f" | {mb} | {shown} | {speedup:.2f}x |", flush=True)
            emit(benchmark="inference", model=name, runtime=runtime, load_s=load_s.get(runtime),
                 size_mb=round(size_mb[runtime], 2) if runtime in size_mb else None, agreement=agreement.get(runtime),
                 speedup=speedup, **{f"batch_{b}_ms": round(t, 3) for b, t in by_batch.items()})


def _digits_case(run):
    """The trained digits ResNet-20 and its own data, as the export calibrates and checks it."""
    from training import exporter, quantize
    from training.common import files

    path, _, run_flags = exporter._read_run(run, "last")
    model = files.load_model(path, "--model_dir")
    calibration, held, _ = quantize.held_data(exporter.Int8Options(), run_flags,
                                              tuple(model.input_shape[1:]), None)
    return model, calibration, held[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=f"{DIGITS_SPEED},resnet50,densenet121,resnext50_32x4d")
    parser.add_argument("--size", type=int, default=224, help="the side of the random-weight models' images")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calibration", type=int, default=32, help="random images calibrating the random nets")
    parser.add_argument("--accuracy", default=",".join(DIGITS), help="digits nets (none: '')")
    parser.add_argument("--epochs", type=int, default=0, help="every digits net trained this long (0: its own)")
    parser.add_argument("--seeds", type=int, default=1, help="trainings of each digits net (--seed 0, 1...)")
    parser.add_argument("--work_dir", default=None, help="keeps the digits runs (and reuses those found there)")
    args = parser.parse_args()
    models = [m for m in args.models.split(",") if m]
    nets = [n for n in args.accuracy.split(",") if n]
    unknown = sorted(set(nets) - set(DIGITS))
    if unknown:
        parser.error(f"--accuracy: unknown {unknown}; known: {sorted(DIGITS)}")
    if args.seeds < 1:
        parser.error(f"--seeds={args.seeds}: train each digits net at least once")
    batches = [int(b) for b in args.batches.split(",")]
    import numpy as np

    import reszoo

    unknown = [m for m in models if m != DIGITS_SPEED and m not in reszoo.list_models()]
    if unknown:
        parser.error(f"--models: unknown {unknown}; {DIGITS_SPEED} or a registered model")
    work = args.work_dir or tempfile.mkdtemp(prefix="reszoo-inference-")
    print(f"{machine()}; CPU flags: {', '.join(cpu_flags()) or 'none of note'}", flush=True)
    if nets:
        accuracy(nets, work, args.epochs, args.seeds)
    print("\n| model | runtime | load s | " + " | ".join(f"batch {b}: ms, images/s" for b in batches)
          + f" | file MB | top-1 agreement with float32 | vs SavedModel at batch {batches[-1]} |")
    print("|---|---|" + "---:|" * (len(batches) + 4))
    rng = np.random.default_rng(0)
    for name in models:
        if name == DIGITS_SPEED:
            model, calibration, held = _digits_case(trained("resnet20", work, args.epochs))
            label = "ResNet-20, digits (8 x 8)"
        else:
            model = randomized(reszoo.create_model(name, input_shape=(args.size, args.size, 3), preprocessing="torch"),
                               rng)
            x = rng.uniform(0, 255, (args.calibration + 64, args.size, args.size, 3)).astype("float32")
            calibration, held, label = x[:args.calibration], x[args.calibration:], f"{name}, {args.size} px"
        speed(label, name, model, calibration, held, batches, args.runs)


if __name__ == "__main__":
    main()
