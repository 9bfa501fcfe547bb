"""Serve exported models over HTTP: ``reszoo-serve --model_base_path=saved_models``.

Serves every model under the base path (or the one model folder given) at its newest complete
version, as TensorFlow Serving does, on KServe's Python model server: TF Serving's REST API
(``POST /v1/models/NAME:predict`` with ``instances`` or ``inputs``, ``{"b64": ...}`` images,
``signature_name``; ``GET /v1/models/NAME`` for the version status, ``.../metadata`` for its
signature defs) on ``--port``, TF Serving's gRPC API (PredictionService, ModelService) on
``--grpc_port``, the Open Inference Protocol (v2) on ``--port`` and over gRPC on
``--v2_grpc_port``, and ``/metrics``.
A version exported while it runs is served from the next poll on; a ``.tmp-*`` folder never is.
Residual-adapter tasks (``--adapter_tasks``) share their backbone in memory; ``--workers`` runs
the REST API in several processes.
"""

import errno
import os
import socket
import sys

from absl import app, flags

from training import runtimes
from training.runtimes import RUNTIMES

FLAGS = flags.FLAGS
PORT_FLAGS = ("port", "grpc_port", "v2_grpc_port")


def define_flags():
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


def _say(line):
    stream = sys.stderr if line.startswith("serve: error") else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def _usage(message):
    _say(f"serve: error: {message}")
    sys.exit(2)


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


def _tasks(runs, options):
    """The adapter tasks of run folders ``runs``, served; one that cannot load is reported."""
    from training import serving

    served = []
    for run in runs:
        name = os.path.basename(os.path.normpath(run))
        try:
            served.append(serving.served_model(name, None, options, _say, task=run))
        except ValueError as err:
            _say(f"serve: error: adapter task {name}: {err}; not served")
            continue
        _say(f"serving {name} (adapter task on {served[-1].current.metadata['backbone']})")
    return served


def main(argv):
    if len(argv) > 1:
        _usage(f"unexpected arguments {argv[1:]}")
    if FLAGS.model_base_path is None and FLAGS.model_config_file is None and not FLAGS.adapter_tasks:
        _usage("--model_base_path is required (a folder of exported models, e.g. saved_models), or "
               "--model_config_file, or --adapter_tasks")
    if FLAGS.model_base_path is not None and FLAGS.model_config_file is not None:
        _usage("give --model_base_path or --model_config_file, not both (the file names each model's base_path)")
    try:
        import kserve
    except ImportError:
        _usage("reszoo-serve needs KServe's model server: pip install -e '.[serve]'")
    problem = runtimes.missing_package(FLAGS.runtime, "serve")
    if problem:
        _usage(problem)
    from training import model_config, serving

    configs = ()
    if FLAGS.model_config_file is not None:
        try:
            configs = tuple(model_config.read(FLAGS.model_config_file).values())
        except ValueError as err:
            _usage(str(err))
    options = serving.ServeOptions(
        base_path=FLAGS.model_base_path, model_name=FLAGS.model_name, adapter_tasks=tuple(FLAGS.adapter_tasks),
        runtime=FLAGS.runtime, max_batch_size=FLAGS.max_batch_size, batch_timeout_s=FLAGS.batch_timeout_ms / 1000,
        poll_seconds=FLAGS.poll_seconds, max_request_bytes=int(FLAGS.max_request_mb * 2 ** 20),
        request_timeout_s=FLAGS.request_timeout_ms / 1000,
        model_configs=configs)
    folders = {}
    if options.watched:
        try:
            folders = options.folders()
        except ValueError as err:
            _usage(str(err))
        if not folders:
            _usage(f"--model_base_path: {options.base_path} holds no model folders (export one with "
                   "python -m training.export)")
    for run in options.adapter_tasks:
        if not os.path.isdir(run):
            _usage(f"--adapter_tasks: {run!r} is not a run folder")
    ports = {flag: getattr(FLAGS, flag) for flag in PORT_FLAGS if getattr(FLAGS, flag)}
    for i, (flag, port) in enumerate(ports.items()):
        same = [other for other in list(ports)[:i] if ports[other] == port]
        if same:
            _usage(f"--{flag} must differ from --{same[0]} (both {port})")
        problem = _cannot_listen(flag, FLAGS.host, port)
        if problem:
            _usage(problem)

    models = [serving.served_model(name, folder, options, _say) for name, folder in folders.items()]
    for model in models:
        if model.current is None and not model.failed:
            _say(f"serve: error: {model.name} ({model.folder}) has no complete version yet; served once one "
                 "is exported")
    ready = [model for model in models if model.ready] + _tasks(options.adapter_tasks, options)
    if not ready:
        _say("serve: error: nothing to serve")
        sys.exit(1)
    serving.set_up_process(options, _say)
    from training import connections, tf_serving_grpc

    tf_serving = tf_serving_grpc.Server(FLAGS.host, FLAGS.grpc_port, options) if FLAGS.grpc_port else None
    limits = connections.Limits(host=FLAGS.host, read_timeout_s=FLAGS.read_timeout_ms / 1000,
                                max_connections=FLAGS.max_connections, drain_s=FLAGS.drain_ms / 1000,
                                log_requests=FLAGS.log_requests)
    server = tf_serving_grpc.ModelServer(
        tf_serving, limits, http_port=FLAGS.port, grpc_port=FLAGS.v2_grpc_port or 8081,
        enable_grpc=bool(FLAGS.v2_grpc_port),
        registered_models=serving.Repository(), enable_latency_logging=False, workers=FLAGS.workers)
    _say(f"serving REST on {connections.address(FLAGS.host, FLAGS.port)}"
         + (f" ({FLAGS.workers} worker processes)" if FLAGS.workers > 1 else "")
         + (f", TF Serving's gRPC on port {FLAGS.grpc_port}" if FLAGS.grpc_port else "")
         + (f", v2 gRPC on port {FLAGS.v2_grpc_port}" if FLAGS.v2_grpc_port else ""))
    server.start(ready)


def cli():
    """``reszoo-serve`` and ``python -m training.serve``."""
    from training import flags as run_flags

    define_flags()
    app.run(main, flags_parser=run_flags.parser(sys.modules[__name__], __doc__))


if __name__ == "__main__":
    cli()
