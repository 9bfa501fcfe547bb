"""``reszoo-serve``'s flags, read once into ``ServeOptions`` and checked before the body loads:
``--help`` and every usage error (exit 2) start no TensorFlow, as TF Serving's own flags answer
at once."""

import errno
import functools
import os
import socket

from absl import flags

from serving import model_config
from serving.options import ServeOptions
from training.common.runtimes import RUNTIMES, missing_package

PORT_FLAGS = ("port", "grpc_port", "v2_grpc_port")


def define():
    flags.DEFINE_string("model_base_path", None, "a folder of model folders (saved_models), or one model folder "
                        "(saved_models/resnet20_digits), each holding integer version folders")
    flags.DEFINE_list("adapter_tasks", [], "run folders trained with --adapters: each served as a model named after "
                      "its folder, all tasks of one backbone sharing it in memory")
    flags.DEFINE_string("model_config_file", None, "TF Serving's model config file (ModelServerConfig text): the "
                        "models, their base_path, model_version_policy (latest, all, specific) and version_labels; "
                        "instead of --model_base_path")
    flags.DEFINE_string("model_name", None, "the model's name when --model_base_path is one model folder (default: "
                        "the folder's name; TF Serving's flag, which KServe's runtimes pass)")
    flags.DEFINE_string("host", "0.0.0.0", "the address REST and TF Serving's gRPC listen on (127.0.0.1: this "
                        "machine only; KServe's v2 gRPC listens on every interface)")
    flags.DEFINE_integer("port", 8501, "REST port (TF Serving's)", lower_bound=1, upper_bound=65535)
    flags.DEFINE_integer("grpc_port", 8500, "gRPC port of TF Serving's API (PredictionService, ModelService; TF "
                         "Serving's); 0: none", lower_bound=0, upper_bound=65535)
    flags.DEFINE_integer("v2_grpc_port", 8081, "gRPC port of the Open Inference Protocol (v2; KServe's); 0: none",
                         lower_bound=0, upper_bound=65535)
    flags.DEFINE_enum("runtime", "saved_model", list(RUNTIMES), "the file of each version to serve: "
                      + "; ".join(f"{name}: {r.file} ({r.package}, {r.precision}; {r.made_by})"
                                  for name, r in RUNTIMES.items()))
    flags.DEFINE_integer("max_batch_size", 32, "concurrent requests to a model run as one batch of up to this "
                         "many images; 1: no batching", lower_bound=1)
    flags.DEFINE_float("batch_timeout_ms", 0.0, "when requests queue behind a busy model, wait this long for more "
                       "before its next call (0: take what queued; a request to an idle model never waits)",
                       lower_bound=0.0)
    flags.DEFINE_float("poll_seconds", 1.0, "how often to look for new versions and models (TF Serving's "
                       "--file_system_poll_wait_seconds)", lower_bound=0.05)
    flags.DEFINE_float("max_request_mb", 16.0, "larger request bodies are refused (413)", lower_bound=0.001)
    flags.DEFINE_float("request_timeout_ms", 30000.0, "a request not answered by then gets 504 (gRPC: "
                       "DEADLINE_EXCEEDED) and gives up its place in the batch queue (TF Serving's "
                       "--rest_api_timeout_in_ms)", lower_bound=1.0)
    flags.DEFINE_float("read_timeout_ms", 30000.0, "a REST request must arrive whole (head and body) within this of "
                       "its first byte, else 408 and its connection closes (against slow clients)", lower_bound=1.0)
    flags.DEFINE_integer("max_connections", 1000, "open REST connections at most (per worker); past it, a new "
                         "connection closes the one idle longest", lower_bound=1)
    flags.DEFINE_float("drain_ms", 0.0, "on SIGTERM, go on serving this long with /v2/health/ready at 503 before "
                       "closing the listener (Kubernetes: the readiness probe's period); requests in flight then "
                       "finish", lower_bound=0.0)
    flags.DEFINE_integer("workers", 1, "REST server processes (KServe's multi-process server), each with its own copy "
                         "of the models; gRPC stays in the main process", lower_bound=1)
    flags.DEFINE_bool("log_requests", False, "log a line per request (uvicorn's access log, KServe's timings)")


@functools.cache
def options():
    """The flags read once into ``ServeOptions`` (``--model_config_file`` parsed); ValueError
    says what is wrong with them."""
    values = flags.FLAGS
    configs = tuple(model_config.read(values.model_config_file).values()) if values.model_config_file else ()
    return ServeOptions(
        base_path=values.model_base_path, model_name=values.model_name, adapter_tasks=tuple(values.adapter_tasks),
        runtime=values.runtime, max_batch_size=values.max_batch_size, batch_timeout_s=values.batch_timeout_ms / 1000,
        poll_seconds=values.poll_seconds, max_request_bytes=int(values.max_request_mb * 2 ** 20),
        request_timeout_s=values.request_timeout_ms / 1000, model_configs=configs)


def check():
    """What is wrong with the flags as a whole, in one line, or None (before the body loads):
    what to serve, the runtime's package, the config file, the model folders, the ports and
    the host."""
    values = flags.FLAGS
    if values.model_base_path is None and values.model_config_file is None and not values.adapter_tasks:
        return ("--model_base_path is required (a folder of exported models, e.g. saved_models), or "
                "--model_config_file, or --adapter_tasks")
    if values.model_base_path is not None and values.model_config_file is not None:
        return "give --model_base_path or --model_config_file, not both (the file names each model's base_path)"
    problem = missing_package(values.runtime, "serve")
    if problem:
        return problem
    try:
        served = options()
        if served.watched and not served.folders():
            return (f"--model_base_path: {served.base_path} holds no model folders (export one with "
                    "python -m training.export)")
    except ValueError as err:
        return str(err)
    for run in served.adapter_tasks:
        if not os.path.isdir(run):
            return f"--adapter_tasks: {run!r} is not a run folder"
    ports = {flag: getattr(values, flag) for flag in PORT_FLAGS if getattr(values, flag)}
    for i, (flag, port) in enumerate(ports.items()):
        same = [other for other in list(ports)[:i] if ports[other] == port]
        if same:
            return f"--{flag} must differ from --{same[0]} (both {port})"
        problem = _cannot_listen(flag, values.host, port)
        if problem:
            return problem
    return None


def _cannot_listen(flag, host, port):
    """Why the server could not listen on ``host``:``port``, or None."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except socket.gaierror:
            return f"--host={host}: not an address or a name this machine resolves"
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return f"--{flag}={port}: the port is in use (another server is running there?)"
            return f"--host={host}: cannot listen there ({err.strerror})"
    return None
