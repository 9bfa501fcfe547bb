"""``reszoo-serve``: exported models served as TF Serving serves them, on KServe's model server.
Installed with reszoo as the top-level package ``serving``; ``reszoo_cli`` checks that this is
the package it finds.

- ``__main__``: the command (its flags, ``flags``), which runs ``server`` once they are parsed;
- ``options``: the flags, read once (``ServeOptions``), and the model folders under a base path;
- ``model_config``: TF Serving's ``--model_config_file``;
- ``protocol``: TF Serving's REST requests and answers, the v2 inputs, the request errors;
- ``servables``: what a model runs (a version folder for a runtime, an adapter task);
- ``batcher``: concurrent requests as one batch;
- ``model``: ``ServedModel``, on KServe's ``Model`` hooks (preprocess, predict, postprocess);
- ``app``: TF Serving's routes on KServe's app, and each process's table of models;
- ``tf_serving_grpc``, ``tf_serving_metrics``: TF Serving's gRPC API and metrics;
- ``connections``: the HTTP connections (host, read timeout, connection cap, drain).
"""

import training.common  # noqa: F401  (first: the training package quiets TensorFlow's C++ start-up lines)

RESZOO = True
