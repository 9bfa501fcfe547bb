"""GPU training speed: reszoo (Keras 3 on JAX, ``model.fit``) beside torchvision's same networks
in PyTorch, eager and ``torch.compile``, one process per contender, in one run.

    python -m benchmarks.gpu --out=results/          # ResNet-50 and DenseNet-121 (224 px, batch
                                                     # 256), CIFAR ResNet-56 (batch 512), float32
                                                     # and bfloat16, every contender
    python -m benchmarks.gpu --tiny --steps=2        # the same code on a CPU, small nets

Each contender trains one network at one precision in a fresh process (``--child``): it builds
the net channels-last, runs warm-up steps (compilation), then times ``--steps`` optimizer steps
(SGD with momentum, cross-entropy, random data on the device) and reports images/s, the peak
device memory of training and its parameter count. reszoo runs under ``keras.config`` dtype
policy ``mixed_bfloat16`` for bfloat16, PyTorch under bf16 autocast. The parent writes every
result to ``OUT/gpu.json`` as soon as it has it and prints a table at the end, with each ratio
and ResNet-50's achieved TFLOP/s (3 x MACs x 2 per image: forward and two backward products)
as a fraction of ``--peak_tflops`` (the H200's dense bfloat16 peak by default), so a run cut
short still returns what it measured. The runs go in order of importance, and none starts that
the time left (``--budget_s``) cannot hold.
"""

import argparse
import json
import os
import subprocess
import sys
import time

CONTENDERS = ("reszoo_jax", "torch_eager", "torch_compile")
DTYPES = ("bfloat16", "float32")
# Full size, and the tiny nets (same code paths) a CPU test runs.
MODELS = {
    "resnet50": dict(image=224, batch=256, classes=1000),
    "densenet121": dict(image=224, batch=256, classes=1000),
    "resnet56": dict(image=32, batch=512, classes=10),
}
TINY = {
    "resnet50": dict(image=32, batch=4, classes=10, reszoo=dict(layers=(1, 1, 1, 1), block="bottleneck"),
                     torch=dict(layers=(1, 1, 1, 1))),
    "densenet121": dict(image=32, batch=4, classes=10, reszoo=dict(blocks=(1, 1, 1, 1)),
                        torch=dict(blocks=(1, 1, 1, 1))),
    "resnet56": dict(image=32, batch=8, classes=10, reszoo=dict(depth=20), torch=dict(blocks=3)),
}
H200_BF16_DENSE_TFLOPS = 989.0


def plan(models, dtypes, contenders):
    """``(model, dtype, contender)`` in the order they run: the first model and dtype with
    every contender, then the next, so an early stop keeps whole comparisons."""
    order = [(m, d) for d in dtypes for m in models]
    order.sort(key=lambda md: (models.index(md[0]) > 0, dtypes.index(md[1]), models.index(md[0])))
    return [(m, d, c) for m, d in order for c in contenders]


# --- the contenders, each in its own process -------------------------------------------------


def _config(model, tiny):
    base = dict(MODELS[model])
    if tiny:
        base.update(TINY[model])
    return base


def run_reszoo(model, dtype, steps, warmup, tiny):
    """reszoo's net under Keras on JAX: ``model.fit`` on device-resident data."""
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import numpy as np

    import reszoo

    config = _config(model, tiny)
    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bfloat16" else "float32")
    net = reszoo.create_model(model, input_shape=(config["image"], config["image"], 3),
                              num_classes=config["classes"], **config.get("reszoo", {}))
    net.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
    batch = config["batch"]
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((batch, config["image"], config["image"], 3), dtype="float32"))
    y = jax.device_put(rng.integers(0, config["classes"], batch).astype("int32"))
    dataset = _repeat(x, y)

    def fit(n):
        net.fit(dataset, steps_per_epoch=n, epochs=1, verbose=0)

    fit(warmup)
    start = time.perf_counter()
    fit(steps)  # fit returns once its logs are read back: the steps have run
    seconds = time.perf_counter() - start
    stats = jax.local_devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return dict(img_s=batch * steps / seconds, peak_mb=peak / 2**20 if peak else None,
                params=reszoo.count_params(net), macs=reszoo.model_card(net)["macs"],
                device=str(jax.devices()[0].device_kind), version=f"keras {keras.__version__}, jax {jax.__version__}")


