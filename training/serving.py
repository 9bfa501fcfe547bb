"""Exported models served with KServe's model server, in TF Serving's REST protocol.

``reszoo-serve`` (``training/serve.py``) is the command; this module is what it runs:

- ``ServeOptions``: the command's flags, read once;
- ``model_folders``: the models under a base path, in TF Serving's layout (``NAME/VERSION/``);
- ``Version``: one complete version folder loaded for a runtime, the SavedModel (TensorFlow) or
  one of the files ``training.runtimes`` lists (ONNX Runtime, OpenVINO, LiteRT), its warm-up
  requests replayed; ``AdapterTask``:
  a run's residual-adapter task on a backbone that ``Backbones`` loads once for all its tasks;
  both answer the export's five outputs;
- ``Batcher``: concurrent requests to one model run as one batch;
- ``ServedModel``: a ``kserve.Model`` that serves the newest complete version of one model
  folder (or the versions and labels its ``training.model_config.ModelConfig`` asks for), takes
  TF Serving's v1 requests (``instances`` / ``inputs``, ``{"b64": ...}``, ``signature_name``)
  and the Open Inference Protocol's (v2, REST and gRPC), each within its deadline;
- ``add_routes``: the TF Serving routes KServe lacks (model status and metadata, a version's or
  label's predict, TF Serving's metrics), readiness, and the request size limit;
- ``SERVED``, ``Repository``, ``set_up_process``, ``watch``: each serving process's table of
  models, which KServe's repository reads and its worker processes rebuild, and its watcher.
"""

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import threading
import time
import warnings
import zipfile
import zlib

import numpy as np
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve import Model, model_server
from kserve import logging as kserve_logging
from kserve.errors import InvalidInput, ModelNotFound, generic_exception_handler
from kserve.model import InferenceVerb
from kserve.model_repository import ModelRepository
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from prometheus_client import Histogram

from training import connections, engines, model_config, tf_serving_metrics as tfs_metrics
from training.export import METADATA, WARMUP, version_folders, versions
from training.flags import MAX_IMAGE_SIZE
from training.predict import missing
from training.runtimes import RUNTIMES, missing_file

SIGNATURES = {"serving_default": ("images", "float32"), "serving_uint8": ("images", "uint8"),
              "serving_bytes": ("image_bytes", "string")}
OUTPUTS = ("logits", "probabilities", "top_k_ids", "top_k_scores", "top_k_names")
BATCH_SIZES = Histogram("reszoo_batch_size", "Images per model call", ["model"],
                        buckets=(1, 2, 4, 8, 16, 32, 64, 128))


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
    model_configs: tuple = ()  # model_config.ModelConfig of --model_config_file, instead of base_path

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


SERVED = {}  # this process's served models by name: KServe's repository and the routes read it
_KNOWN = {}  # every model folder found, by name, served or waiting for a version that loads


class NotServed(LookupError):
    """A model, version or route that is not served: HTTP 404."""


class DeadlineExceeded(TimeoutError):
    """A request not answered within ``--request_timeout_ms``: HTTP 504, gRPC DEADLINE_EXCEEDED."""

    code_name = "DEADLINE_EXCEEDED"


async def within_deadline(answer, timeout_s):
    """``await answer`` within ``timeout_s`` (TF Serving's ``--rest_api_timeout_in_ms``): past it
    the request is answered DeadlineExceeded and its place in the batcher's queue is given up."""
    try:
        return await asyncio.wait_for(answer, timeout_s)
    except asyncio.TimeoutError:
        raise DeadlineExceeded(f"the request was not answered within the server's --request_timeout_ms="
                               f"{timeout_s * 1000:g}") from None


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


class Servable:
    """What a served model runs: ``run(pixels)`` gives the export's five outputs for float32
    pixels ``[n, H, W, C]``, ``decode(images)`` turns encoded images into such pixels;
    ``last_call_s`` is how long its last call took (the batcher's, or the warm-up's)."""

    number, image_shape, class_names, top_k, transform = 1, None, None, 5, None
    runtime, precision = "keras", "float32"
    last_call_s = None

    @property
    def signature_def_map(self):
        """TF Serving's ``signature_def`` metadata, a ``SignatureDefMap``."""
        raise NotServed("an adapter task runs on Keras and has no SavedModel signature defs")

    def signature_defs(self):
        """The ``signature_def`` metadata in TF Serving's JSON form."""
        return self.signature_def_map

    def outputs(self, logits):
        """The export's outputs from logits, as its graph computes them (softmax, top-k with
        the lower class id first among ties)."""
        logits = np.asarray(logits, "float32")
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        ids = np.argsort(-probabilities, axis=1, kind="stable")[:, :self.top_k].astype("int32")
        return {"logits": logits, "probabilities": probabilities, "top_k_ids": ids,
                "top_k_scores": np.take_along_axis(probabilities, ids, axis=1), "top_k_names": self.class_names[ids]}

    def decode(self, images):
        """Encoded images (bytes) as float32 pixels, as the export's ``serving_bytes`` decodes
        them; InvalidInput names the first that does not decode, or whose header claims more
        pixels than ``MAX_IMAGE_SIZE`` squared (read from the header, before decoding: a small
        file can claim 20000 x 20000)."""
        import tensorflow as tf

        from training.data import EvalTransform, error_reason, serving_image

        transform = EvalTransform.from_json(self.transform)
        out = []
        for i, data in enumerate(images):
            check_image_size(data, f"image {i}")
            try:
                out.append(serving_image(tf.constant(data), self.image_shape, transform).numpy())
            except (tf.errors.InvalidArgumentError, ValueError) as err:
                raise InvalidInput(f"image {i} cannot be decoded ({error_reason(err)})") from None
        return np.stack(out)


