"""Shared by the benchmarks: one JSON line per measurement, with the machine it ran on."""

import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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
