"""What ``reszoo-export`` writes, and ``reszoo-train --export`` too (``training.export`` parses the
flags, then runs ``main`` here): one version folder of TF Serving's layout, written whole under a
temporary name and renamed into place, every file checked against the Keras model first.
``export(...)`` is the same from Python.
"""

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging
from keras.src.backend.tensorflow import nn
from tensorflow_serving.apis import prediction_log_pb2

import reszoo
from reszoo import datasets, hub, naming
from reszoo.errors import WeightsError
from training import quantize, run_folder
from training.common import command, engines, files, runtimes
from training.common.images import EvalTransform, serving_image
from training.common.layout import METADATA, WARMUP, next_version
from training.common.runtimes import RUNTIMES
from training.flags import EXPORT_FORMATS as FORMATS

FLAGS = flags.FLAGS
TF_FORMATS = ("onnx", "openvino", "tflite")  # made from TensorFlow's graph
TOLERANCE = dict(rtol=1e-4, atol=1e-4)  # logits, float32 model vs exported graph; atol in max |logit| (>= 1)


class ExportError(command.CommandError):
    """A problem with the export request; printed as one line. ``code`` 2 is a usage error."""


@dataclasses.dataclass(frozen=True)
class Int8Options:
    """``--quantize=int8``'s options: how many calibration images, from where (a folder;
    default the run's training split), the held-out images (a folder; default the run's test
    split), and the top-1 points int8 may lose against float32."""

    calibration_images: int = 256
    calibration_data: str = None
    validation_data: str = None
    max_accuracy_drop: float = 1.0


def _read_run(model_dir, checkpoint):
    if not model_dir or not os.path.isdir(model_dir):
        raise ExportError(f"--model_dir: {model_dir!r} is not a training run folder", 2)
    path = os.path.join(model_dir, run_folder.BEST if checkpoint == "best" else run_folder.LAST)
    last = os.path.join(model_dir, run_folder.LAST)
    if checkpoint == "best" and not os.path.isfile(path) and os.path.isfile(last):
        sys.stderr.write(f"export: note: {model_dir} has no {run_folder.BEST} (the run never validated during "
                         f"training: --eval_every > --epochs); exporting its final model, {run_folder.LAST}\n")
        path = last
    if not os.path.isfile(path):
        advice = "or pass --checkpoint=best" if checkpoint == "last" else "no model has been validated yet"
        raise ExportError(f"{path} does not exist: the run has not finished (train it to the end; {advice})", 2)
    info = {}
    for name in (run_folder.RESULTS, run_folder.FLAGS_FILE):
        file = os.path.join(model_dir, name)
        if os.path.isfile(file):
            try:
                info[name] = files.read_json(file)
            except files.CommandError as err:
                raise ExportError(str(err)) from None
    return path, info.get(run_folder.RESULTS, {}), info.get(run_folder.FLAGS_FILE, {})


def _load(path, flag="--model_dir"):
    try:
        return files.load_model(path, flag)
    except files.CommandError as err:
        raise ExportError(str(err), err.code) from None


def _source(model_dir, checkpoint, weights, model_name, model_file, name):
    """The model to export and what the export says of it (``_describe``), from exactly one
    of a run folder, published weights and a ``.keras`` file, resolved here once."""
    given = [flag for flag, value in (("--model_dir", model_dir), ("--weights", weights), ("--model_file", model_file))
             if value]
    if len(given) != 1:
        raise ExportError(f"give one of {', '.join(given)}" if given else "give --model_dir (a training run folder), "
                          "--weights (published weights) or --model_file (a .keras file)", 2)
    if model_name and not weights:
        raise ExportError("--model names the architecture of --weights=imagenet", 2)
    if weights:
        return _published(weights, model_name, name)
    if model_file:
        if not os.path.isfile(model_file):
            raise ExportError(f"--model_file={model_file}: no such file", 2)
        model = _load(model_file, "--model_file")
        stem = os.path.splitext(os.path.basename(model_file))[0]
        return model, _describe(model, model_file, model_file, {}, {}, name or stem)
    path, results, run_flags = _read_run(model_dir, checkpoint)
    model = _load(path)
    return model, _describe(model, path, model_dir, results, run_flags, name)


