"""Shared by the benchmarks: one JSON line per measurement, with the machine it ran on."""

import json
import math
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def rss_mb(pid="self"):
    """The resident memory of process ``pid`` (this one by default), in MB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def png_bomb(side):
    """A valid grey PNG of ``side`` x ``side`` zeros: side**2 bytes of pixels in a file about a
    thousandth of that (a decompression bomb, for the servers' image-size guard)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(b"\0" * (side + 1)) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def emit(**record):
    """Print one measurement as a JSON line (and flush, so partial runs still report)."""
    import keras

    record.setdefault("backend", keras.backend.backend())
    record.setdefault("machine", machine())
    print(json.dumps(record), flush=True)
    return record


def interleaved_rates(runners, images, rounds=3, warmup=1):
    """Images/s of each ``runners[name]()`` (which processes ``images`` images), timed in
    turn, round after round, so that a CPU slowing down (thermal or quota throttling) hits
    every contender alike. Returns ``{name: (best, median, worst)}``."""
    import statistics

    for run in runners.values():
        for _ in range(warmup):
            run()
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: (images / min(t), images / statistics.median(t), images / max(t)) for name, t in times.items()}


class PeerError(Exception):
    """A peer process that could not start; the message says why."""


class ProcessPeer:
    """A contender in its own process (``argv``), timed by ``interleaved_rates`` like any
    runner: calling it sends a line and waits for the peer's answer. The peer prints
    ``ready VERSION`` (or ``error REASON``) once set up, and ``done`` after each run."""

    def __init__(self, argv):
        import subprocess

        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().strip()
        if not first.startswith("ready"):
            self.close()
            raise PeerError(first.removeprefix("error ").strip() or f"{argv[2:]} exited with {self.proc.returncode}")
        self.version = first.removeprefix("ready").strip()
        self.pid = self.proc.pid

    def __call__(self):
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "done":
            raise PeerError(f"peer {self.pid} stopped answering (exit code {self.proc.poll()})")

    def close(self):
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def latency_ms(fn, x, runs):
    """Median milliseconds of ``fn(x)`` over ``runs`` calls, after one untimed call."""
    fn(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def randomized(model, rng):
    """``model`` with random weights whose activations stay well scaled (He-normal kernels) and
    BatchNorm statistics away from their defaults, so that a BN in the wrong place shows, as
    tests/timm_reference.py makes timm's."""
    for v in model.weights:
        shape, name = tuple(v.shape), v.path
        if "moving_variance" in name:
            v.assign(rng.uniform(0.5, 1.5, shape))
        elif "moving_mean" in name or "beta" in name or "bias" in name:
            v.assign(rng.normal(0, 0.1, shape))
        elif "gamma" in name:
            v.assign(rng.uniform(0.2, 0.6, shape))
        elif len(shape) >= 2:
            v.assign(rng.normal(0, 1, shape) * (2.0 / math.prod(shape[:-1])) ** 0.5)
    return model
