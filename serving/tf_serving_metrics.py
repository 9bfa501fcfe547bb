"""TF Serving's Prometheus metrics under its own names, at its own path
(``/monitoring/prometheus/metrics``; TF Serving's monitoring names with ``/`` as ``:``), so its
dashboards move over unchanged. Latencies are in microseconds on TF Serving's buckets
(``monitoring::Buckets::Exponential`` in ``servables/tensorflow/util.cc`` and
``batching/batching_session.cc``). KServe's own histograms stay at ``/metrics``."""

import collections
import contextlib
import threading
import time

from kserve.errors import InvalidInput
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

PATH = "/monitoring/prometheus/metrics"
PREFIX = ":tensorflow:serving:"
REGISTRY = CollectorRegistry()
REQUEST_LATENCY = Histogram(
    PREFIX + "request_latency", "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ["model_name", "API", "entrypoint"], buckets=[10 * 1.8 ** i for i in range(33)], registry=REGISTRY)
RUNTIME_LATENCY = Histogram(
    PREFIX + "runtime_latency", "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    ["model_name", "API", "runtime"], buckets=[10 * 1.8 ** i for i in range(33)], registry=REGISTRY)
QUEUING_LATENCY = Histogram(
    PREFIX + "batching_session:queuing_latency", "Distribution of wall time spent (in microseconds) in queuing",
    ["thread_pool_name"], buckets=[100 * 1.2 ** i for i in range(52)], registry=REGISTRY)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class _RequestCount:
    """``:tensorflow:serving:request_count{model_name, status}``, a counter written as TF
    Serving's exporter writes it: prometheus_client would name it ``..._total``."""

    NAME = PREFIX + "request_count"

    def __init__(self):
        self._counts = collections.Counter()
        self._lock = threading.Lock()

    def inc(self, model_name, status):
        with self._lock:
            self._counts[model_name, status] += 1

    def text(self):
        with self._lock:
            counts = sorted(self._counts.items())
        lines = [f"# HELP {self.NAME} The total number of requests.", f"# TYPE {self.NAME} counter"]
        lines += [f'{self.NAME}{{model_name="{_escape(model)}",status="{status}"}} {count}'
                  for (model, status), count in counts]
        return "\n".join(lines) + "\n"


def _escape(value):
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


REQUEST_COUNT = _RequestCount()


def status_name(err):
    """TF Serving's status code name for a failed request."""
    code = getattr(err, "code", None)
    if hasattr(code, "name"):  # a gRPC status code
        return code.name
    if hasattr(err, "code_name"):
        return err.code_name
    if isinstance(err, InvalidInput):
        return "INVALID_ARGUMENT"
    if isinstance(err, LookupError):
        return "NOT_FOUND"
    return "INTERNAL"


@contextlib.contextmanager
def request(model_name, api, entrypoint):
    """Count and time one request (``entrypoint`` "REST" or "GRPC")."""
    start, status = time.perf_counter(), "OK"
    try:
        yield
    except BaseException as err:
        status = status_name(err)
        raise
    finally:
        REQUEST_COUNT.inc(model_name, status)
        REQUEST_LATENCY.labels(model_name, api, entrypoint).observe((time.perf_counter() - start) * 1e6)


def runtime(model_name, runtime_name, seconds):
    RUNTIME_LATENCY.labels(model_name, "Predict", runtime_name).observe(seconds * 1e6)


def queued(model_name, seconds):
    QUEUING_LATENCY.labels(model_name).observe(seconds * 1e6)


def exposition():
    """The metrics in Prometheus' text format."""
    return REQUEST_COUNT.text().encode() + generate_latest(REGISTRY)
