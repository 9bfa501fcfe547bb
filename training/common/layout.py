"""The folders the commands write and read, each file name spelled once here. An export is TF
Serving's layout (standard library only, so any command, ``reszoo-serve`` included, can read it
before anything heavy is imported):

    saved_models/NAME/         a model folder
      VERSION/                 a version, an integer (renamed into place whole)
        saved_model.pb, variables/                      the SavedModel
        assets.extra/tf_serving_warmup_requests         TF Serving's warm-up requests
        metadata.json                                   what the export is (input, classes, card)
        model.onnx, model.xml, model_int8.*             the other runtimes' files
                                                        (``training.common.runtimes``)

A training run's folder is ``training.run_folder``'s; its file names are here too."""

import os

SAVED_MODEL = "saved_model.pb"
VARIABLES_INDEX = os.path.join("variables", "variables.index")
METADATA = "metadata.json"
WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")

# A training run's folder (``training.run_folder``).
FLAGS_FILE = "flags.json"
LOCK_FILE = ".lock"
BACKUP = "backup"
TASK = "task.npz"
HISTORY = "history.csv"
RESULTS = "results.json"
LOGS = "logs"
BATCH = "batch.png"
CHECKPOINT = "checkpoint.keras"
STATE = "state.json"


def version_folders(base):
    """``[(number, folder)]`` of the versions under a model folder of TF Serving's layout,
    ascending: folders named with ASCII digits ("0010" is version 10, as TF Serving reads it;
    "²" is no number), the first by name where two spell one number."""
    if not os.path.isdir(base):
        return []
    found = {}
    for name in sorted(os.listdir(base)):
        if name.isascii() and name.isdigit() and os.path.isdir(os.path.join(base, name)):
            found.setdefault(int(name), os.path.join(base, name))
    return sorted(found.items())


def versions(base):
    """The version numbers under a model folder of TF Serving's layout, ascending."""
    return [number for number, _ in version_folders(base)]


def next_version(base):
    return max(versions(base), default=0) + 1


def version_folder(path):
    """The version folder to load: ``path`` itself, or its highest integer sub-folder."""
    if path and os.path.isfile(os.path.join(path, SAVED_MODEL)):
        return path
    found = version_folders(path) if path else []
    if found:
        return found[-1][1]
    raise ValueError(f"--saved_model: {path!r} is neither a SavedModel folder nor a folder of versions")


def missing(version):
    """What is missing from a SavedModel folder, or None."""
    if not os.path.isfile(os.path.join(version, SAVED_MODEL)):
        return f"has no {SAVED_MODEL}"
    if not os.path.isfile(os.path.join(version, VARIABLES_INDEX)):
        return "has no variables/ (variables.index): it was copied or written incompletely"
    return None