def check_image_size(data, where):
    """InvalidInput when encoded image ``data``'s header claims more than ``MAX_IMAGE_SIZE``
    squared pixels (Pillow reads the header alone); a header Pillow cannot read is left to
    the decoder to refuse."""
    from PIL import Image, UnidentifiedImageError

    limit = f"over the server's limit of {MAX_IMAGE_SIZE} x {MAX_IMAGE_SIZE}; it was not decoded"
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # Pillow's own guard, at twice its MAX_IMAGE_PIXELS
        raise InvalidInput(f"{where} claims over {2 * Image.MAX_IMAGE_PIXELS} pixels, {limit}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return
    if width * height > MAX_IMAGE_SIZE ** 2:
        raise InvalidInput(f"{where} claims {width} x {height} pixels, {limit}")


def fingerprint(folder):
    """The files of ``folder`` (names, sizes, modification times): it changes when a copy
    into it goes on, so a version seen incomplete is looked at again."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                stat = os.stat(os.path.join(root, name))
                found.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


class Version(Servable):
    """One version folder of an export, loaded for ``runtime``."""

    def __init__(self, folder, runtime):
        self.folder, self.runtime, self.precision = folder, runtime, RUNTIMES[runtime].precision
        self.number = int(os.path.basename(os.path.normpath(folder)))
        problem = missing(folder)
        meta_file = os.path.join(folder, METADATA)
        if problem is None and not os.path.isfile(meta_file):
            problem = "has no metadata.json (it is not a reszoo export)"
        absent = missing_file(runtime, folder)
        if problem is None and absent:
            problem = f"{absent}; or serve it with --runtime=saved_model"
        if problem:
            raise ValueError(problem)
        try:
            with open(meta_file) as f:
                self.metadata = json.load(f)
            size = self.metadata["input"]
            self.image_shape = (size["height"], size["width"], size["channels"])
            self.class_names = np.asarray([str(n) for n in self.metadata["class_names"]])
            self.top_k = int(self.metadata["top_k"])
            self.transform = self.metadata.get("eval_transform")  # exports before it: the resize to H x W
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"its metadata.json is damaged ({type(err).__name__}: {err})") from None
        try:
            self._load()
            self.warmed_up = self._warm_up()
        except Exception as err:  # TF and ONNX Runtime raise many kinds for damaged files
            line = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"cannot be loaded, its files are damaged ({type(err).__name__}: {line})") from None

    @functools.cached_property
    def signature_def_map(self):
        """The export's three signature defs as TF Serving's ``SignatureDefMap`` (its protos),
        read from ``saved_model.pb``."""
        from tensorflow.core.protobuf import saved_model_pb2  # TF Serving's own protos
        from tensorflow_serving.apis import get_model_metadata_pb2

        with open(os.path.join(self.folder, RUNTIMES["saved_model"].file), "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in saved.meta_graphs[0].signature_def.items():
            if name in SIGNATURES:  # the export's three (TF's own __saved_model_init_op aside)
                signatures.signature_def[name].CopyFrom(signature)
        return signatures

    def signature_defs(self):
        from google.protobuf import json_format

        return json_format.MessageToDict(self.signature_def_map, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def _load(self):
        if self.runtime != "saved_model":
            self._logits = engines.open_runtime(self.runtime, self.folder)
            return
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(self.folder).signatures["serving_default"]

    def _warm_up(self):
        """Replay the export's warm-up requests (TF Serving's ``assets.extra`` file), if it has
        them, through this runtime; how many."""
        path = os.path.join(self.folder, WARMUP)
        if not os.path.isfile(path):
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(path):
            request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            name, dtype = SIGNATURES[request.model_spec.signature_name or "serving_default"]
            array = tf.make_ndarray(request.inputs[name])
            pixels = self.decode(list(array.ravel())) if dtype == "string" else array.astype("float32")
            start = time.perf_counter()
            self.run(pixels)
            self.last_call_s = time.perf_counter() - start
            count += 1
        return count

    def run(self, pixels):
        if self.runtime == "saved_model":
            out = self._signature(images=self._tf.constant(pixels))
            out = {k: v.numpy() for k, v in out.items()}
            out["top_k_names"] = out["top_k_names"].astype(str)
            return out
        return self.outputs(self._logits(pixels))


class AdapterTask(Servable):
    """A residual-adapter task: a run trained with ``--adapters`` (its ``task.npz``) put back on
    its backbone, which ``backbones`` (a ``Backbones``) gives and tasks of one backbone share:
    N tasks hold one backbone and N sets of adapters, BatchNorm layers and classifiers
    (Rebuffi et al. 2017)."""

    def __init__(self, run_dir, backbones):
        import tensorflow as tf

        from reszoo import transfer
        from training import files, run_folder

        self.folder = run_dir
        task = os.path.join(run_dir, run_folder.TASK)
        try:
            results = files.read_json(os.path.join(run_dir, run_folder.RESULTS))
            run_flags = files.read_json(os.path.join(run_dir, run_folder.FLAGS_FILE))
            init_from = run_flags["init_from"]
            self.class_names = np.asarray([str(n) for n in results["class_names"]])
        except (files.CommandError, KeyError, TypeError) as err:
            raise ValueError(f"{run_dir} is not a finished run trained with --adapters ({err})") from None
        if not os.path.isfile(task) or not init_from:
            raise ValueError(f"{run_dir} has no {run_folder.TASK}: train it with --adapters")
        try:
            with np.load(task, allow_pickle=False) as data:
                self.image_shape = tuple(json.loads(str(data["__task__"]))["input_shape"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{task} is not a reszoo task file, or is damaged ({type(err).__name__})") from None
        self.top_k = min(5, len(self.class_names))
        self.model = transfer.load_task(backbones(run_flags, self.image_shape), task)
        self.metadata = {"task": task, "backbone": init_from}
        model = self.model
        listed = isinstance(model.input, (list, tuple))  # a cloned functional model takes [inputs]
        self._call = tf.function(lambda x: model([x] if listed else x, training=False), reduce_retracing=True)

    def run(self, pixels):
        return self.outputs(self._call(pixels).numpy())


class Backbones:
    """The backbones of adapter tasks, each loaded once per image shape, as ``training.train``
    loads ``--init_from`` for a run (a run folder, a ``.keras`` file, timm's or keras.applications'
    weights); tasks of one backbone get the same model."""

    def __init__(self):
        self._loaded = {}

    def __call__(self, run_flags, image_shape):
        from reszoo import hub  # Keras and TensorFlow: only adapter tasks need them (ONNX Runtime does not)
        from training import train

        init_from = run_flags["init_from"]
        key = (os.path.realpath(init_from) if os.path.exists(init_from) else init_from, tuple(image_shape))
        if key not in self._loaded:
            try:
                old = train.load_init_model(init_from)
                if old is None and init_from.startswith(hub.PREFIX):
                    old = train.timm_model(init_from, image_shape)
                elif old is None:
                    old = train.keras_applications_model(init_from, run_flags.get("weights_path"), image_shape)
                self._loaded[key] = train.resized(old, image_shape, init_from)
            except train.CommandError as err:
                raise ValueError(f"its backbone cannot be loaded: {err}") from None
        return self._loaded[key]


class Batcher:
    """Runs concurrent requests to one model as one batch of at most ``max_batch_size`` images:
    a request to an idle model runs at once, and whatever queues while the model is busy goes in
    its next call; ``timeout_s`` > 0 waits that long for more first (TF Serving's
    ``batch_timeout_micros``). A version whose last call took under ``INLINE_S`` runs on the
    event loop itself: the hop to a worker thread and back would cost as much as the call."""

    INLINE_S = 0.001

    def __init__(self, name, max_batch_size, timeout_s):
        self.name, self.max_batch_size, self.timeout_s = name, max_batch_size, timeout_s
        self._pending = collections.deque()
        self._busy = False

    async def run(self, version, pixels):
        loop = asyncio.get_running_loop()
        if self.max_batch_size <= 1 or not self._busy:
            return await self._alone(loop, version, pixels)
        answer = loop.create_future()
        self._pending.append((version, pixels, answer, time.perf_counter()))
        return await answer

    def _timed(self, version, pixels):
        start = time.perf_counter()
        out = version.run(pixels)
        version.last_call_s = time.perf_counter() - start
        tfs_metrics.runtime(self.name, version.runtime, version.last_call_s)
        return out

    async def _run(self, loop, version, pixels):
        if version.last_call_s is not None and version.last_call_s < self.INLINE_S:
            return self._timed(version, pixels)
        return await loop.run_in_executor(None, self._timed, version, pixels)

    async def _alone(self, loop, version, pixels):
        """The fast path: the model is idle (or batching is off), so this request runs by itself."""
        BATCH_SIZES.labels(self.name).observe(len(pixels))
        tfs_metrics.queued(self.name, 0.0)
        if self.max_batch_size <= 1:
            return await self._run(loop, version, pixels)
        self._busy = True
        try:
            return await self._run(loop, version, pixels)
        finally:
            if self._pending:
                loop.create_task(self._drain(loop))
            else:
                self._busy = False

    async def _drain(self, loop):
        try:
            while self._pending:
                if self.timeout_s and sum(len(item[1]) for item in self._pending) < self.max_batch_size:
                    await asyncio.sleep(self.timeout_s)
                while self._pending and self._pending[0][2].done():  # given up (past its deadline)
                    self._pending.popleft()
                if not self._pending:
                    break
                version, group, rows = self._pending[0][0], [], 0
                while self._pending and self._pending[0][0] is version and (
                        not group or rows + len(self._pending[0][1]) <= self.max_batch_size):
                    group.append(self._pending.popleft())
                    rows += len(group[-1][1])
                await self._call(loop, group, rows)
        finally:
            self._busy = False

    async def _call(self, loop, group, rows):
        version = group[0][0]
        pixels = group[0][1] if len(group) == 1 else np.concatenate([item[1] for item in group])
        BATCH_SIZES.labels(self.name).observe(rows)
        now = time.perf_counter()
        for *_, queued_at in group:
            tfs_metrics.queued(self.name, now - queued_at)
        try:
            out = await self._run(loop, version, pixels)
        except Exception as err:  # every waiting request hears of it; the batcher goes on
            for _, _, answer, _ in group:
                if not answer.done():
                    answer.set_exception(err)
            return
        start = 0
        for _, part, answer, _ in group:
            if not answer.done():
                answer.set_result({k: v[start:start + len(part)] for k, v in out.items()})
            start += len(part)


def _b64(value, where):
    if not (isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)):
        raise InvalidInput(f'{where}: image_bytes must be {{"b64": "<base64 of an encoded image>"}}')
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: the b64 string is not valid base64") from None


def request_pixels(value, dtype, image_shape, where):
    """A request's pixels as float32 ``[n, H, W, C]``, at least one image, every pixel a
    finite float32; InvalidInput says what is wrong."""
    try:
        array = np.asarray(value)
        if array.dtype.kind not in "iuf":  # strings, booleans, ragged lists (objects)
            raise TypeError(array.dtype)
        array = array.astype("float64")
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{where}: not a rectangular array of numbers") from None
    expected = "[batch, " + ", ".join(map(str, image_shape)) + "]"
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(image_shape):
        raise InvalidInput(f"{where}: shape {list(array.shape)}, expected {expected} (rows of "
                           f"{image_shape[0]} x {image_shape[1]} pixels of {image_shape[2]} channel(s))")
    if not len(array):
        raise InvalidInput(f"{where}: no images in the request")
    if not (np.isfinite(array) & (np.abs(array) <= np.finfo("float32").max)).all():
        raise InvalidInput(f"{where}: pixels must be finite float32 numbers")
    if dtype == "uint8" and ((array < 0) | (array > 255) | (array != np.round(array))).any():
        raise InvalidInput(f"{where}: serving_uint8 takes whole numbers 0..255")
    return array.astype("float32")


def _image_bytes(value, i):
    """A v2 BYTES element as bytes (JSON carries them as latin-1 text); InvalidInput otherwise."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return value.encode("latin-1")
    except (AttributeError, UnicodeEncodeError):
        raise InvalidInput(f"image_bytes[{i}]: an encoded image (bytes) is expected, got "
                           f"{type(value).__name__} {str(value)[:40]!r}") from None


