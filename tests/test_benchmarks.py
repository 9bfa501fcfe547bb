"""The benchmarks' machinery: a peer in a process of its own (PyTorch and TensorFlow crash in
one process), timed round by round beside the in-process contenders."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from benchmarks.common import PeerError, ProcessPeer, interleaved_rates

ROOT = pathlib.Path(__file__).resolve().parents[1]


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
