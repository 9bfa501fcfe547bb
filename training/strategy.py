"""tf.distribute strategies for ``--distribution_strategy``: checked before they are made, and
never a silent wait for a worker that does not come."""

import json
import os
import socket
import sys
import time

from training.common.command import CommandError, first_line

def cluster_from_env():
    """TF_CONFIG's cluster and this worker's task, checked: ``(cluster, task_type, index)``.
    A usage error names what is missing or out of range."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise CommandError("--distribution_strategy=multi_worker_mirrored needs the TF_CONFIG environment "
                           "variable (cluster and this worker's task)", 2)
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise CommandError(f"TF_CONFIG is not valid JSON: {err}", 2) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) and ":" in a for a in v) for v in cluster.values()):
        raise CommandError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...]} (a list of host:port '
                           "addresses per task type)", 2)
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise CommandError('TF_CONFIG needs this process\'s "task": {"type": "worker", "index": N}', 2)
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        raise CommandError(f"TF_CONFIG's task type {kind!r} is not in its cluster ({', '.join(cluster)})", 2)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise CommandError(f"TF_CONFIG's task index {index!r} is out of range: the cluster has "
                           f"{len(cluster[kind])} {kind} address(es), so 0..{len(cluster[kind]) - 1}", 2)
    return cluster, kind, index


def _reachable(address):
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except (OSError, ValueError):
        return False


class WorkerWatch:
    """While the cluster forms, TensorFlow waits inside C++ for every worker, with no timeout
    and the GIL held, so no Python thread or signal handler runs. A small watcher process
    says every ``every`` seconds which workers are not reachable yet and, after ``timeout``
    seconds, gives up with one line; faulthandler's C-level timer then ends this process
    with exit code 1 (nothing has been written by then)."""

    def __init__(self, peers, timeout, every=15.0):
        self.peers, self.timeout, self.every = peers, timeout, every

    def __enter__(self):
        import faulthandler
        import subprocess

        self._null = open(os.devnull, "w")
        faulthandler.dump_traceback_later(self.timeout + 1.0, exit=True, file=self._null)
        self._watcher = subprocess.Popen(
            [sys.executable, "-m", "training.strategy", str(os.getpid()), repr(time.time()), str(self.timeout),
             str(self.every), *self.peers])
        return self

    def __exit__(self, *exc):
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        self._watcher.kill()
        self._watcher.wait()
        self._null.close()


def watch(parent, started, timeout, every, peers, out=sys.stderr):
    """The watcher of ``WorkerWatch``, in its own process. Its clock is the parent's
    (``started``, a ``time.time()``), so its last line comes before the parent's end however
    long its own start took."""
    start = time.monotonic() - (time.time() - started)
    while True:
        waited = time.monotonic() - start
        time.sleep(max(min(every, timeout - waited), 0.0))
        waited = time.monotonic() - start
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return
        missing = [a for a in peers if not _reachable(a)]
        if waited >= timeout:
            out.write(f"train: error: gave up after {waited:.0f} s waiting for the cluster in TF_CONFIG "
                      f"(not reachable: {', '.join(missing) or 'none, but the cluster did not form'}); "
                      "start every worker with the same cluster, or raise --worker_timeout\n")
            out.flush()
            return
        out.write(f"train: waiting for workers {', '.join(missing) or '(all reachable; forming the cluster)'}"
                  f" ({waited:.0f} s of --worker_timeout={timeout:g})\n")
        out.flush()


def make(kind, tpu=None, worker_timeout=600.0):
    """The strategy for ``--distribution_strategy=kind``. Call it before any other
    TensorFlow op: multi-worker collectives must be set up first."""
    import tensorflow as tf

    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker_mirrored":
        cluster, task, index = cluster_from_env()
        me = cluster[task][index]
        peers = [a for addresses in cluster.values() for a in addresses if a != me]
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=worker_timeout)
        with WorkerWatch(peers, worker_timeout):
            try:
                return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            except tf.errors.OpError as err:
                raise CommandError(f"cannot start this worker ({task} {index} at {me} in TF_CONFIG): "
                                   f"{first_line(err.message)}; is the port in use?") from None
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as err:  # no TPU: ValueError, NotFoundError, RuntimeError... by platform
        raise CommandError(f"--distribution_strategy=tpu: no TPU at --tpu={tpu!r} "
                           f"({type(err).__name__}: {first_line(err)})", 2) from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """The chief of a TF_CONFIG cluster: task "chief", or worker 0 when there is none."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5:])