def _tensor(tensor):
    """A v2 input's data as numpy; InvalidInput where its data, shape and datatype disagree
    (a count or binary size that is not the shape's, a value out of the datatype's range)."""
    if not all(isinstance(d, int) and d >= 0 for d in tensor.shape):
        raise InvalidInput(f"input {tensor.name!r}: shape {list(tensor.shape)} must be whole numbers, none negative")
    try:
        return tensor.as_numpy()
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidInput(f"input {tensor.name!r}: its data does not fit its shape {list(tensor.shape)} and "
                           f"datatype {tensor.datatype} ({str(err).splitlines()[0][:120]})") from None


def parse_v1(body, image_shape):
    """TF Serving's REST request: ``(signature, row_format, inputs)``, where inputs is a list
    of encoded images (serving_bytes) or a float32 array of pixels."""
    if isinstance(body, (bytes, bytearray)):  # curl -d sends form content-type: JSON all the same
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidInput(f"the request body is not JSON ({err})") from None
        except RecursionError:
            raise InvalidInput("the request body is JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput('the request must be a JSON object with "instances" or "inputs"')
    signature = body.get("signature_name", "serving_default")
    if not isinstance(signature, str) or signature not in SIGNATURES:
        raise InvalidInput(f"signature_name {signature!r} is not served; the export has {', '.join(SIGNATURES)}")
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInput('the request needs exactly one of "instances" (row format) or "inputs" (columnar)')
    name, dtype = SIGNATURES[signature]
    row = "instances" in body
    data = body["instances" if row else "inputs"]
    if row:
        if not isinstance(data, list) or not data:
            raise InvalidInput('"instances" must be a non-empty list')
        items = [item[name] if isinstance(item, dict) and name in item else item for item in data]
        if any(isinstance(item, dict) and set(item) != {"b64"} for item in items):
            raise InvalidInput(f'each instance is the "{name}" input of {signature}, or an object holding it')
    else:
        if isinstance(data, dict) and set(data) != {name}:
            raise InvalidInput(f'"inputs" holds the one input of {signature}, "{name}"; it has {sorted(data)[:4]}')
        data = data[name] if isinstance(data, dict) else data
        if dtype == "string":
            items = data if isinstance(data, list) else [data]
        else:
            items = data
    if dtype == "string":
        if not items:
            raise InvalidInput("no images in the request")
        where = "instances" if row else "inputs"
        return signature, row, [_b64(item, f"{where}[{i}]") for i, item in enumerate(items)]
    return signature, row, request_pixels(items, dtype, image_shape, '"instances"' if row else '"inputs"')


def as_json(out, row):
    """The export's outputs in TF Serving's answer: ``predictions`` (one object per image)
    for the row format, ``outputs`` (one list per output) for the columnar."""
    lists = {k: out[k].tolist() for k in OUTPUTS}
    if not row:
        return {"outputs": lists}
    return {"predictions": [{k: lists[k][i] for k in OUTPUTS} for i in range(len(lists["logits"]))]}


_V2_TYPES = {"logits": "FP32", "probabilities": "FP32", "top_k_ids": "INT32", "top_k_scores": "FP32",
             "top_k_names": "BYTES"}


@dataclasses.dataclass(frozen=True)
class V1Call:
    """A TF Serving REST predict: its body, and the version or label its route names."""

    body: object
    version: str = None
    label: str = None


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A parsed request: the version that answers it, its float32 pixels, and the answer's form
    (``row``: TF Serving's row format, False: columnar, None: a v2 request, with its id)."""

    version: Servable
    pixels: np.ndarray
    row: bool = None
    request_id: str = ""


class ServedModel(Model):
    """The served versions of one model folder (its newest complete one, or those its
    ``ModelConfig`` asks for, with their labels), behind KServe's v1 and v2 routes."""

    def __init__(self, name, folder, options=ServeOptions(), say=print, servable=None, config=None):
        super().__init__(name)
        self.folder, self.options, self.say = folder, options, say
        self.config = config or model_config.ModelConfig(name, folder)
        self.labels = dict(self.config.labels)
        self.batcher = Batcher(name, options.max_batch_size, options.batch_timeout_s)
        self.versions = {servable.number: servable} if servable is not None else {}
        self.task = None
        self.ready = servable is not None
        self.failed = {}
        self._lock = threading.Lock()

    @property
    def current(self):
        """The newest served version (what a request that names none gets), or None."""
        versions = self.versions
        return versions[max(versions)] if versions else None

    def refresh(self):
        """Serve the versions the policy asks for, as TF Serving does: by default the newest
        complete one (a newer one that loads replaces it; requests in flight finish on the
        old); a served one whose folder is removed is unloaded for the newest that remains. A
        version that fails to load is reported and skipped until its files change (a copy still
        going on). True when the served versions changed."""
        if self.folder is None:  # a fixed servable (an adapter task): nothing to look for
            return False
        with self._lock:
            served, changed = dict(self.versions), False
            for number, version in list(served.items()):
                if not os.path.isdir(version.folder):
                    self.say(f"serve: {self.name} version {number} was removed; unloaded")
                    del served[number]
                    changed = True
            folders = dict(version_folders(self.folder))
            candidates, count = self.config.wanted(folders)
            kept = {}
            for number in candidates:
                if count is not None and len(kept) >= count:
                    break
                if number in served:
                    kept[number] = served[number]
                    continue
                version = self._load(number, folders[number])
                if version is not None:
                    kept[number], changed = version, True
            changed = changed or set(kept) != set(served)
            self.versions, self.ready = kept, bool(kept)
            return changed

    def _load(self, number, folder):
        mark = fingerprint(folder)
        if number in self.failed and self.failed[number][0] == mark:
            return None
        try:
            version = Version(folder, self.options.runtime)
        except ValueError as err:
            if self.failed.get(number, (None, None))[1] != str(err):
                self.say(f"serve: error: {self.name} version {number} {err}; not served")
            self.failed[number] = (mark, str(err))
            return None
        self.failed.pop(number, None)
        self.say(f"serving {self.name} version {number} ({self.options.runtime}, "
                 f"{RUNTIMES[self.options.runtime].precision})"
                 + (f", warmed up with {version.warmed_up} requests" if version.warmed_up else ""))
        return version

    def status(self, version=None, label=None):
        """TF Serving's model status answer (``GET /v1/models/NAME[/versions/N|/labels/L]``):
        every served version, newest first, or the one asked for."""
        if version is None and label is None:
            self.version_served()
            chosen = sorted(self.versions.values(), key=lambda v: -v.number)
        else:
            chosen = [self.version_served(version, label)]
        return {"model_version_status": [{"version": str(v.number), "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}} for v in chosen]}

    def model_metadata(self, version=None, label=None):
        """TF Serving's model metadata answer (``GET /v1/models/NAME[/versions/N|/labels/L]/metadata``):
        the served version's signature defs in TF Serving's JSON form, and, beside them, the
        runtime and precision it runs in."""
        current = self.version_served(version, label)
        return {"model_spec": {"name": self.name, "signature_name": "", "version": str(current.number)},
                "metadata": {"signature_def": current.signature_defs(),
                             "reszoo": {"runtime": current.runtime, "precision": current.precision}}}

    def version_served(self, version=None, label=None):
        """The served version numbered ``version``, or labelled ``label``, or the newest."""
        versions = self.versions
        if not versions:
            raise NotServed(f"model {self.name!r} has no version that can be served yet")
        if label is not None:
            if label not in self.labels:
                raise NotServed(f"model {self.name!r} has no version label {label!r} (its labels: "
                                f"{', '.join(sorted(self.labels)) or 'none; --model_config_file sets them'})")
            version = self.labels[label]
        if version is None:
            return versions[max(versions)]
        number = int(version) if str(version).isdecimal() and str(version).isascii() else None
        if number not in versions:
            numbers = sorted(versions)
            raise NotServed(f"model {self.name!r} version {version} is not served (it serves version"
                            f"{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))})")
        return versions[number]

    async def __call__(self, body, headers=None, verb=InferenceVerb.PREDICT):
        """KServe's ``preprocess`` -> ``predict`` -> ``postprocess``, each timed in its histograms
        (``request_preprocess_seconds``, ...); a v1 request also counted and timed under TF
        Serving's names, and answered within ``--request_timeout_ms``."""
        if isinstance(body, InferRequest):
            return await super().__call__(body, headers, verb)
        with tfs_metrics.request(self.name, "Predict", "REST"):
            return await within_deadline(super().__call__(body, headers, verb), self.options.request_timeout_s)

    def validate(self, payload):
        return payload  # preprocess has checked it

    async def preprocess(self, payload, headers=None):
        """The request parsed: a ``Prepared`` (the version that answers, float32 pixels, encoded
        images decoded)."""
        if isinstance(payload, InferRequest):
            return await self._prepare_v2(payload)
        call = payload if isinstance(payload, V1Call) else V1Call(payload)
        current = self.version_served(call.version, call.label)
        signature, row, inputs = parse_v1(call.body, current.image_shape)
        if signature == "serving_bytes":
            inputs = await asyncio.get_running_loop().run_in_executor(None, current.decode, inputs)
        return Prepared(current, inputs, row)

    async def _prepare_v2(self, request):
        current = self.version_served(request.model_version or None)
        if len(request.inputs) != 1:
            raise InvalidInput("the request needs one input: images (FP32 or UINT8) or image_bytes (BYTES)")
        tensor = request.inputs[0]
        if tensor.name == "image_bytes" and tensor.datatype == "BYTES":
            images = [_image_bytes(v, i) for i, v in enumerate(_tensor(tensor).ravel())]
            if not images:
                raise InvalidInput("image_bytes: no images in the request")
            pixels = await asyncio.get_running_loop().run_in_executor(None, current.decode, images)
        elif tensor.name == "images" and tensor.datatype in ("FP32", "UINT8"):
            dtype = "uint8" if tensor.datatype == "UINT8" else "float32"
            pixels = request_pixels(_tensor(tensor), dtype, current.image_shape, "images")
        else:
            raise InvalidInput(f"input {tensor.name!r} ({tensor.datatype}) is not served; send images (FP32 or "
                               "UINT8) or image_bytes (BYTES)")
        return Prepared(current, pixels, None, request.id or "")

    async def predict(self, payload, headers=None, response_headers=None):
        """The export's five outputs for a ``Prepared`` request, through the batcher."""
        return payload, await self.batcher.run(payload.version, payload.pixels)

    def postprocess(self, result, headers=None, response_headers=None):
        """The outputs in the request's protocol: TF Serving's JSON, or a v2 ``InferResponse``."""
        prepared, out = result
        if prepared.row is not None:
            return as_json(out, prepared.row)
        outputs = []
        for key in OUTPUTS:
            value = out[key].astype(object) if key == "top_k_names" else out[key]
            output = InferOutput(key, list(value.shape), _V2_TYPES[key])
            output.set_data_from_numpy(value, binary_data=False)
            outputs.append(output)
        return InferResponse(prepared.request_id, self.name, outputs, model_version=str(prepared.version.number))


class SizeLimit:
    """ASGI middleware: no request body over ``max_bytes`` reaches the app, however it comes
    (413). By its Content-Length, before reading (the body is read and dropped, so a client
    still sending sees the answer, not a reset); a chunked body, counted as it arrives and
    refused at the limit (the rest unread); ``Content-Encoding: gzip``, which TF Serving
    accepts, inflated here with the limit on the inflated size (a gzip bomb stops there).
    Other encodings are 415. The app gets the body whole, as it would read it."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    def _over(self, what):
        return JSONResponse({"error": f"the request body is {what}, over the server's limit of {self.max_bytes} bytes "
                                      "(--max_request_mb)"}, status_code=413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        size = headers.get(b"content-length", b"")
        encoding = headers.get(b"content-encoding", b"identity").strip().lower()
        refusal = None
        if encoding not in (b"identity", b"gzip"):
            refusal = JSONResponse({"error": f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not accepted "
                                             "(send the body as it is, or gzip)"}, status_code=415)
        elif size.isdigit() and int(size) > self.max_bytes:
            refusal = self._over(f"{int(size)} bytes")
        if refusal is not None:
            while (await receive()).get("more_body"):
                pass
            return await refusal(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._over(f"over {self.max_bytes} bytes and still coming")(scope, receive, send)
            if not message.get("more_body"):
                break
        if encoding == b"gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(bytes(body), self.max_bytes + 1)
            except zlib.error as err:
                return await JSONResponse({"error": f"the gzip body cannot be inflated ({err})"},
                                          status_code=400)(scope, receive, send)
            if len(body) > self.max_bytes:
                return await self._over("over that once inflated (gzip)")(scope, receive, send)
            if not inflater.eof:
                return await JSONResponse({"error": "the gzip body is cut short"}, status_code=400)(scope, receive, send)
            kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-encoding", b"content-length")]
            scope = {**scope, "headers": kept + [(b"content-length", str(len(body)).encode())]}
        whole = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay():
            return whole.pop() if whole else await receive()

        return await self.app(scope, replay, send)


class OneLine(logging.Filter):
    """KServe logs a bad request with its traceback: one line instead (the client has the message)."""

    def filter(self, record):
        err = record.exc_info[1] if record.exc_info else None
        if isinstance(err, (InvalidInput, ModelNotFound, NotServed)):
            record.msg, record.args, record.exc_info = f"bad request: {err}", (), None
        return True


def not_ready():
    """Why this server is not ready (KServe's readiness route, ``/v2/health/ready``), or None:
    it is stopping, or a model it was given has no version AVAILABLE yet."""
    stopping = connections.draining()
    if stopping:
        return stopping
    waiting = sorted(name for name, model in _KNOWN.items() if not model.ready)
    if waiting:
        return f"no version AVAILABLE yet for {', '.join(waiting)}"
    return None


def served(name):
    """The served model ``name``; NotServed names those that are."""
    model = SERVED.get(name)
    if model is None:
        raise NotServed(f"model {name!r} is not served (served: {', '.join(SERVED) or 'none'})")
    return model


def add_routes(app, max_request_bytes):
    """TF Serving's routes that KServe's v1 lacks, before KServe's own (the first match wins):
    model and version status and metadata, a version's ``:predict``; and the request size limit."""

    app.add_middleware(SizeLimit, max_bytes=max_request_bytes)

    async def not_served(_, err):
        return JSONResponse({"error": str(err)}, status_code=404)

    app.add_exception_handler(NotServed, not_served)

    async def past_deadline(_, err):
        return JSONResponse({"error": str(err)}, status_code=504)

    app.add_exception_handler(DeadlineExceeded, past_deadline)

    async def off_schema(_, err):
        """A v2 body that KServe's schema refuses: 400 with one line (FastAPI's own answer is a
        422 that echoes the input, and a 500 when that input holds Infinity)."""
        first = (err.errors() or [{}])[0]
        parts = [str(part) for part in first.get("loc", ())[1:]]  # after "body"
        where = ".".join(parts[1:] if parts and parts[0][:1].isupper() else parts) or "the body"  # not the class
        return JSONResponse({"error": f"the request does not fit the protocol's schema at {where}: "
                                      f"{first.get('msg', 'invalid')}"[:300]}, status_code=400)

    app.add_exception_handler(RequestValidationError, off_schema)

    def ready():
        waiting = not_ready()
        if waiting:
            return JSONResponse({"ready": False, "error": waiting}, status_code=503)
        return {"ready": True}

    app.add_api_route("/v2/health/ready", ready, methods=["GET"])

    async def undecodable(request, err):
        """KServe decodes a v2 binary body (its binary extension) before any model sees it: a
        body whose tensors do not fit its JSON header is the client's error."""
        if request.url.path.endswith("/infer") and "inference-header-content-length" in request.headers:
            return JSONResponse({"error": f"the binary data does not fit the request's header "
                                          f"({str(err).splitlines()[0][:120]})"}, status_code=400)
        return await generic_exception_handler(request, err)

    app.add_exception_handler(ValueError, undecodable)
    app.add_api_route("/v1/models/{name}", lambda name: served(name).status(), methods=["GET"])
    app.add_api_route("/v1/models/{name}/metadata", lambda name: served(name).model_metadata(), methods=["GET"])
    app.add_api_route("/v1/models/{name}/versions/{version}",
                      lambda name, version: served(name).status(version=version), methods=["GET"])
    app.add_api_route("/v1/models/{name}/labels/{label}",
                      lambda name, label: served(name).status(label=label), methods=["GET"])
    app.add_api_route("/v1/models/{name}/versions/{version}/metadata",
                      lambda name, version: served(name).model_metadata(version=version), methods=["GET"])
    app.add_api_route("/v1/models/{name}/labels/{label}/metadata",
                      lambda name, label: served(name).model_metadata(label=label), methods=["GET"])

    async def predict_version(name: str, version: str, request: Request):
        return (await served(name)(V1Call(await request.body(), version=version)))[0]

    async def predict_label(name: str, label: str, request: Request):
        return (await served(name)(V1Call(await request.body(), label=label)))[0]

    app.add_api_route("/v1/models/{name}/versions/{version}:predict", predict_version, methods=["POST"])
    app.add_api_route("/v1/models/{name}/labels/{label}:predict", predict_label, methods=["POST"])
    app.add_api_route(tfs_metrics.PATH, lambda: Response(tfs_metrics.exposition(), media_type=tfs_metrics.CONTENT_TYPE),
                      methods=["GET"])


_BACKBONES = Backbones()
_SET_UP = []


def served_model(name, folder, options, say=print, task=None):
    """A model of ``folder`` (its newest complete version loaded, or none yet) or the adapter
    task of run folder ``task``, entered in ``SERVED``; ValueError when the task cannot load."""
    servable = AdapterTask(task, _BACKBONES) if task else None
    model = ServedModel(name, folder, options, say, servable, options.config(name))
    model.task = task
    model.refresh()
    _KNOWN[name] = model
    if model.ready:
        SERVED[name] = model
    return model


def set_up_process(options, say=print, watching=True):
    """What every serving process does once: TF Serving's routes on KServe's app, one-line bad
    requests in the log, and the watcher of the base path (per-request lines are
    ``connections.Limits.log_requests``)."""
    if _SET_UP:
        return
    _SET_UP.append(options)
    kserve_logging.logger.addFilter(OneLine())
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")  # KServe's, on newer FastAPI
    add_routes(model_server.app, options.max_request_bytes)
    if watching and options.watched:
        threading.Thread(target=watch, args=(options, say), daemon=True).start()


def watch(options, say=print):
    """Poll the base path for new versions of the served models and for new model folders."""
    while True:
        time.sleep(options.poll_seconds)
        try:
            found = options.folders()
        except (OSError, ValueError):
            continue
        for name, folder in found.items():
            if name not in _KNOWN:
                _KNOWN[name] = ServedModel(name, folder, options, say, config=options.config(name))
            model = _KNOWN[name]
            if model.folder == folder and model.refresh():
                SERVED.setdefault(name, model)


class Repository(ModelRepository):
    """KServe's model repository over ``SERVED``. Pickled into KServe's worker processes
    (``--workers``), it is rebuilt there: the process set up, each model loaded afresh."""

    def __init__(self):
        super().__init__()
        self.models = SERVED

    def __reduce__(self):
        options = _SET_UP[0] if _SET_UP else ServeOptions()
        specs = [(name, model.folder, model.task) for name, model in _KNOWN.items()]
        return _worker_repository, (options, specs)


def _worker_repository(options, specs):
    """In a worker process: the models load in a thread, so the process answers KServe's
    liveness pings meanwhile, and its server starts accepting requests only once they are in."""

    def load():
        for name, folder, task in specs:
            if name not in _KNOWN:
                try:
                    served_model(name, folder, options, task=task)
                except ValueError as err:
                    print(f"serve: error: {name}: {err}; not served", flush=True)
        if options.watched:
            watch(options)

    set_up_process(options, watching=False)
    loading = threading.Thread(target=load, daemon=True)
    loading.start()

    router = model_server.app.router
    lifespan = router.lifespan_context

    @contextlib.asynccontextmanager
    async def after_loading(app):
        while not all(name in _KNOWN for name, _, _ in specs) and loading.is_alive():
            await asyncio.sleep(0.05)
        async with lifespan(app) as state:
            yield state

    router.lifespan_context = after_loading
    return Repository()
