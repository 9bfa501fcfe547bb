"""The benchmarks' machinery: a peer in a process of its own (PyTorch and TensorFlow crash in
one process), timed round by round beside the in-process contenders."""

import json
import os
import subprocess
import sys
import time

import pytest

from benchmarks.common import PeerError, ProcessPeer, interleaved_rates

from conftest import ROOT


def _peer(tmp_path, body):
    script = tmp_path / "peer.py"
    script.write_text("import sys, time\n" + body)
    return [sys.executable, str(script)]


def test_a_peer_process_is_timed_round_by_round_with_the_others(tmp_path):
    peer = ProcessPeer(_peer(tmp_path, "print('ready fake 1.0', flush=True)\n"
                                       "for line in sys.stdin:\n    time.sleep(0.05)\n    print('done', flush=True)\n"))
    assert peer.version == "fake 1.0" and peer.pid != os.getpid()
    rates = interleaved_rates({"peer": peer, "here": lambda: time.sleep(0.1)}, images=10, rounds=3)
    assert rates["peer"][0] == pytest.approx(10 / 0.05, rel=0.3)
    assert rates["here"][0] == pytest.approx(10 / 0.1, rel=0.3)
    peer.close()
    assert peer.proc.returncode == 0


def test_a_peer_that_cannot_start_or_dies_says_why(tmp_path):
    with pytest.raises(PeerError, match="^No module named 'torch'$"):
        ProcessPeer(_peer(tmp_path, "print(\"error No module named 'torch'\", flush=True)\n"))
    dying = ProcessPeer(_peer(tmp_path, "print('ready x', flush=True)\nsys.stdin.readline()\nsys.exit(3)\n"))
    with pytest.raises(PeerError, match="stopped answering"):
        dying()


