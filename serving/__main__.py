"""Serve exported models over HTTP: ``reszoo-serve --model_base_path=saved_models``
(``python -m serving``).

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

from serving import flags
from training.common import command

BODY = "serving.server"


def cli():
    """``reszoo-serve`` and ``python -m serving``: the flags parsed, then ``serving.server`` runs."""
    flags.define()
    command.run(BODY, flags, __doc__, run_as="serving", name="serve",
                requires={"kserve": "reszoo-serve needs KServe's model server: pip install -e '.[serve]'"},
                check=flags.check)


if __name__ == "__main__":
    cli()
