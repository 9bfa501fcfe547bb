"""Runs that survive: training killed (SIGKILL, SIGINT, SIGTERM) at the dangerous instants, a
full disk, a read-only folder, a second training in the same folder; each time the next run
recovers, and resumed runs end with exactly the weights of an uninterrupted one."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from conftest import ROOT

RUN = ["--model_args=base_width=8", "--batch_size=64", "--epochs=4", "--deterministic", "--seed=3"]


def _env(**extra):
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def start(log, *args, **env):
    """A training process in the background, its output in ``log``."""
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "training.train", *args], cwd=ROOT, env=_env(**env),
                            stdout=out, stderr=subprocess.STDOUT, text=True)


def wait_for(proc, predicate, timeout=300, every=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        assert proc.poll() is None, "the run ended before the instant the test waits for"
        time.sleep(every)
    raise AssertionError("timed out")


def paused(proc, folder, name):
    """Wait until ``proc`` pauses at a write of ``name`` (reszoo.io.pause_point); its marker."""
    return wait_for(proc, lambda: glob.glob(os.path.join(folder, "**", f".tmp-*-{name}.paused"), recursive=True))[0]


def stop(proc, sig):
    proc.send_signal(sig)
    return proc.wait(timeout=120)


def error_lines(text):
    return [l for l in text.splitlines() if l.startswith("train: error:")]


def weights(path):
    return keras.saving.load_model(path, compile=False).get_weights()


def assert_same_weights(a, b):
    for x, y in zip(weights(a), weights(b), strict=True):
        np.testing.assert_array_equal(x, y)


def leftovers(folder):
    return [p for p in glob.glob(os.path.join(folder, "**", ".tmp-*"), recursive=True)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, train):
    """The uninterrupted run every interrupted one must end equal to."""
    folder = tmp_path_factory.mktemp("straight")
    proc = train(*RUN, f"--model_dir={folder}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, train):
    """A finished two-epoch run (not deterministic), copied by the tests that change it."""
    folder = tmp_path_factory.mktemp("two_epochs") / "run"
    proc = train(*RUN[:2], "--epochs=2", f"--model_dir={folder}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return folder


def copy_of(run, folder):
    shutil.copytree(run, folder, symlinks=True)
    return folder


def assert_resumed_exactly(folder, straight):
    assert_same_weights(folder / "last.keras", straight / "last.keras")
    assert_same_weights(folder / "best.keras", straight / "best.keras")
    assert (folder / "history.csv").read_text() == (straight / "history.csv").read_text()
    results = json.loads((folder / "results.json").read_text())
    assert results["test_accuracy"] == json.loads((straight / "results.json").read_text())["test_accuracy"]
    assert not leftovers(folder)


@pytest.mark.parametrize("plan", [
    # (pause point, signal): the instant a file's new version is complete under its temporary
    # name, or about to be written, and the signal that ends the process there.
    [("rename:flags.json", signal.SIGKILL), ("rename:best.keras", signal.SIGKILL),
     ("rename:epoch-000002", signal.SIGKILL), ("write:history.csv", signal.SIGINT),
     ("rename:last.keras", signal.SIGKILL), ("rename:results.json", signal.SIGTERM)],
])
def test_killed_at_each_write_every_rerun_resumes_and_ends_bit_exact(tmp_path, straight, plan, train):
    folder = tmp_path / "run"
    for point, sig in plan:
        proc = start(tmp_path / "log", *RUN, f"--model_dir={folder}", RESZOO_TEST_PAUSE=point)
        paused(proc, folder, point.split(":")[1])
        code = stop(proc, sig)
        log = (tmp_path / "log").read_text()
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:  # Ctrl-C and a preemption's SIGTERM end with one line and 128 + the signal
            assert code == 128 + sig, log[-2000:]
            assert "Traceback" not in log
            assert len(error_lines(log)) == 1 and f"stopped by {signal.Signals(sig).name}" in error_lines(log)[0]
            assert "re-run the same command to resume" in error_lines(log)[0]
        generations = sorted(p.name for p in (folder / "backup").glob("epoch-*"))
        assert len(generations) <= 2, generations  # the newest two are kept
    final = train(*RUN, f"--model_dir={folder}")
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"resuming {folder} from epoch 4" in final.stdout
    assert_resumed_exactly(folder, straight)


# Every part of the 2020s recipes on, EMA state and augmentation randomness included.
RECIPE_RUN = [*RUN, "--ema_decay=0.9", "--mixup_alpha=0.2", "--cutmix_alpha=1.0", "--auto_augment=randaugment",
              "--random_erasing=0.25", "--repeated_augmentation=2", "--loss=bce", "--optimizer=lamb",
              "--learning_rate=0.01", "--weight_decay=0.01", "--train_size=0.75", "--label_smoothing=0.1"]


@pytest.mark.slow
def test_a_recipe_run_killed_and_resumed_ends_bit_exact(tmp_path, train):
    straight = tmp_path / "straight"
    proc = train(*RECIPE_RUN, f"--model_dir={straight}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "run"
    proc = start(tmp_path / "log", *RECIPE_RUN, f"--model_dir={folder}", RESZOO_TEST_PAUSE="rename:epoch-000002")
    paused(proc, folder, "epoch-000002")
    stop(proc, signal.SIGKILL)
    # Then at a random instant once training has resumed: mid-step, mid-epoch, mid-write (the
    # pause points of every write, and SIGINT and SIGTERM, are the basic run's test, above).
    seed = int(time.time())
    proc = start(tmp_path / "log", *RECIPE_RUN, f"--model_dir={folder}")
    wait_for(proc, lambda: "resuming" in (tmp_path / "log").read_text())
    time.sleep(np.random.default_rng(seed).uniform(0.0, 2.5))
    if proc.poll() is None:
        stop(proc, signal.SIGKILL)
    final = train(*RECIPE_RUN, f"--model_dir={folder}")
    assert final.returncode == 0, (seed, final.stderr[-2000:])
    assert "resuming" in final.stdout
    assert_resumed_exactly(folder, straight)


def test_diagnostics_change_nothing_and_a_kill_while_they_are_written_leaves_them_readable(
        tmp_path, straight, train):
    """--diagnostics measures without touching the run (the weights end bit-equal to the
    straight run's); killed while diagnostics.jsonl is being replaced, the old file is whole,
    and the resumed run continues it: every measurement once, in step order."""
    from reszoo import diagnostics

    folder = tmp_path / "run"
    path = folder / diagnostics.DIAGNOSTICS_FILE
    proc = start(tmp_path / "log", *RUN, f"--model_dir={folder}", "--diagnostics=5",
                 RESZOO_TEST_PAUSE="rename:epoch-000003")
    paused(proc, folder, "epoch-000003")
    stop(proc, signal.SIGKILL)
    written = path.read_text()
    assert [r["step"] for r in diagnostics.read(str(path))] == list(range(5, 66, 5))
    proc = start(tmp_path / "log", *RUN, f"--model_dir={folder}", "--diagnostics=5",
                 RESZOO_TEST_PAUSE="rename:diagnostics.jsonl")
    paused(proc, folder, "diagnostics.jsonl")
    stop(proc, signal.SIGKILL)
    assert path.read_text() == written  # the new version was complete under its temporary name only
    final = train(*RUN, f"--model_dir={folder}", "--diagnostics=5")
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"resuming {folder} from epoch 2" in final.stdout
    assert_resumed_exactly(folder, straight)
    assert [r["step"] for r in diagnostics.read(str(path))] == list(range(5, 86, 5))
    assert "diagnostics summary" in final.stdout


def test_real_kills_in_the_middle_of_writes_then_bit_exact_resume(tmp_path, straight, train):
    """No hook: poll the folder and signal the process while a file is being written."""
    folder = tmp_path / "run"

    def writing(pattern):
        return lambda: glob.glob(os.path.join(folder, pattern))

    for pattern, sig in [(".tmp-*-best.keras", signal.SIGKILL), ("backup/.tmp-*-epoch-*", signal.SIGKILL),
                         (".tmp-*-last.keras", signal.SIGINT)]:
        proc = start(tmp_path / "log", *RUN, f"--model_dir={folder}")
        wait_for(proc, writing(pattern), every=0.001)
        code = stop(proc, sig)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
            assert glob.glob(os.path.join(folder, pattern)), "the kill did not land while the file was written"
        else:
            assert code == 130, (tmp_path / "log").read_text()[-2000:]
            assert not glob.glob(os.path.join(folder, pattern)), "Ctrl-C leaves no temporary file"
    final = train(*RUN, f"--model_dir={folder}")
    assert final.returncode == 0, final.stderr[-2000:]
    assert_resumed_exactly(folder, straight)


def test_a_damaged_newest_checkpoint_is_skipped_for_the_one_before(tmp_path, straight, train):
    folder = tmp_path / "run"
    proc = start(tmp_path / "log", *RUN, f"--model_dir={folder}", RESZOO_TEST_PAUSE="write:epoch-000004")
    paused(proc, folder, "epoch-000004")
    stop(proc, signal.SIGKILL)
    newest = folder / "backup" / "epoch-000003" / "checkpoint.keras"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # bit rot, a bad copy
    resumed = train(*RUN, f"--model_dir={folder}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    warnings = [l for l in resumed.stderr.splitlines() if l.startswith("train: warning:")]
    assert len(warnings) == 1 and "skipping checkpoint" in warnings[0] and "epoch-000003" in warnings[0]
    assert "truncated" in warnings[0]
    assert f"resuming {folder} from epoch 2" in resumed.stdout
    assert_resumed_exactly(folder, straight)


def test_a_second_training_in_the_same_folder_is_refused_while_the_first_runs(tmp_path, straight, train):
    folder = tmp_path / "run"
    first = start(tmp_path / "log", *RUN, f"--model_dir={folder}", RESZOO_TEST_PAUSE="rename:epoch-000002")
    marker = paused(first, folder, "epoch-000002")
    second = train(*RUN, f"--model_dir={folder}")
    assert second.returncode == 2
    assert error_lines(second.stderr) == [f"train: error: {folder} is in use by another training (pid {first.pid}); "
                                          "wait for it to end, or use another --model_dir"]
    os.remove(marker)  # the first goes on, alone
    assert first.wait(timeout=300) == 0, (tmp_path / "log").read_text()[-2000:]
    assert_resumed_exactly(folder, straight)
    assert (folder / "history.csv").read_text().count("\n") == 1 + 4


def test_best_model_and_its_score_survive_a_resume(tmp_path, two_epochs, train):
    """After a resume the best score is the checkpoint's, so a worse epoch does not replace
    best.keras (it used to start again from nothing)."""
    from training import run_folder
    from training.common import files

    folder = copy_of(two_epochs, tmp_path / "run")
    checkpoint = folder / "backup" / "epoch-000002" / "state.json"
    saved = json.loads(checkpoint.read_text())
    best_bytes = (folder / "best.keras").read_bytes()
    saved["state"]["best"] = 2.0  # no accuracy beats it
    files.write_json(str(checkpoint), saved)
    resumed = train(*RUN[:2], "--epochs=3", "--allow_flag_changes", f"--model_dir={folder}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (folder / "best.keras").read_bytes() == best_bytes
    state = run_folder.Checkpoints.read_state(str(folder / "backup" / "epoch-000003"))[0]
    assert state.best == 2.0 and state.epoch == 3 and len(state.history) == 3


@pytest.fixture
def tmpfs(tmp_path):
    """A small file system of its own (tmpfs), to fill or make read-only: root only."""
    mounts = []

    def mount(name, size="64m", read_only=False):
        path = tmp_path / name
        path.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                               capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder):
    """Fill the file system of ``folder``; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_ends_with_one_line_and_the_run_resumes_after(tmp_path, tmpfs, straight, train):
    disk = tmpfs("disk")
    folder = disk / "run"
    proc = start(tmp_path / "log", *RUN, f"--model_dir={folder}", RESZOO_TEST_PAUSE="write:epoch-000003")
    marker = paused(proc, folder, "epoch-000003")
    filler = fill(disk)
    os.remove(marker)
    assert proc.wait(timeout=300) == 1  # not a segfault inside h5py
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and len(error_lines(log)) == 1, log[-2000:]
    line = error_lines(log)[0]
    assert f"no space left on the device of {folder}" in line and "epoch 3" in line
    assert "the last complete checkpoint (epoch 2) is intact" in line
    assert not leftovers(folder)
    os.remove(filler)
    resumed = train(*RUN, f"--model_dir={folder}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {folder} from epoch 2" in resumed.stdout
    assert_resumed_exactly(folder, straight)


def test_a_full_disk_during_export_ends_with_one_line_and_leaves_nothing(tmpfs, straight):
    disk = tmpfs("exports", size="1m")
    proc = subprocess.run([sys.executable, "-m", "training.export", f"--model_dir={straight}",
                           f"--export_dir={disk}"], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 1
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "W0000", "I0000", "E0000"))]
    assert len(lines) == 1 and "no space left on the device of" in lines[0] and "nothing was exported" in lines[0]
    assert "Traceback" not in proc.stderr
    assert list(disk.rglob("*")) == [disk / "resnet20_digits"]  # the model folder, empty