def _published(weights, model_name, name):
    """Published weights as an export: the model at its card's input size, timm's eval
    transform (crop_pct, interpolation) for timm's weights, ImageNet-1k's class names."""
    try:
        model = reszoo.create_model(model_name, weights=weights) if model_name else reszoo.create_model(weights=weights)
    except (WeightsError, ValueError, TypeError) as err:
        raise ExportError(f"--weights={weights}: {err}", 2) from None
    card = reszoo.model_card(model)["weights"]
    tag = model.build_spec.weights
    timm = tag.startswith(hub.PREFIX)
    classes = model.output_shape[-1]
    _, imagenet = datasets.imagenet_classes()
    info = _describe(model, tag, tag, {}, {"model": model.build_spec.name},
                     name or (tag[len(hub.PREFIX):] if timm else f"{model.build_spec.name}_imagenet").replace(".", "_"),
                     class_names=imagenet if classes == len(imagenet) else None,
                     dataset="imagenet-1k" if classes == len(imagenet) else tag.rsplit("_", 1)[-1])
    transform = EvalTransform(card.get("crop_pct", 1.0), card.get("interpolation", "bilinear")) if timm else \
        EvalTransform()
    return model, {**info, "transform": transform, "card": card}


def _preprocessing(model):
    names = [layer.name for layer in model.layers]
    if naming.PREPROCESS not in names:
        return {"kind": "none", "note": "the model takes inputs as given"}
    layer = model.get_layer(naming.PREPROCESS)
    if hasattr(layer, "mode"):  # reszoo.ImagePreprocess: keras.applications' preprocess_input
        return {"kind": f"keras.applications preprocess_input, mode {layer.mode!r}, inside the model",
                "input_range": "raw RGB pixels, 0..255"}

    mean = np.ravel(np.asarray(layer.mean, "float64")).tolist()
    std = np.sqrt(np.ravel(np.asarray(layer.variance, "float64"))).tolist()
    return {"kind": "per-channel standardisation inside the model: (pixel - mean) / std",
            "mean": mean, "std": std, "input_range": "raw pixels, 0..255"}


