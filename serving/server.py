"""``reszoo-serve``'s body, run once its flags are parsed (``serving.__main__``): the flags
checked, the models loaded, and KServe's model server started with TF Serving's gRPC API
beside it."""

import errno
import os
import socket
import sys

from absl import flags as absl_flags

from serving import app, connections, flags, model_config, tf_serving_grpc
from serving.options import ServeOptions
from training.common import runtimes

FLAGS = absl_flags.FLAGS


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
    served = []
    for run in runs:
        name = os.path.basename(os.path.normpath(run))
        try:
            served.append(app.served_model(name, None, options, _say, task=run))
        except ValueError as err:
            _say(f"serve: error: adapter task {name}: {err}; not served")
            continue
        _say(f"serving {name} (adapter task on {served[-1].current.metadata['backbone']})")
    return served


def main(argv):
    problem = runtimes.missing_package(FLAGS.runtime, "serve")
    if problem:
        _usage(problem)
    configs = ()
    if FLAGS.model_config_file is not None:
        try:
            configs = tuple(model_config.read(FLAGS.model_config_file).values())
        except ValueError as err:
            _usage(str(err))
    options = ServeOptions(
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
    ports = {flag: getattr(FLAGS, flag) for flag in flags.PORT_FLAGS if getattr(FLAGS, flag)}
    for i, (flag, port) in enumerate(ports.items()):
        same = [other for other in list(ports)[:i] if ports[other] == port]
        if same:
            _usage(f"--{flag} must differ from --{same[0]} (both {port})")
        problem = _cannot_listen(flag, FLAGS.host, port)
        if problem:
            _usage(problem)

    models = [app.served_model(name, folder, options, _say) for name, folder in folders.items()]
    for model in models:
        if model.current is None and not model.failed:
            _say(f"serve: error: {model.name} ({model.folder}) has no complete version yet; served once one "
                 "is exported")
    ready = [model for model in models if model.ready] + _tasks(options.adapter_tasks, options)
    if not ready:
        _say("serve: error: nothing to serve")
        sys.exit(1)
    app.set_up_process(options, _say)
    tf_serving = tf_serving_grpc.Server(FLAGS.host, FLAGS.grpc_port, options) if FLAGS.grpc_port else None
    limits = connections.Limits(host=FLAGS.host, read_timeout_s=FLAGS.read_timeout_ms / 1000,
                                max_connections=FLAGS.max_connections, drain_s=FLAGS.drain_ms / 1000,
                                log_requests=FLAGS.log_requests)
    server = tf_serving_grpc.ModelServer(
        tf_serving, limits, http_port=FLAGS.port, grpc_port=FLAGS.v2_grpc_port or 8081,
        enable_grpc=bool(FLAGS.v2_grpc_port),
        registered_models=app.Repository(), enable_latency_logging=False, workers=FLAGS.workers)
    _say(f"serving REST on {connections.address(FLAGS.host, FLAGS.port)}"
         + (f" ({FLAGS.workers} worker processes)" if FLAGS.workers > 1 else "")
         + (f", TF Serving's gRPC on port {FLAGS.grpc_port}" if FLAGS.grpc_port else "")
         + (f", v2 gRPC on port {FLAGS.v2_grpc_port}" if FLAGS.v2_grpc_port else ""))
    server.start(ready)
