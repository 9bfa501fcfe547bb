"""What ``reszoo-serve`` serves and how: its flags, read once into ``ServeOptions``, and the
model folders under a base path (TF Serving's layout, ``NAME/VERSION/``)."""

import dataclasses
import os

from training.common.layout import versions


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """What ``reszoo-serve`` serves and how (its flags, read once)."""

    base_path: str = None
    model_name: str = None
    adapter_tasks: tuple = ()
    runtime: str = "saved_model"
    max_batch_size: int = 32
    batch_timeout_s: float = 0.0
    poll_seconds: float = 1.0
    max_request_bytes: int = 16 * 2 ** 20
    request_timeout_s: float = 30.0
    model_configs: tuple = ()  # serving.model_config.ModelConfig of --model_config_file, instead of base_path

    @property
    def watched(self):
        """Whether model folders are given (to load and watch), not only adapter tasks."""
        return self.base_path is not None or bool(self.model_configs)

    def folders(self):
        """``{name: folder}`` of the models to serve; ValueError says why there are none."""
        if self.model_configs:
            return {config.name: config.base_path for config in self.model_configs}
        return model_folders(self.base_path, self.model_name)

    def config(self, name):
        return next((config for config in self.model_configs if config.name == name), None)


def model_folders(base, name=None):
    """``{name: folder}`` of the models under ``base``: ``base`` itself when it holds
    versions (integer folders), named ``name`` or after the folder, else each of its
    sub-folders (TF Serving's model base path)."""
    if not os.path.isdir(base):
        raise ValueError(f"--model_base_path: {base!r} is not a folder")
    if versions(base):
        return {name or os.path.basename(os.path.normpath(base)): base}
    return {d: os.path.join(base, d) for d in sorted(os.listdir(base))
            if not d.startswith(".") and os.path.isdir(os.path.join(base, d))}