def _repeat(x, y):
    """The same device batch for ever, as a Keras-readable iterator (no host copies)."""
    while True:
        yield x, y


def torch_net(model, tiny):
    """torchvision's ResNet-50 / DenseNet-121 (or the tiny nets of the same classes), and the
    CIFAR ResNet of He et al. (option A) of ``benchmarks.torch_peer``."""
    import torchvision

    from benchmarks.torch_peer import torch_cifar_resnet

    config = _config(model, tiny)
    extra = config.get("torch", {}) if tiny else {}
    classes = config["classes"]
    if model == "resnet50":
        from torchvision.models.resnet import Bottleneck, ResNet

        return ResNet(Bottleneck, list(extra.get("layers", (3, 4, 6, 3))), num_classes=classes)
    if model == "densenet121":
        return torchvision.models.DenseNet(32, tuple(extra.get("blocks", (6, 12, 24, 16))), 64, num_classes=classes)
    return torch_cifar_resnet(extra.get("blocks", 9), classes)


def run_torch(model, dtype, steps, warmup, tiny, compiled, backend="inductor"):
    """torchvision's net in PyTorch, channels-last, eager or ``torch.compile`` (``backend``)."""
    import torch

    config = _config(model, tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = torch_net(model, tiny).to(device, memory_format=torch.channels_last)
    params = sum(p.numel() for p in net.parameters() if p.requires_grad)
    step_net = torch.compile(net, backend=backend) if compiled else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    batch = config["batch"]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, config["image"], config["image"], generator=gen).to(device).to(
        memory_format=torch.channels_last)
    y = torch.randint(0, config["classes"], (batch,), generator=gen).to(device)

    def train(n):
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                loss = loss_fn(step_net(x), y)
            loss.backward()
            opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    train(warmup)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    train(steps)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return dict(img_s=batch * steps / seconds, peak_mb=peak, params=params, device=name,
                version=f"torch {torch.__version__}")