@contextlib.contextmanager
def _plain_grouped_convolutions():
    """Trace grouped convolutions (ResNeXt's) as TensorFlow's own ``Conv2D``. Keras' TensorFlow
    backend wraps them in ``tf.function(jit_compile=True)`` (``keras.src.backend.tensorflow.nn.conv``,
    for CPUs that once lacked the kernel), a call tf2onnx leaves as an unknown op and TF Serving
    would XLA-compile on its first request. TensorFlow 2.x runs grouped ``Conv2D`` on CPU itself."""
    keras_conv = nn.conv

    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        if ((data_format or keras.config.image_data_format()) != "channels_last" or len(inputs.shape) != 4
                or inputs.shape[-1] == kernel.shape[-2]):
            return keras_conv(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(inputs, kernel, strides, padding.upper(), dilations=dilation_rate)

    nn.conv = conv
    try:
        yield
    finally:
        nn.conv = keras_conv


def export_core(model, path, image_shape):
    """The Keras model alone as a SavedModel (``serve``: float32 pixels to logits), the graph
    every other format is made from."""
    spec = keras.InputSpec(shape=(None, *image_shape), dtype="float32")
    with _plain_grouped_convolutions():
        model.export(path, format="tf_saved_model", input_signature=[spec], verbose=False)


def _serving_module(tf, core, image_shape, class_names, top_k, transform):
    """A tf.Module around the Keras-exported ``core`` (float32 pixels -> logits); encoded
    images go through ``transform`` (``training.common.images.EvalTransform``)."""
    height, width, channels = image_shape
    names = tf.constant([str(n) for n in class_names])
    k = min(top_k, len(class_names))

    def outputs(images):
        logits = tf.cast(core.serve(images), tf.float32)
        probabilities = tf.nn.softmax(logits)
        scores, ids = tf.math.top_k(probabilities, k)
        return {"logits": logits, "probabilities": probabilities, "top_k_ids": ids,
                "top_k_scores": scores, "top_k_names": tf.gather(names, ids)}

    module = tf.Module()
    module.core = core
    module.class_names = names
    pixels = tf.TensorSpec([None, height, width, channels], tf.float32, name="images")
    module.serving_default = tf.function(lambda images: outputs(images), input_signature=[pixels])
    module.serving_uint8 = tf.function(
        lambda images: outputs(tf.cast(images, tf.float32)),
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")])
    module.serving_bytes = tf.function(
        lambda image_bytes: outputs(tf.map_fn(lambda data: serving_image(data, image_shape, transform), image_bytes,
                                              fn_output_signature=pixels.dtype)),
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    return module


def _check(name, run, x, expected):
    """``run(x)`` (a written file's logits) equals the Keras model's ``expected`` within
    ``TOLERANCE``; a file its runtime cannot load or run is refused in one line too."""
    try:
        got = np.asarray(run(x), "float32")
    except Exception as err:  # each runtime raises its own types (onnxruntime's InvalidGraph, OpenVINO's RuntimeError)
        raise ExportError(f"{name}: its runtime cannot run it ({command.first_line(err)}); nothing was written") from None
    atol = TOLERANCE["atol"] * max(1.0, float(np.abs(expected).max()))  # kernels' float32 error grows with it
    if got.shape != expected.shape or not (
            np.abs(got - expected) <= atol + TOLERANCE["rtol"] * np.abs(expected)).all():
        worst = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else got.shape
        raise ExportError(f"{name} does not reproduce the Keras model (max |difference| {worst}); "
                          "nothing was written")


def _export_onnx(core_dir, out):
    """tf2onnx from the SavedModel (its from_keras/from_function cannot freeze the
    normalisation constants that Keras captures), checked with onnxruntime by the caller."""
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        raise ExportError("--formats=onnx needs tf2onnx and onnxruntime: pip install -e '.[deploy]'", 2) from None
    proc = subprocess.run(
        [sys.executable, "-m", "tf2onnx.convert", "--saved-model", core_dir, "--signature_def", "serve",
         "--output", out, "--opset", "17", "--rename-inputs", "images", "--rename-outputs", "logits"],
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0 or not os.path.isfile(out):
        tail = [l for l in proc.stderr.splitlines() if l.strip()][-1:] or ["no output"]
        raise ExportError(f"tf2onnx failed: {tail[0]}")


def export_openvino(folder):
    """OpenVINO's float32 IR (``model.xml``, ``model.bin``) converted from the folder's
    ``model.onnx`` (OpenVINO reads tf2onnx's graph as it is; weights kept in float32, not the
    float16 its ``save_model`` writes by default)."""
    import openvino as ov

    ov.save_model(ov.convert_model(os.path.join(folder, RUNTIMES["onnx"].file)),
                  os.path.join(folder, RUNTIMES["openvino"].file), compress_to_fp16=False)


def _export_tflite(tf, core_dir, out):
    converter = tf.lite.TFLiteConverter.from_saved_model(core_dir, signature_keys=["serve"])
    try:
        flatbuffer = converter.convert()
    except Exception as err:  # the converter raises ConverterError and others
        raise ExportError(f"the TFLite converter failed: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    with open(out, "wb") as f:
        f.write(flatbuffer)


def _run_tflite(tf, path, x):
    with warnings.catch_warnings():  # tf.lite.Interpreter's notice that LiteRT will replace it
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    runner = interpreter.get_signature_runner("serve")
    return next(iter(runner(**{runner.get_input_details().popitem()[0]: x}).values()))


def export(model_dir=None, export_dir="saved_models", name=None, version=0, formats=("saved_model",),
           checkpoint="last", top_k=5, int8=None, weights=None, model_name=None, model_file=None):
    """Export a run (``model_dir``), published weights (``weights``, with ``model_name`` for
    "imagenet") or a ``.keras`` file (``model_file``); returns the version folder. ``int8``
    (an ``Int8Options``) also writes the int8 files; one that loses too much accuracy is left
    out of the version, and an ExportError (code 2) says so after. Raises
    ExportError with a one-line message."""
    if int8 is not None:
        formats = (*formats, "openvino")
    if "openvino" in formats:
        formats = (*formats, "onnx")
    formats = tuple(dict.fromkeys(formats))
    _check_formats(formats, int8 is not None)
    for flag in ("calibration_data", "validation_data"):
        folder = getattr(int8, flag, None)
        if folder is not None and not os.path.isdir(folder):
            raise ExportError(f"--{flag}={folder} is not a folder (of class sub-folders of images)", 2)
    if int8 is not None and not model_dir and not (int8.calibration_data and int8.validation_data):
        raise ExportError("--quantize=int8 of a model without a run needs --calibration_data and --validation_data "
                          "(folders of class sub-folders of images)", 2)
    model, info = _source(model_dir, checkpoint, weights, model_name, model_file, name)
    run_flags = info["flags"]
    if int8 is not None:  # the images first: a dataset that cannot be had stops the export before it starts

        int8 = (int8, quantize.held_data(int8, run_flags, info["image_shape"], info["class_names"]))
    if "timm" in formats:
        _timm_architecture(model)
    base = os.path.join(export_dir, info["name"])
    final = _version_folder(base, version)
    tmp = files.tmp_name(final)
    try:
        os.makedirs(tmp)
        out, refused = _write_version(model, tmp, info, formats, top_k, int(os.path.basename(final)), int8)
        files.fsync_tree(out)
        try:
            os.rename(out, final)  # atomic; fails rather than replace a version made meanwhile
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # Linux says ENOTEMPTY for a folder
                raise
            raise ExportError(f"{final} appeared during the export; not overwritten", 2) from None
        files.fsync_dir(base)
    except OSError as err:
        raise ExportError(command.os_error_message(err, base) + "; nothing was exported") from None
    except Exception as err:
        if _is_disk_full(err):
            raise ExportError(f"no space left on the device of {base}; nothing was exported") from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if refused:
        raise ExportError(f"{'; '.join(refused)}; the float32 export is in {final}", 2)
    return final


def _is_disk_full(err):
    """TensorFlow reports a full disk as one of its own errors, not an OSError."""
    return "No space left on device" in str(err) or "ENOSPC" in str(err)


def _check_formats(formats, int8):
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ExportError(f"unknown format(s) {', '.join(sorted(unknown))}: use {', '.join(FORMATS)}", 2)
    needed = {name: "--quantize=int8" for name in (runtimes.INT8 if int8 else ())}  # it implies the formats
    for name in ("onnx", "openvino"):
        if name in formats:
            needed.setdefault(name, f"--formats={name}")
    for name, flag in needed.items():
        problem = runtimes.missing_package(name, "deploy", flag)
        if problem:
            raise ExportError(problem, 2)
    extra = sorted(set(formats) & set(TF_FORMATS))
    if extra and keras.backend.backend() != "tensorflow":
        raise ExportError(f"--formats={','.join(extra)} needs the TensorFlow backend (tf2onnx and the "
                          f"TFLite converter cannot read {keras.backend.backend()}'s XLA graph): re-run "
                          "with KERAS_BACKEND=tensorflow; the .keras file is the same", 2)


def _timm_architecture(model):
    """--formats=timm: a usage error now, before anything is written, for a net timm lacks."""
    try:
        return hub.timm_architecture(model)
    except WeightsError as err:
        raise ExportError(f"--formats=timm: {err}", 2) from None


def _describe(model, path, model_dir, results, run_flags, name, class_names=None, dataset=None):
    """What the export says about the model: input shape, class names, names, and the
    default eval transform (the resize training loads images with)."""
    image_shape = tuple(model.input_shape[1:])
    if len(image_shape) != 3 or None in image_shape:
        raise ExportError(f"{path}: expected an image model with a fixed [H, W, C] input, got {image_shape}", 2)
    classes = model.output_shape[-1]
    class_names = class_names or results.get("class_names") or [str(i) for i in range(classes)]
    if len(class_names) != classes:
        raise ExportError(f"{model_dir}/results.json names {len(class_names)} classes, the model has {classes}")
    spec = getattr(model, "build_spec", None)  # the architecture trained, also one --init_from gave
    model_name = (spec.name if spec else None) or results.get("model") or run_flags.get("model") or model.name
    dataset = dataset or results.get("dataset") or run_flags.get("dataset") or "unknown"
    name = name or f"{model_name}_{dataset}"
    if not name.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise ExportError(f"--name={name!r}: use letters, digits, '_', '-' and '.'", 2)
    return dict(path=path, image_shape=image_shape, class_names=list(class_names), model=model_name,
                dataset=dataset, name=name, results=results, flags=run_flags, transform=EvalTransform(), card=None)


def _version_folder(base, version):
    """The new version's folder under ``base`` (created): ``version``, or the next one."""
    try:
        os.makedirs(base, exist_ok=True)
    except OSError as err:
        raise ExportError(f"--export_dir: cannot create {base}: {err.strerror}", 2) from None
    if not os.access(base, os.W_OK):
        raise ExportError(f"{base} is not writable", 2)
    files.remove_stale_tmp(base)  # exports whose process died (TF Serving ignores them anyway)
    final = os.path.join(base, str(version or next_version(base)))
    if os.path.exists(final):
        raise ExportError(f"{final} exists; a version is never overwritten (omit --version for the next one)", 2)
    return final


def _write_version(model, tmp, info, formats, top_k, version, int8=None):
    """The SavedModel (and the other formats) in ``tmp/model``, each checked against the
    Keras model; with ``int8`` (``(Int8Options, quantize.held_data(...))``) also
    the int8 files. Returns that folder, and why each refused int8 file was (a list)."""
    image_shape, class_names = info["image_shape"], info["class_names"]
    core_dir = os.path.join(tmp, "core")
    export_core(model, core_dir, image_shape)
    core = tf.saved_model.load(core_dir)
    module = _serving_module(tf, core, image_shape, class_names, top_k, info["transform"])
    out = os.path.join(tmp, "model")
    tf.saved_model.save(module, out, signatures={
        "serving_default": module.serving_default, "serving_uint8": module.serving_uint8,
        "serving_bytes": module.serving_bytes},
        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))  # inference only

    _write_warmup(tf, out, info["name"], image_shape)

    x = np.random.default_rng(0).integers(0, 256, (4, *image_shape)).astype("float32")
    expected = np.asarray(model.predict(x, verbose=0), "float32")
    served = tf.saved_model.load(out).signatures
    _check("the SavedModel", lambda x: served["serving_default"](images=tf.constant(x))["logits"], x, expected)
    _check("the uint8 signature", lambda x: served["serving_uint8"](images=tf.constant(x.astype("uint8")))["logits"],
           x, expected)
    written = ["saved_model"]
    if "onnx" in formats:
        _export_onnx(core_dir, os.path.join(out, RUNTIMES["onnx"].file))
        _check("model.onnx", lambda x: engines.open_runtime("onnx", out)(x), x, expected)
        written.append("onnx")
    if "openvino" in formats:
        export_openvino(out)
        _check("model.xml (OpenVINO)", lambda x: engines.open_runtime("openvino", out)(x), x, expected)
        written.append("openvino")
    if "tflite" in formats:
        _export_tflite(tf, core_dir, os.path.join(out, "model.tflite"))
        _check("model.tflite", lambda x: _run_tflite(tf, os.path.join(out, "model.tflite"), x), x, expected)
        written.append("tflite")
    if "timm" in formats:
        accuracy = info["results"].get("test_accuracy")
        hub.save_timm(model, os.path.join(out, "timm"), card={
            "datasets": [info["dataset"]], "metrics": {} if accuracy is None else {"top1": round(100 * accuracy, 3)}})
        written.append("timm")
    quantized, refused = {}, []
    if int8 is not None:
        (options, (calibration, held, sources)) = int8
        quantized = quantize.quantize(out, core_dir, calibration, held, options.max_accuracy_drop)
        for runtime, report in quantized.items():
            report.update(sources)
            if "error" in report:
                refused.append(f"{report['file']}: {RUNTIMES[runtime].package} cannot run it ({report['error']}), "
                               "not written")
                continue
            said = (f"{report['file']}: int8 top-1 {report['top1_int8']:.2f}% against float32's "
                    f"{report['top1_float32']:.2f}% on {report['validation_images']} held-out images "
                    f"({sources['validation']}), {report['top1_agreement']:.2f}% of answers the same, "
                    f"{report['images_lost']} lost and {report['images_gained']} gained")
            print(f"export: {said}", flush=True)
            if report["written"]:
                written.append(runtime)
            else:
                refused.append(f"{said}: over --max_accuracy_drop={options.max_accuracy_drop:g}, not written")

    metadata = {
        "name": info["name"], "version": version, "model": info["model"], "dataset": info["dataset"],
        "class_names": class_names, "input": {"height": image_shape[0], "width": image_shape[1],
                                              "channels": image_shape[2]},
        "preprocessing": _preprocessing(model),
        "signatures": {"serving_default": "images: float32 [batch, H, W, C] raw pixels",
                       "serving_uint8": "images: uint8 [batch, H, W, C]",
                       "serving_bytes": "image_bytes: string [batch], JPEG/PNG/BMP/GIF/WebP, through eval_transform"},
        "outputs": ["logits", "probabilities", "top_k_ids", "top_k_scores", "top_k_names"],
        "top_k": min(top_k, len(class_names)), "formats": written, "params": reszoo.count_params(model),
        "verified": {"inputs": "4 random images", **TOLERANCE, "atol_unit": "max |logit|, at least 1"},
        "source": ({"weights": info["path"], "card": info["card"]} if info["card"] is not None else
                   {"file": os.path.abspath(info["path"]), "sha256": _sha256(info["path"]),
                    "results": info["results"], "flags": info["flags"]}),
        "eval_transform": info["transform"].to_json(),
        "versions": {"reszoo": reszoo.__version__, "keras": keras.__version__,
                     "keras_backend": keras.backend.backend(), "tensorflow": tf.__version__},
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    metadata["runtimes"] = {name: {"file": runtime.file, "precision": runtime.precision}
                            for name, runtime in RUNTIMES.items()
                            if all(os.path.isfile(os.path.join(out, f)) for f in runtimes.files_of(runtime))}
    if quantized:
        metadata["int8"] = quantized
    with open(os.path.join(out, METADATA), "w") as f:
        json.dump(metadata, f, indent=2)
    return out, refused


def _write_warmup(tf, out, name, image_shape):
    """TF Serving's warm-up requests (``assets.extra/tf_serving_warmup_requests``: TFRecords of
    ``PredictionLog``, with TF Serving's protos): one request of a grey image per signature
    (serving_bytes as a PNG, when the image has 1, 3 or 4 channels). TF Serving and
    reszoo-serve replay them before a version is AVAILABLE, so its first request is not slow."""
    grey = np.full((1, *image_shape), 128, "uint8")
    inputs = {"serving_default": grey.astype("float32"), "serving_uint8": grey}
    if image_shape[-1] in (1, 3, 4):
        inputs["serving_bytes"] = np.array([tf.io.encode_png(grey[0]).numpy()], object)
    os.makedirs(os.path.dirname(os.path.join(out, WARMUP)))
    with tf.io.TFRecordWriter(os.path.join(out, WARMUP)) as writer:
        for signature, value in inputs.items():
            log = prediction_log_pb2.PredictionLog()
            request = log.predict_log.request
            request.model_spec.name, request.model_spec.signature_name = name, signature
            request.inputs["image_bytes" if signature == "serving_bytes" else "images"].CopyFrom(
                tf.make_tensor_proto(value))
            writer.write(log.SerializeToString())


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



def main(argv):
    logging.set_verbosity(logging.ERROR)
    try:
        int8 = Int8Options(FLAGS.calibration_images, FLAGS.calibration_data, FLAGS.validation_data,
                           FLAGS.max_accuracy_drop) if FLAGS.quantize == "int8" else None
        final = export(FLAGS.model_dir, FLAGS.export_dir, FLAGS.name, FLAGS.version, FLAGS.formats,
                       FLAGS.checkpoint, FLAGS.top_k, int8, FLAGS.weights, FLAGS.model, FLAGS.model_file)
    except command.CommandError as err:
        sys.stderr.write(f"export: error: {err}\n")
        sys.exit(err.code)
    print(f"exported {final}")

