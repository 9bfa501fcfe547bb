"""reszoo-serve under load: batch-1 requests from 1 and 8 concurrent clients, p50 / p99 latency
and requests/s for each runtime, beside the bare model call in this process (the floor: one
image, and the offline batched throughput), in one run.

    python -m benchmarks.serving [--models=resnet20,resnet50 --runtimes=saved_model,onnx --adapter_tasks=4]
    python -m benchmarks.serving --soak [--soak_s=600 --roll_s=30]


ResNet-20 (digits, 8x8x1) is sent as JSON pixels (``serving_default``), ResNet-50 (224x224x3)
as a base64 PNG (``serving_bytes``, decoded in the server) as TF Serving's clients send images.
Clients and server share this machine's cores, as on any one-box load test. Also the memory of
N residual-adapter tasks served on one ResNet-50 against N full models.

``--soak`` instead runs the server for ``--soak_s`` (10 minutes) under 8 clients that mix good
requests (v1 pixels, v1 base64 PNG, v2) to two models with hostile ones (malformed and deeply
nested JSON, the wrong shape, non-finite pixels, a gzip bomb, an image bomb, an unknown model),
while a new version of one model or the other is rolled in every ``--roll_s`` (30 s), as an
export renames it into place. It reports, per window, the good requests' p50 / p99 and the
server's RSS, and in the end the good requests that failed (goal: 0), the hostile ones answered
anything but a 4xx, how long each new version took to be served, and RSS at start and end.
"""

import argparse
import base64
import concurrent.futures
import gzip
import http.client
import io
import itertools
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

from benchmarks.common import emit, png_bomb, rss_mb

SHAPES = {"resnet20": (8, 8, 1), "resnet56": (8, 8, 1), "resnet50": (224, 224, 3)}


def _export(model_name, tmp):
    import reszoo
    from training import exporter

    run_dir = os.path.join(tmp, model_name)
    os.makedirs(run_dir)
    model = reszoo.create_model(model_name, input_shape=SHAPES[model_name],  # zero-gamma: random weights with
                                num_classes=10 if SHAPES[model_name][0] == 8 else 1000,  # logits of a sane scale
                                zero_init_last_bn=True)
    model.save(os.path.join(run_dir, "last.keras"))
    with open(os.path.join(run_dir, "results.json"), "w") as f:
        json.dump({"model": model_name, "dataset": "bench"}, f)
    return exporter.export(run_dir, os.path.join(tmp, "saved_models"), formats=("saved_model", "onnx"))


MEMORY_SIDE = r"""
import gc, json, os, sys
import numpy as np
import keras
import reszoo
from benchmarks.common import rss_mb
from serving.servables import AdapterTask, Backbones

mode, n, tmp, size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
x = np.zeros((1, size, size, 3), "float32")
gc.collect()
before = rss_mb()
if mode == "tasks":
    backbones = Backbones()
    held = [AdapterTask(os.path.join(tmp, f"task{i}"), backbones) for i in range(n)]
    [task.run(x) for task in held]
else:
    held = [keras.saving.load_model(os.path.join(tmp, f"task{i}", "last.keras"), compile=False) for i in range(n)]
    [model(x, training=False) for model in held]
gc.collect()
weights = {id(v): v for h in held for v in getattr(h, "model", h).weights}  # a shared variable counts once
print(json.dumps({"mb": rss_mb() - before, "params": int(sum(np.prod(v.shape) for v in weights.values()))}))
"""


