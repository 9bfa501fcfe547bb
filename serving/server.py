"""``reszoo-serve``'s body, run once its flags are parsed and checked (``serving.__main__``,
``serving.flags``): the models loaded, and KServe's model server started with TF Serving's gRPC
API beside it."""

import os
import sys

from absl import flags as absl_flags

from serving import app, connections, flags, tf_serving_grpc

FLAGS = absl_flags.FLAGS


def _say(line):
    stream = sys.stderr if line.startswith("serve: error") else sys.stdout
    stream.write(line + "\n")
    stream.flush()


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
    options = flags.options()
    folders = options.folders() if options.watched else {}
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
