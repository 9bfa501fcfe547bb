"""The runtimes an export's version folder is served and validated with: one row each, naming
the file it reads, the package that runs it, its precision and the export flag that writes the
file (stdlib only, so every command's flags can list them). ``reszoo-serve`` finds every
runtime's package in the ``[serve]`` extra, the export and ``reszoo-validate`` in ``[deploy]``."""

import dataclasses
import importlib.util
import os


@dataclasses.dataclass(frozen=True)
class Runtime:
    name: str
    file: str  # in the version folder
    package: str  # the module that runs it
    precision: str
    made_by: str
    hint: str = ""  # OpenVINO's INFERENCE_PRECISION_HINT


RUNTIMES = {runtime.name: runtime for runtime in (
    Runtime("saved_model", "saved_model.pb", "tensorflow", "float32", "every export"),
    Runtime("onnx", "model.onnx", "onnxruntime", "float32", "--formats=onnx"),
    Runtime("onnx_int8", "model_int8.onnx", "onnxruntime", "int8", "--quantize=int8"),
    Runtime("openvino", "model.xml", "openvino", "float32", "--formats=openvino", hint="f32"),
    Runtime("openvino_bf16", "model.xml", "openvino", "bfloat16", "--formats=openvino", hint="bf16"),
    Runtime("openvino_int8", "model_int8.xml", "openvino", "int8", "--quantize=int8", hint="f32"),
    Runtime("litert_int8", "model_int8.tflite", "ai_edge_litert", "int8", "--quantize=int8"),
)}
INT8 = tuple(name for name, runtime in RUNTIMES.items() if runtime.precision == "int8")


def weights_file(runtime):
    """The file beside ``runtime.file`` that holds the weights (OpenVINO's ``.bin``), or None."""
    return runtime.file[:-len(".xml")] + ".bin" if runtime.file.endswith(".xml") else None


def files_of(runtime):
    return [f for f in (runtime.file, weights_file(runtime)) if f]


def missing_file(name, folder):
    """Why the version folder ``folder`` cannot run with ``name``: its first absent file and the
    export flag that writes it; None when all are there."""
    runtime = RUNTIMES[name]
    absent = [f for f in files_of(runtime) if not os.path.isfile(os.path.join(folder, f))]
    if not absent or name == "saved_model":  # a SavedModel's own checks say more
        return None
    held = "; an export whose int8 lost too much accuracy has none" if runtime.precision == "int8" else ""
    return f"has no {absent[0]} (export it with {runtime.made_by}{held})"


def missing_package(name, extra, asked_by=None):
    """One line naming the extra to install when ``name``'s package cannot be imported, else None."""
    package = RUNTIMES[name].package
    if importlib.util.find_spec(package) is None:
        return f"{asked_by or '--runtime=' + name} needs {package}: pip install -e '.[{extra}]'"
    return None


# The instruction sets that decide int8 and bf16 speed on a CPU.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags():
    """Which of ``CPU_FLAGS`` this CPU has (Linux's /proc/cpuinfo; none elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            found = set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return []
    return [flag for flag in CPU_FLAGS if flag in found]