def adapter_memory(model_name, tasks, tmp):
    """Memory of ``tasks`` adapter tasks served on one backbone against as many full models
    (each task's whole adapted network), each side measured in a fresh process (RSS rise over
    the process after its imports)."""
    import numpy as np

    import reszoo
    from reszoo import transfer

    size = SHAPES[model_name][0]
    backbone = reszoo.create_model(model_name, zero_init_last_bn=True)
    backbone_file = os.path.join(tmp, f"{model_name}.keras")
    backbone.save(backbone_file)
    rng = np.random.default_rng(0)
    for i in range(tasks):
        adapted = transfer.add_adapters(backbone, "parallel")
        for layer in transfer.task_layers(adapted):
            target = getattr(layer, "adapter", layer)
            target.set_weights([w + rng.normal(0, 0.01, w.shape).astype(w.dtype) for w in target.get_weights()])
        folder = os.path.join(tmp, f"task{i}")
        os.makedirs(folder)
        transfer.save_task(adapted, os.path.join(folder, "task.npz"))
        adapted.save(os.path.join(folder, "last.keras"))
        with open(os.path.join(folder, "flags.json"), "w") as f:
            json.dump({"init_from": backbone_file, "adapters": "parallel"}, f)
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump({"class_names": [str(c) for c in range(adapted.output_shape[-1])]}, f)
    for mode in ("tasks", "full"):
        proc = subprocess.run([sys.executable, "-c", MEMORY_SIDE, mode, str(tasks), tmp, str(size)],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
        found = json.loads(proc.stdout.strip().splitlines()[-1])
        emit(bench="serving memory", model=model_name, tasks=tasks,
             path="adapter tasks on one backbone (reszoo-serve --adapter_tasks)" if mode == "tasks"
             else "full models, one per task", rss_rise_mb=round(found["mb"], 1), params_held=found["params"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(base, runtime, max_batch_size, *flags, names=None):
    """A reszoo-serve process on ``base`` and the URL of its first model's :predict, once every
    model (``names``, default: ``base`` is one model folder) is served."""
    import requests

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving", f"--model_base_path={base}", f"--port={port}",
                             "--grpc_port=0", "--v2_grpc_port=0", f"--runtime={runtime}",
                             f"--max_batch_size={max_batch_size}", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    names = names or [os.path.basename(base)]
    for _ in range(1200):
        try:
            if all(requests.get(f"{url}/v1/models/{name}", timeout=5).ok for name in names):
                return proc, f"{url}/v1/models/{names[0]}:predict"
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"reszoo-serve did not start on {base}")


def _load(url, body, clients, requests_each):
    """Latencies (ms) of ``clients`` threads sending ``requests_each`` requests each (after one
    request each to connect and warm up), and the wall time from the first timed request to the
    last answer."""
    parts = urllib.parse.urlsplit(url)
    data = body.encode()
    headers = {"Content-Type": "application/json"}

    def post(connection):
        connection.request("POST", parts.path, data, headers)
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}")

    def client(_):  # http.client, not requests: the load generator's own cost stays small
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        post(connection)  # connection and warm-up
        ready.wait()
        spans = []
        for _ in range(requests_each):
            start = time.perf_counter()
            post(connection)
            spans.append((start, time.perf_counter()))
        connection.close()
        return spans

    ready = threading.Barrier(clients)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        spans = [s for part in pool.map(client, range(clients)) for s in part]
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return [(end - start) * 1000 for start, end in spans], wall


def _copy(base, to, warm_up):
    """A copy of model folder ``base`` named as it is, with or without the export's warm-up
    requests."""
    from training.common.layout import WARMUP

    target = os.path.join(to, os.path.basename(base))
    shutil.copytree(base, target)
    if not warm_up:
        for version in os.listdir(target):
            os.remove(os.path.join(target, version, WARMUP))
    return target


def _first(url, body, count):
    """Latencies (ms) of the first ``count`` requests to a server that has answered none."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        connection.request("POST", parts.path, body.encode(), {"Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}")
        times.append((time.perf_counter() - start) * 1000)
    connection.close()
    return times


def _percentile(values, q):
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def _body(model_name, pixels):
    if model_name == "resnet20":
        return json.dumps({"instances": pixels.tolist()})
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[0].astype("uint8")).save(buffer, "PNG")
    return json.dumps({"signature_name": "serving_bytes",
                       "instances": [{"image_bytes": {"b64": base64.b64encode(buffer.getvalue()).decode()}}]})


def _png_bytes(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _soak_requests(names, max_request_bytes):
    """(kind, path, body, headers) for each good and each hostile request of the soak."""
    import numpy as np

    pixels = np.random.default_rng(0).integers(0, 256, (1, *SHAPES["resnet20"])).astype("float32")
    json_headers = {"Content-Type": "application/json"}
    png = base64.b64encode(_png_bytes(pixels[0, :, :, 0].astype("uint8"))).decode()
    bomb = base64.b64encode(png_bomb(5000)).decode()  # over the server's 4096 x 4096
    good, bad = [], []
    for name in names:
        predict = f"/v1/models/{name}:predict"
        good += [(predict, json.dumps({"instances": pixels.tolist()}), json_headers),
                 (predict, json.dumps({"signature_name": "serving_bytes",
                                       "instances": [{"image_bytes": {"b64": png}}]}), json_headers),
                 (f"/v2/models/{name}/infer", json.dumps({"inputs": [{"name": "images", "shape": list(pixels.shape),
                                                                      "datatype": "FP32",
                                                                      "data": pixels.ravel().tolist()}]}),
                  json_headers)]
        bad += [(predict, '{"instances": [[', json_headers),
                (predict, "[" * 50000 + "]" * 50000, json_headers),
                (predict, json.dumps({"instances": pixels[:, :7, :7].tolist()}), json_headers),
                (predict, json.dumps({"instances": np.full(pixels.shape, 1e308).tolist()}), json_headers),
                (predict, json.dumps({"signature_name": ["serving_default"], "instances": pixels.tolist()}),
                 json_headers),
                (predict, json.dumps({"signature_name": "serving_bytes", "instances": [{"image_bytes": {"b64": bomb}}]}),
                 json_headers),
                (predict, gzip.compress(b"[" + b"0," * max_request_bytes + b"0]"),
                 {**json_headers, "Content-Encoding": "gzip"}),
                (f"/v2/models/{name}/infer", json.dumps({"inputs": [{"name": "images", "shape": [1, 8, 8, 1],
                                                                     "datatype": "FP32", "data": ["x"] * 64}]}),
                 json_headers)]
    bad.append(("/v1/models/no_such_model:predict", json.dumps({"instances": pixels.tolist()}), json_headers))
    return good, bad


def _roll(base, name):
    """A new version of model ``name`` as an export lands one: written under a ``.tmp-`` name,
    then renamed into place. Returns its number."""
    folder = os.path.join(base, name)
    newest = max(int(v) for v in os.listdir(folder) if v.isdigit())
    tmp = os.path.join(folder, f".tmp-{newest + 1}")
    shutil.copytree(os.path.join(folder, str(newest)), tmp)
    os.rename(tmp, os.path.join(folder, str(newest + 1)))
    return newest + 1


def soak(args):
    """The ``--soak`` run (module docstring)."""
    import requests

    tmp = tempfile.mkdtemp(prefix="reszoo-serve-soak-")
    base = os.path.dirname(os.path.dirname(_export("resnet20", tmp)))
    os.makedirs(os.path.join(tmp, "second"))
    second = os.path.dirname(_export("resnet56", os.path.join(tmp, "second")))
    shutil.move(second, base)
    names = sorted(os.listdir(base))
    max_request_mb = 1.0
    runtime = args.runtimes.split(",")[0]
    proc, url = _serve(base, runtime, args.max_batch_size, f"--max_request_mb={max_request_mb}", names=names)
    root = urllib.parse.urlsplit(url)
    good, bad = _soak_requests(names, int(max_request_mb * 2 ** 20))
    records, lock, stop = [], threading.Lock(), threading.Event()  # (time, good?, status, ms)

    def client(seed):
        mix = itertools.cycle([True] * 3 + [False])  # one hostile request in four
        connection = http.client.HTTPConnection(root.hostname, root.port, timeout=60)
        i = seed
        while not stop.is_set():
            is_good = next(mix)
            chosen = good if is_good else bad
            path, body, headers = chosen[i % len(chosen)]
            i += 1
            start = time.perf_counter()
            try:
                connection.request("POST", path, body, headers)
                answer = connection.getresponse()
                answer.read()
                status = answer.status
            except (OSError, http.client.HTTPException) as err:
                status = type(err).__name__
                connection.close()
            with lock:
                records.append((start, is_good, status, (time.perf_counter() - start) * 1000))

    rolled, rss = [], []

    def roller():
        for n in itertools.count():
            if stop.wait(args.roll_s):
                return
            name = names[n % len(names)]
            version, landed = _roll(base, name), time.perf_counter()
            while not stop.is_set():
                status = requests.get(f"{root.scheme}://{root.netloc}/v1/models/{name}", timeout=10).json()
                if any(v["version"] == str(version) and v["state"] == "AVAILABLE"
                       for v in status["model_version_status"]):
                    rolled.append((name, version, time.perf_counter() - landed))
                    break
                time.sleep(0.05)

    def monitor():
        while not stop.wait(1.0):
            rss.append((time.perf_counter(), rss_mb(proc.pid)))

    try:
        start = time.perf_counter()
        rss.append((start, rss_mb(proc.pid)))
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.soak_clients)]
        threads += [threading.Thread(target=roller), threading.Thread(target=monitor)]
        [t.start() for t in threads]
        stop.wait(args.soak_s)
        stop.set()
        [t.join() for t in threads]
        rss.append((time.perf_counter(), rss_mb(proc.pid)))
        alive = proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    end = start + args.soak_s
    records = [r for r in records if r[0] < end]  # not those begun as the clients stopped
    for w in range(math.ceil(args.soak_s / args.window_s)):
        lo, hi = start + w * args.window_s, min(end, start + (w + 1) * args.window_s)
        times = [ms for t, ok, status, ms in records if ok and status == 200 and lo <= t < hi]
        window_rss = [mb for t, mb in rss if lo <= t < hi] or [rss[-1][1]]
        emit(bench="serving soak", window_s=[round(lo - start), round(hi - start)], good_requests=len(times),
             p50_ms=round(statistics.median(times), 2) if times else None,
             p99_ms=round(_percentile(times, 99), 2) if times else None,
             hostile_requests=sum(1 for t, ok, _, _ in records if not ok and lo <= t < hi),
             rss_mb=round(window_rss[-1], 1))
    failed = [status for _, ok, status, _ in records if ok and status != 200]
    hostile = [status for _, ok, status, _ in records if not ok]
    emit(bench="serving soak", path="summary", runtime=runtime, models=names, clients=args.soak_clients,
         seconds=args.soak_s, good_requests=sum(1 for r in records if r[1]), failed_good_requests=len(failed),
         failures=sorted(set(map(str, failed))), hostile_requests=len(hostile),
         hostile_not_4xx=len([s for s in hostile if not (isinstance(s, int) and 400 <= s < 500)]),
         hostile_statuses=sorted(set(map(str, hostile))), versions_rolled=len(rolled),
         version_served_after_s=[round(min(r[2] for r in rolled), 2), round(max(r[2] for r in rolled), 2)]
         if rolled else None, rss_start_mb=round(rss[0][1], 1), rss_end_mb=round(rss[-1][1], 1),
         rss_max_mb=round(max(mb for _, mb in rss), 1), server_alive=alive)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20,resnet50")
    parser.add_argument("--runtimes", default="saved_model,onnx")
    parser.add_argument("--requests", type=int, default=0, help="requests per client (0: 300 for ResNet-20, 20 "
                        "for ResNet-50)")
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--adapter_tasks", type=int, default=4, help="tasks for the memory comparison on "
                        "ResNet-50 (0: none)")
    parser.add_argument("--workers", type=int, default=1, help="reszoo-serve's --workers for the load runs")
    parser.add_argument("--soak", action="store_true", help="the soak run instead (module docstring); its model "
                        "runs on the first of --runtimes")
    parser.add_argument("--soak_s", type=float, default=600.0)
    parser.add_argument("--soak_clients", type=int, default=8)
    parser.add_argument("--roll_s", type=float, default=30.0, help="a new version every this many seconds")
    parser.add_argument("--window_s", type=float, default=60.0, help="the soak's report interval")
    args = parser.parse_args()
    if args.soak:
        return soak(args)
    import numpy as np

    from serving.servables import Version

    tmp = tempfile.mkdtemp(prefix="reszoo-serve-bench-")
    if args.adapter_tasks:
        os.makedirs(os.path.join(tmp, "adapters"))
        adapter_memory("resnet50", args.adapter_tasks, os.path.join(tmp, "adapters"))
    for model_name in [m for m in args.models.split(",") if m]:
        version_dir = _export(model_name, tmp)
        base = os.path.dirname(version_dir)
        shape = SHAPES[model_name]
        pixels = np.random.default_rng(0).integers(0, 256, (1, *shape)).astype("float32")
        body = _body(model_name, pixels)
        each = args.requests or (300 if model_name == "resnet20" else 20)
        for runtime in args.runtimes.split(","):
            version = Version(version_dir, runtime)
            version.run(pixels)
            floor = []
            for _ in range(max(50, each)):
                start = time.perf_counter()
                version.run(pixels)
                floor.append((time.perf_counter() - start) * 1000)
            batch = np.repeat(pixels, args.max_batch_size, axis=0)
            version.run(batch)
            start = time.perf_counter()
            rounds = 5 if model_name == "resnet20" else 2
            for _ in range(rounds):
                version.run(batch)
            offline = rounds * len(batch) / (time.perf_counter() - start)
            emit(bench="serving", model=model_name, runtime=runtime, path="bare model call, batch 1",
                 p50_ms=round(statistics.median(floor), 3), p99_ms=round(_percentile(floor, 99), 3),
                 offline_images_per_s=round(offline, 1), offline_batch=len(batch))
            del version
            for warm in (False, True):  # the first requests to a fresh server, without and with warm-up
                first_base = _copy(base, os.path.join(tmp, f"first-{runtime}-{warm}"), warm)
                proc, url = _serve(first_base, runtime, args.max_batch_size)
                try:
                    times = _first(url, body, 10)
                    emit(bench="serving", model=model_name, runtime=runtime, path="reszoo-serve, first requests",
                         warm_up_requests=warm, first_ms=round(times[0], 3), tenth_ms=round(times[9], 3),
                         median_2_to_10_ms=round(statistics.median(times[1:]), 3))
                finally:
                    proc.terminate()
                    proc.wait(60)
            proc, url = _serve(base, runtime, args.max_batch_size, f"--workers={args.workers}")
            try:
                for clients in (1, 8):
                    times, wall = _load(url, body, clients, each)
                    rate = len(times) / wall
                    emit(bench="serving", model=model_name, runtime=runtime, path=f"reszoo-serve, {clients} client(s)",
                         workers=args.workers,
                         signature="serving_default" if model_name == "resnet20" else "serving_bytes (PNG)",
                         p50_ms=round(statistics.median(times), 3), p99_ms=round(_percentile(times, 99), 3),
                         requests_per_s=round(rate, 1), added_p50_ms=round(statistics.median(times)
                                                                           - statistics.median(floor), 3),
                         of_offline=round(rate / offline, 3))
            finally:
                proc.terminate()
                proc.wait(60)


if __name__ == "__main__":
    main()