@pytest.mark.slow
def test_the_train_step_benchmark_reports_every_contender(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_step", "--nets=cifar", "--paths=fit", "--steps=1",
                           "--repeats=1", "--cifar_batch=4"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    timed = {r["model"]: r for r in records if "images_per_s" in r}
    assert {"reszoo resnet56", "keras resnet56 (independent)"} <= set(timed)
    assert all(r["images_per_s"] > 0 and r["batch"] == 4 for r in timed.values())
    torch = [r for r in records if r["model"] == "torch resnet56"]
    assert len(torch) == 1 and (torch[0].get("path") == "eager channels_last, own process" or "skipped" in torch[0])


def test_the_gpu_benchmark_runs_each_contender_in_its_own_process(tmp_path):
    """benchmarks/gpu.py on this CPU with a tiny net (the same code paths as the GPU run): every
    contender reports, the JSON and the table are written."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--tiny", "--steps=1", "--warmup=1",
                           "--models=resnet56", "--dtypes=float32", "--compile_backend=aot_eager",
                           f"--out={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert [(r["model"], r["contender"]) for r in results] == [
        ("resnet56", c) for c in ("reszoo_jax", "torch_eager", "torch_compile")]
    assert all("error" not in r and r["img_s"] > 0 and r["dtype"] == "float32" for r in results), results
    assert len({r["params"] for r in results}) == 1, results
    table = (tmp_path / "gpu.md").read_text()
    assert table.splitlines()[0].startswith("| network | precision | reszoo (Keras-JAX fit) |")
    assert len([l for l in table.splitlines() if l.startswith("| resnet56")]) == 1
    assert proc.stdout.rstrip().endswith(table.rstrip())


LIKE_WITH_LIKE = """
import json, os
os.environ["KERAS_BACKEND"] = "torch"  # reszoo and torchvision in one process (TensorFlow would crash)
import reszoo
from benchmarks import gpu
out = {}
for model in gpu.MODELS:
    for tiny in (False, True):
        config = gpu._config(model, tiny)
        net = reszoo.create_model(model, input_shape=(config["image"], config["image"], 3),
                                  num_classes=config["classes"], **config.get("reszoo", {}))
        peer = gpu.torch_net(model, tiny)
        out[model + (" tiny" if tiny else "")] = [reszoo.count_params(net),
                                                 sum(p.numel() for p in peer.parameters() if p.requires_grad)]
print("RESULT" + json.dumps(out))
"""


def test_the_gpu_benchmark_compares_nets_of_equal_size():
    """Each row of the GPU table races reszoo's net against torchvision's (or He et al.'s CIFAR
    net) with the same trainable parameters, at full size and in the tiny CPU run."""
    proc = subprocess.run([sys.executable, "-c", LIKE_WITH_LIKE], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert len(counts) == 6
    for model, (ours, theirs) in counts.items():
        assert ours == theirs, (model, ours, theirs)
    assert counts["resnet50"][0] == 25_557_032 and counts["resnet56"][0] == 853_018


def test_the_gpu_benchmark_plans_whole_comparisons_first_and_keeps_within_its_budget(tmp_path):
    from benchmarks import gpu

    order = gpu.plan(["resnet50", "densenet121", "resnet56"], ["bfloat16", "float32"], ["reszoo_jax", "torch_eager"])
    assert order[:4] == [("resnet50", "bfloat16", "reszoo_jax"), ("resnet50", "bfloat16", "torch_eager"),
                         ("resnet50", "float32", "reszoo_jax"), ("resnet50", "float32", "torch_eager")]
    assert order[4][:2] == ("densenet121", "bfloat16") and order[-1][:2] == ("resnet56", "float32")
    results = gpu.main(["--tiny", "--budget_s=0", f"--out={tmp_path}", "--models=resnet56", "--dtypes=float32"])
    assert [r["error"] for r in results] == ["skipped: out of time"] * 3
    rows = [dict(model="resnet50", dtype="bfloat16", contender=c, img_s=s, peak_mb=m, macs=4_089_184_256)
            for c, s, m in (("reszoo_jax", 3000.0, 40000), ("torch_eager", 2000.0, 50000), ("torch_compile", 2500.0, None))]
    table = gpu.summary(rows, peak_tflops=989.0)
    assert "| resnet50 | bfloat16 | 3,000.0 | 2,000.0 | 2,500.0 | 1.50 | 1.20 | 40,000 / 50,000 / - MiB |" in table
    assert "73.61 (7.4%)" in table  # 3 x 2 x 4.09 GMACs x 3,000 img/s


@pytest.mark.slow
def test_the_serving_benchmark_reports_the_bare_call_beside_the_server():
    """benchmarks/serving.py end to end on ResNet-20 with ONNX Runtime, a few requests."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--models=resnet20", "--runtimes=onnx",
                           "--requests=5", "--adapter_tasks=0"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert [r["path"] for r in records] == ["bare model call, batch 1", *["reszoo-serve, first requests"] * 2,
                                           "reszoo-serve, 1 client(s)", "reszoo-serve, 8 client(s)"]
    bare, cold, warm, one, eight = records
    assert (cold["warm_up_requests"], warm["warm_up_requests"]) == (False, True)
    assert all(r["first_ms"] > 0 and r["tenth_ms"] > 0 for r in (cold, warm))
    assert bare["p50_ms"] > 0 and bare["offline_images_per_s"] > 0
    assert one["p50_ms"] > bare["p50_ms"] and eight["requests_per_s"] > 0
    assert one["added_p50_ms"] == pytest.approx(one["p50_ms"] - bare["p50_ms"], abs=2e-3)


@pytest.mark.slow
def test_the_serving_soak_rolls_versions_under_good_and_hostile_load_and_reports_failures_and_memory():
    """benchmarks/serving.py --soak, shortened: two models, 8 clients, a version every 2 s."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--soak", "--soak_s=10", "--roll_s=2",
                           "--window_s=5", "--runtimes=onnx"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    *windows, summary = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert [w["window_s"] for w in windows] == [[0, 5], [5, 10]]
    assert all(w["good_requests"] > 0 and w["hostile_requests"] > 0 and w["p99_ms"] >= w["p50_ms"] > 0
               for w in windows)
    assert summary["models"] == ["resnet20_bench", "resnet56_bench"] and summary["server_alive"]
    assert summary["failed_good_requests"] == 0, summary["failures"]
    assert summary["hostile_not_4xx"] == 0 and set(summary["hostile_statuses"]) == {"400", "404", "413"}
    assert summary["good_requests"] == sum(w["good_requests"] for w in windows)
    assert summary["versions_rolled"] >= 2 and 0 < summary["version_served_after_s"][1] < 8
    assert 0 < summary["rss_start_mb"] <= summary["rss_max_mb"] and summary["rss_end_mb"] <= summary["rss_max_mb"]


@pytest.mark.slow
def test_the_diagnostics_benchmark_times_the_job_and_its_fit_with_and_without_the_callback():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics", "--epochs=2", "--rounds=1", "--every=10",
                           "--lesion_every=1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    job, bare = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    assert job["job"].startswith("python -m training.train") and bare["job"] == "model.fit" and bare["steps"] == 44
    for record in (job, bare):
        assert record["fit_s"] > 0 and record["fit_with_diagnostics_s"] > 0
        assert record["overhead"] == pytest.approx(record["fit_with_diagnostics_s"] / record["fit_s"] - 1, abs=0.01)


def test_the_inference_benchmark_pools_several_trainings_of_a_net():
    from benchmarks.inference import mean_of, mean_row

    def record(top1_float32, images, **int8):
        return {r: {"top1_float32": top1_float32, "validation_images": images,
                    **({} if int8.get(r) is None else dict(zip(("top1_int8", "images_lost", "images_gained"), int8[r])))}
                for r in ("onnx_int8", "openvino_int8", "litert_int8")}

    found = [record(96.0, 359, onnx_int8=(95.0, 4, 0), openvino_int8=(96.0, 1, 1), litert_int8=(95.5, 2, 0)),
             record(98.0, 359, onnx_int8=(98.0, 1, 1), openvino_int8=None, litert_int8=(97.0, 3, 0))]
    mean = mean_of(found)
    assert mean["images"] == 718 and mean["top1_float32"] == 97.0 and mean["openvino_int8"] is None
    assert mean["onnx_int8"] == {"top1_int8": 96.5, "images_lost": 5, "images_gained": 1}
    assert mean["litert_int8"] == {"top1_int8": 96.25, "images_lost": 5, "images_gained": 0}
    assert mean_row("ResNet-20, mean of 2 trainings", mean) == (
        "| ResNet-20, mean of 2 trainings (718 test predictions) | 97.00% | 96.50% / - / 96.25% "
        "(points lost: 0.50 / - / 0.75) | | 5/1 / - / 5/0 |")


@pytest.mark.slow
def test_the_inference_benchmark_times_every_runtime_and_reports_the_export_s_int8_accuracy(tmp_path):
    from training.common.runtimes import INT8, RUNTIMES

    proc = subprocess.run([sys.executable, "-m", "benchmarks.inference", "--models=resnet20_digits", "--batches=1,4",
                           "--runs=2", "--accuracy=resnet20", "--epochs=2", f"--work_dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
    speed = {r["runtime"]: r for r in records if r["benchmark"] == "inference"}
    assert set(speed) == set(RUNTIMES) | {"saved_model_bf16"}  # the SavedModel under TF's oneDNN bf16 rewrite
    base = speed["saved_model"]["batch_4_ms"]
    for name, record in speed.items():
        assert record["batch_1_ms"] > 0 and record["size_mb"] > 0 and record["load_s"] > 0
        assert record["speedup"] == pytest.approx(base / record["batch_4_ms"], rel=0.01)
        assert (record["agreement"] is None) == (name not in INT8 and not name.endswith("_bf16"))
    assert speed["onnx_int8"]["size_mb"] < 0.5 * speed["onnx"]["size_mb"]
    (accuracy,) = [r for r in records if r["benchmark"] == "inference_accuracy"]
    int8 = json.loads((tmp_path / "saved_models" / "resnet20" / "1" / "metadata.json").read_text())["int8"]
    assert accuracy["images"] == int8["onnx_int8"]["validation_images"] == 359  # the digits' test split
    assert accuracy["top1_float32"] == int8["onnx_int8"]["top1_float32"] > 50
    for runtime in INT8:
        assert accuracy[runtime]["top1_agreement"] == int8[runtime]["top1_agreement"] > 90
        assert [accuracy[runtime][k] for k in ("images_lost", "images_gained")] == [
            int8[runtime]["images_lost"], int8[runtime]["images_gained"]]
    for line in ("| ResNet-20, digits (8 x 8) | OpenVINO int8 | ", "| SavedModel, TensorFlow's oneDNN bf16 | ",
                 "CPU flags: ", "| ResNet-20, digits, 2 epochs (359 test images) | "):
        assert line in proc.stdout
