"""``reszoo-serve``'s flags (absl and the runtime table only: ``--help`` starts no TensorFlow)."""

from absl import flags

from training.common.runtimes import RUNTIMES

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


def check(argv):
    """What is wrong with the flags as a whole, in one line, or None (before the body loads)."""
    values = flags.FLAGS
    if values.model_base_path is None and values.model_config_file is None and not values.adapter_tasks:
        return ("--model_base_path is required (a folder of exported models, e.g. saved_models), or "
                "--model_config_file, or --adapter_tasks")
    if values.model_base_path is not None and values.model_config_file is not None:
        return "give --model_base_path or --model_config_file, not both (the file names each model's base_path)"
    return None