def child(args):
    record = dict(model=args.model, dtype=args.dtype, contender=args.contender, batch=_config(args.model, args.tiny)["batch"],
                  image=_config(args.model, args.tiny)["image"], steps=args.steps)
    try:
        if args.contender == "reszoo_jax":
            record.update(run_reszoo(args.model, args.dtype, args.steps, args.warmup, args.tiny))
        else:
            record.update(run_torch(args.model, args.dtype, args.steps, args.warmup, args.tiny,
                                    compiled=args.contender == "torch_compile", backend=args.compile_backend))
    except Exception as err:  # a contender that cannot run is reported, not fatal
        record["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:300]
    print("RESULT " + json.dumps(record), flush=True)


# --- the parent: one process per contender, results as they come -----------------------------


def run_all(args):
    runs = plan(args.models, args.dtypes, args.contenders)
    results, started, longest = [], time.monotonic(), 0.0
    out = os.path.join(args.out, "gpu.json") if args.out else None
    for model, dtype, contender in runs:
        left = args.budget_s - (time.monotonic() - started)
        if left < max(longest, 10.0):
            results.append(dict(model=model, dtype=dtype, contender=contender, error="skipped: out of time"))
            continue
        begin = time.monotonic()
        record = _spawn(args, model, dtype, contender, timeout=left)
        longest = max(longest, time.monotonic() - begin)
        record["seconds"] = round(time.monotonic() - begin, 1)
        results.append(record)
        print(_line(record), flush=True)
        if out:
            _write_json(out, {"results": results, "peak_tflops": args.peak_tflops, "argv": sys.argv[1:]})
    table = summary(results, args.peak_tflops)
    print(table, flush=True)
    if out:
        _write_json(out, {"results": results, "peak_tflops": args.peak_tflops, "argv": sys.argv[1:]})
        _write(os.path.join(args.out, "gpu.md"), table + "\n")
    return results


def _spawn(args, model, dtype, contender, timeout):
    argv = [sys.executable, "-m", "benchmarks.gpu", "--child", f"--model={model}", f"--dtype={dtype}",
            f"--contender={contender}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    if args.tiny:
        argv.append("--tiny")
    if args.compile_backend != "inductor":
        argv.append(f"--compile_backend={args.compile_backend}")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(model=model, dtype=dtype, contender=contender, error=f"timed out after {timeout:.0f} s")
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not found:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(model=model, dtype=dtype, contender=contender, error=f"exit {proc.returncode}: {tail[:300]}")
    return json.loads(found[-1][len("RESULT "):])


def _write_json(path, value):
    _write(path, json.dumps(value, indent=1))


def _write(path, text):
    """``text`` into ``path`` whole: a temporary name, then a rename (the parent imports no
    Keras, so not ``reszoo.io``, whose package would start JAX on the GPU)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _line(record):
    if "error" in record:
        return f"{record['model']} {record['dtype']} {record['contender']}: {record['error']}"
    peak = f", peak {record['peak_mb']:,.0f} MiB" if record.get("peak_mb") else ""
    return (f"{record['model']} {record['dtype']} {record['contender']}: {record['img_s']:,.1f} img/s{peak} "
            f"({record['device']}; {record['version']}; {record['seconds']} s)")


def summary(results, peak_tflops):
    """A Markdown table: per network and precision, each contender's images/s and peak
    memory, reszoo's ratio to each PyTorch contender, and the achieved TFLOP/s fraction."""
    found = {(r["model"], r["dtype"], r["contender"]): r for r in results if "error" not in r}
    macs = {r["model"]: r["macs"] for r in found.values() if r.get("macs")}
    rows = ["| network | precision | reszoo (Keras-JAX fit) | PyTorch eager | torch.compile | reszoo / eager | "
            "reszoo / compile | peak memory reszoo / eager / compile | reszoo TFLOP/s (of peak) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for model, dtype in dict.fromkeys((r["model"], r["dtype"]) for r in results):
        cells = [found.get((model, dtype, c)) for c in CONTENDERS]
        rate = [f"{c['img_s']:,.1f}" if c else "-" for c in cells]
        ratio = [f"{cells[0]['img_s'] / c['img_s']:.2f}" if cells[0] and c else "-" for c in cells[1:]]
        memory = " / ".join(f"{c['peak_mb']:,.0f}" if c and c.get("peak_mb") else "-" for c in cells) + " MiB"
        tflops = "-"
        if cells[0] and model in macs:
            achieved = 3 * 2 * macs[model] * cells[0]["img_s"] / 1e12
            tflops = f"{achieved:,.4g} ({achieved / peak_tflops:.1%})"
        rows.append(f"| {model} | {dtype} | {' | '.join(rate)} | {' | '.join(ratio)} | {memory} | {tflops} |")
    errors = [_line(r) for r in results if "error" in r]
    return "\n".join(rows + ([""] + [f"not measured: {e}" for e in errors] if errors else []))


def _names(kind, allowed):
    def parse(text):
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"{kind} must be a comma-separated list of {', '.join(allowed)}")
        return names
    return parse


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=_names("models", tuple(MODELS)), default=list(MODELS))
    parser.add_argument("--dtypes", type=_names("dtypes", DTYPES), default=list(DTYPES))
    parser.add_argument("--contenders", type=_names("contenders", CONTENDERS), default=list(CONTENDERS))
    parser.add_argument("--steps", type=_positive, default=20, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=_positive, default=3, help="untimed steps first (compilation)")
    parser.add_argument("--tiny", action="store_true", help="small nets of the same code paths (CPU tests)")
    parser.add_argument("--compile_backend", default="inductor",
                        help="torch.compile's backend (aot_eager traces without code generation: CPU tests)")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu.json and gpu.md (default $OUT)")
    parser.add_argument("--budget_s", type=float, default=480.0, help="start no run the time left cannot hold")
    parser.add_argument("--peak_tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                        help="the device's dense bfloat16 peak, for the TFLOP/s fraction")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=tuple(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    return run_all(args)


if __name__ == "__main__":
    main()
