"""What a served model runs: ``Version``, one complete version folder of an export loaded for a
runtime (the SavedModel in TensorFlow, or a file of ``training.common.runtimes``: ONNX Runtime,
OpenVINO, LiteRT), its warm-up requests replayed; ``AdapterTask``, a run's residual-adapter task
on a backbone that ``Backbones`` loads once for all its tasks. Both answer the export's five
outputs (``protocol.OUTPUTS``) for float32 pixels, and decode encoded images as the export's
``serving_bytes`` does."""

import functools
import io
import json
import os
import time
import zipfile

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from kserve.errors import InvalidInput
from PIL import Image, UnidentifiedImageError
from tensorflow.core.protobuf import saved_model_pb2  # TF Serving's own protos
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from reszoo import transfer
from serving.protocol import SIGNATURES, NotServed
from training.common import engines, files, layout, sources
from training.common.command import MAX_IMAGE_SIZE, CommandError, error_reason
from training.common.images import EvalTransform, serving_image
from training.common.runtimes import RUNTIMES, missing_file


class Servable:
    """What a served model runs: ``run(pixels)`` gives the export's five outputs for float32
    pixels ``[n, H, W, C]``, ``decode(images)`` turns encoded images into such pixels;
    ``last_call`` is ``(seconds, images)`` of its last call (the batcher's, or the warm-up's)."""

    number, image_shape, class_names, top_k, transform = 1, None, None, 5, None
    runtime, precision = "keras", "float32"
    last_call = None

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


class Version(Servable):
    """One version folder of an export, loaded for ``runtime``."""

    def __init__(self, folder, runtime):
        self.folder, self.runtime, self.precision = folder, runtime, RUNTIMES[runtime].precision
        self.number = int(os.path.basename(os.path.normpath(folder)))
        problem = layout.missing(folder)
        meta_file = os.path.join(folder, layout.METADATA)
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
        with open(os.path.join(self.folder, RUNTIMES["saved_model"].file), "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
        signatures = get_model_metadata_pb2.SignatureDefMap()
        for name, signature in saved.meta_graphs[0].signature_def.items():
            if name in SIGNATURES:  # the export's three (TF's own __saved_model_init_op aside)
                signatures.signature_def[name].CopyFrom(signature)
        return signatures

    def signature_defs(self):
        return json_format.MessageToDict(self.signature_def_map, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def _load(self):
        if self.runtime != "saved_model":
            self._logits = engines.open_runtime(self.runtime, self.folder)
            return
        self._signature = tf.saved_model.load(self.folder).signatures["serving_default"]

    def _warm_up(self):
        """Replay the export's warm-up requests (TF Serving's ``assets.extra`` file), if it has
        them, through this runtime; how many."""
        path = os.path.join(self.folder, layout.WARMUP)
        if not os.path.isfile(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path):
            request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
            name, dtype = SIGNATURES[request.model_spec.signature_name or "serving_default"]
            array = tf.make_ndarray(request.inputs[name])
            pixels = self.decode(list(array.ravel())) if dtype == "string" else array.astype("float32")
            start = time.perf_counter()
            self.run(pixels)
            self.last_call = (time.perf_counter() - start, len(pixels))
            count += 1
        return count

    def run(self, pixels):
        if self.runtime == "saved_model":
            out = self._signature(images=tf.constant(pixels))
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
        self.folder = run_dir
        task = os.path.join(run_dir, layout.TASK)
        try:
            results = files.read_json(os.path.join(run_dir, layout.RESULTS))
            run_flags = files.read_json(os.path.join(run_dir, layout.FLAGS_FILE))
            init_from = run_flags["init_from"]
            self.class_names = np.asarray([str(n) for n in results["class_names"]])
        except (CommandError, KeyError, TypeError) as err:
            raise ValueError(f"{run_dir} is not a finished run trained with --adapters ({err})") from None
        if not os.path.isfile(task) or not init_from:
            raise ValueError(f"{run_dir} has no {layout.TASK}: train it with --adapters")
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
    """The backbones of adapter tasks, each loaded once per image shape, as a run loads
    ``--init_from`` (``training.common.sources``) (a run folder, a ``.keras`` file, timm's or keras.applications'
    weights); tasks of one backbone get the same model."""

    def __init__(self):
        self._loaded = {}

    def __call__(self, run_flags, image_shape):
        init_from = run_flags["init_from"]
        key = (os.path.realpath(init_from) if os.path.exists(init_from) else init_from, tuple(image_shape))
        if key not in self._loaded:
            try:
                self._loaded[key] = sources.backbone(init_from, run_flags.get("weights_path"), image_shape)
            except CommandError as err:
                raise ValueError(f"its backbone cannot be loaded: {err}") from None
        return self._loaded[key]