def test_read_only_model_dir_is_a_usage_error(tmpfs, train):
    disk = tmpfs("ro", read_only=True)
    proc = train(*RUN, f"--model_dir={disk / 'run'}", timeout=120)
    assert proc.returncode == 2
    assert error_lines(proc.stderr) == [f"train: error: --model_dir={disk / 'run'}: {disk} is on a read-only file system"]


def _usage_error(code, stderr):
    """The one line of a usage error (exit code 2), with no traceback."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "I0000", "E0000", "W0000"))]
    assert len(lines) == 1 and lines[0].startswith("train: error:"), stderr[-2000:]
    return lines[0]


TF_CONFIG_CASES = {
    '{"cluster": {"worker": ["localhost:1"]}}': 'TF_CONFIG needs this process\'s "task"',
    '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}':
        "task index 1 is out of range: the cluster has 1 worker address(es), so 0..0",
    '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}':
        "task type 'chief' is not in its cluster (worker)",
    '{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}': 'TF_CONFIG needs "cluster"',
}


def test_bad_clusters_devices_folders_and_image_sizes_are_one_line_usage_errors(tmp_path, usage_errors, image_folder):
    """A bad TF_CONFIG, no TPU, a --model_dir that is a file, images below the net's minimum:
    one line, exit code 2, nothing written (each case through the command's own main())."""
    (tmp_path / "taken").write_text("notes")
    images = image_folder(tmp_path / "imgs")
    cases = [(["--distribution_strategy=multi_worker_mirrored", f"--model_dir={tmp_path / 'c' / str(i)}"],
              {"TF_CONFIG": tf_config}) for i, tf_config in enumerate(TF_CONFIG_CASES)]
    cases += [(["--distribution_strategy=tpu", "--tpu=local", f"--model_dir={tmp_path / 'tpu'}"], {}),
              ([f"--model_dir={tmp_path / 'taken'}"], {}),
              (["--dataset=folder", f"--data_dir={images}", "--image_size=1", "--batch_size=2",
                f"--model_dir={tmp_path / 'small'}"], {})]
    lines = [_usage_error(code, stderr) for code, stderr in usage_errors(cases)]
    for line, message in zip(lines, TF_CONFIG_CASES.values()):
        assert message in line
    assert "--distribution_strategy=tpu: no TPU at --tpu='local'" in lines[4]
    assert lines[5] == f"train: error: --model_dir={tmp_path / 'taken'} is a file, not a folder"
    assert (tmp_path / "taken").read_text() == "notes"
    assert lines[6] == "train: error: images of 1x1 are too small for this net: it takes at least 4x4 (its total stride)"
    assert not any((tmp_path / name).exists() for name in ("c", "tpu", "small"))


def test_a_worker_whose_peer_never_starts_gives_up_after_the_timeout(tmp_path, train):
    """TensorFlow would wait forever, silently: say what for, then give up with one line."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
    cluster = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": 0}}
    begin = time.time()
    proc = train("--distribution_strategy=multi_worker_mirrored", "--worker_timeout=6", f"--model_dir={tmp_path / 'run'}",
                 timeout=120, TF_CONFIG=json.dumps(cluster))
    assert proc.returncode == 1 and time.time() - begin < 60
    said = [l for l in proc.stderr.splitlines() if l.startswith("train:")]
    assert said[-1] == (f"train: error: gave up after 6 s waiting for the cluster in TF_CONFIG (not reachable: "
                        f"localhost:{ports[1]}); start every worker with the same cluster, or raise --worker_timeout")
    assert all(l.startswith(f"train: waiting for workers localhost:{ports[1]}") for l in said[:-1])
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_usage_error_writes_nothing_so_the_corrected_command_runs(tmp_path, train):
    folder = tmp_path / "run"
    refused = train("--model_args=depth=57", "--epochs=1", f"--model_dir={folder}")
    assert "depth must be 6n+2" in _usage_error(refused.returncode, refused.stderr)
    assert not folder.exists()
    proc = train("--model_args=depth=8", "--epochs=1", f"--model_dir={folder}")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_truncated_init_from_model_says_so(tmp_path, straight, train):
    cut = tmp_path / "cut.keras"
    data = (straight / "last.keras").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    proc = train(f"--init_from={cut}", "--epochs=1", f"--model_dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [f"train: error: --init_from: {cut} is not a .keras file, or is truncated "
                                        f"({len(data) // 2:,} bytes, no zip directory)"]


def test_a_moved_run_folder_spelled_with_a_slash_resumes(tmp_path, two_epochs, train):
    first = copy_of(two_epochs, tmp_path / "first")
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    os.rename(first, moved)
    proc = train(*RUN[:2], "--epochs=2", f"--model_dir={moved}/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming {moved} from epoch 2" in proc.stdout


def test_overwrite_with_another_architecture_starts_again(tmp_path, two_epochs, train):
    folder = copy_of(two_epochs, tmp_path / "run")
    refused = train("--model_args=base_width=4", "--epochs=1", f"--model_dir={folder}")
    assert "holds a run with other flags (--epochs, --model_args); use another --model_dir, pass --overwrite" in \
        _usage_error(refused.returncode, refused.stderr)
    proc = train("--model_args=base_width=4", "--epochs=1", "--overwrite", f"--model_dir={folder}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resuming" not in proc.stdout and "warning" not in proc.stderr
    assert sorted(p.name for p in (folder / "backup").iterdir()) == ["epoch-000001"]
    assert weights(folder / "last.keras")[0].shape[-1] == 4
    assert json.loads((folder / "flags.json").read_text())["model_args"] == ["base_width=4"]


def test_a_checkpoint_of_another_model_is_refused_not_half_loaded(tmp_path):
    """Keras loads a checkpoint whose optimizer does not match with only a warning; the
    checkpoint's variable signature makes any mismatch an error naming the variable."""
    import reszoo
    from training import run_folder
    from training.common.files import CommandError

    def compiled(width):
        model = reszoo.create_model("resnet20", base_width=width, input_shape=(8, 8, 1))
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        model.optimizer.build(model.trainable_variables)
        return model

    checkpoints = run_folder.Checkpoints(str(tmp_path / "backup"), say=lambda line: None)
    saved = compiled(4)
    checkpoints.save(saved, run_folder.State(epoch=1))
    same = compiled(4)
    assert checkpoints.restore(same).epoch == 1
    assert all(np.array_equal(a, b) for a, b in zip(same.get_weights(), saved.get_weights()))
    wider = compiled(8)
    before = [w.copy() for w in wider.get_weights()]
    with pytest.raises(CommandError, match=r"another model \(its variable conv1_conv/kernel \(3, 3, 1, 4\) is "
                                           r"conv1_conv/kernel \(3, 3, 1, 8\) here\)"):
        checkpoints.restore(wider)
    assert all(np.array_equal(a, b) for a, b in zip(before, wider.get_weights()))
    plain_sgd = reszoo.create_model("resnet20", base_width=4, input_shape=(8, 8, 1))
    plain_sgd.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")  # no momentum slots
    with pytest.raises(CommandError, match="its optimizer state has .* variables of other shapes"):
        checkpoints.restore(plain_sgd)
