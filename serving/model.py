"""``ServedModel``: one model folder's served versions behind KServe's ``Model`` hooks, so its
per-stage histograms measure what they say on every route: ``preprocess`` parses a TF Serving
v1 or v2 request and decodes its images (``Prepared``), ``predict`` runs it through the
``Batcher``, ``postprocess`` formats TF Serving's JSON or a v2 ``InferResponse``. Its versions
follow the folder as TF Serving's do: the newest complete one, or those its
``ModelConfig`` asks for, with their labels."""

import asyncio
import contextlib
import dataclasses
import os
import threading

import numpy as np
from kserve import Model
from kserve.errors import InvalidInput
from kserve.model import InferenceVerb
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from serving import model_config, tf_serving_metrics as tfs_metrics
from serving.batcher import Batcher
from serving.options import ServeOptions
from serving.protocol import (V2_TYPES, OUTPUTS, NotServed, V1Call, v2_image_bytes, v2_tensor, as_json, parse_v1,
                              request_pixels, within_deadline)
from serving.servables import Servable, Version
from training.common.layout import version_folders
from training.common.runtimes import RUNTIMES


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A parsed request: the version that answers it, its float32 pixels, and the answer's form
    (``row``: TF Serving's row format, False: columnar, None: a v2 request, with its id)."""

    version: Servable
    pixels: np.ndarray
    row: bool = None
    request_id: str = ""


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
            images = [v2_image_bytes(v, i) for i, v in enumerate(v2_tensor(tensor).ravel())]
            if not images:
                raise InvalidInput("image_bytes: no images in the request")
            pixels = await asyncio.get_running_loop().run_in_executor(None, current.decode, images)
        elif tensor.name == "images" and tensor.datatype in ("FP32", "UINT8"):
            dtype = "uint8" if tensor.datatype == "UINT8" else "float32"
            pixels = request_pixels(v2_tensor(tensor), dtype, current.image_shape, "images")
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
            output = InferOutput(key, list(value.shape), V2_TYPES[key])
            output.set_data_from_numpy(value, binary_data=False)
            outputs.append(output)
        return InferResponse(prepared.request_id, self.name, outputs, model_version=str(prepared.version.number))
