"""TF Serving's ``--model_config_file``: the models to serve, where, which of their versions
(``model_version_policy``: ``latest`` N, ``all`` or ``specific`` versions) and version labels
(``stable``, ``canary``), in TF Serving's text format, read with its own protos
(``tensorflow_serving/config/model_server_config.proto``)::

    model_config_list {
      config {
        name: "resnet20_digits"
        base_path: "/models/resnet20_digits"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }
"""

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One model of the file; the default is TF Serving's: its newest version, no labels."""

    name: str
    base_path: str
    policy: str = "latest"  # "latest", "all" or "specific"
    latest: int = 1  # how many of the newest, for "latest"
    versions: tuple = ()  # which, for "specific"
    labels: tuple = ()  # ((label, version), ...)

    def wanted(self, numbers):
        """Of the complete version ``numbers``, those this policy may serve, newest first, and
        how many of them to serve (None: all that load)."""
        newest = sorted(numbers, reverse=True)
        if self.policy == "specific":
            return [n for n in newest if n in self.versions], None
        return newest, (self.latest if self.policy == "latest" else None)


def read(path):
    """``{name: ModelConfig}`` of TF Serving's model config file ``path``; ValueError with one
    line when the file cannot be read, is not in its format, or asks what cannot be served."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    try:
        with open(path) as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--model_config_file: cannot read {path} ({err.strerror or err})") from None
    try:
        config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as err:
        raise ValueError(f"--model_config_file: {path} is not TF Serving's ModelServerConfig text ({err})") from None
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise ValueError(f"--model_config_file: {path} lists no model (model_config_list {{ config {{ ... }} }})")
    models = {}
    for entry in config.model_config_list.config:
        where = f"--model_config_file: model {entry.name!r}"
        if not entry.name or entry.name in models:
            raise ValueError(f"{where}: each model needs a name of its own")
        if entry.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{where}: model_platform {entry.model_platform!r}; reszoo-serve serves reszoo exports "
                             "(\"tensorflow\")")
        base = entry.base_path  # as TF Serving reads it: a relative one from the working folder
        if not base or not os.path.isdir(base):
            raise ValueError(f"{where}: base_path {entry.base_path!r} is not a folder")
        choice = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        policy = getattr(entry.model_version_policy, choice)
        latest = (policy.num_versions or 1) if choice == "latest" else 1
        versions = tuple(sorted(policy.versions)) if choice == "specific" else ()
        if choice == "specific" and not versions:
            raise ValueError(f"{where}: a specific policy needs versions")
        labels = tuple(sorted(entry.version_labels.items()))
        for label, number in labels:
            if choice == "specific" and number not in versions:
                raise ValueError(f"{where}: label {label!r} names version {number}, which its specific policy "
                                 f"({', '.join(map(str, versions))}) does not serve")
        models[entry.name] = ModelConfig(entry.name, base, choice, latest, versions, labels)
    return models
