"""The protocols' requests and answers, as the export's signatures take and give them: TF
Serving's REST API (``instances`` / ``inputs``, ``{"b64": ...}``, ``signature_name``; answers as
``predictions`` or ``outputs``) and the Open Inference Protocol's (v2) inputs; and the errors a
request meets: ``NotServed`` (404, gRPC NOT_FOUND), ``DeadlineExceeded`` (504,
DEADLINE_EXCEEDED), KServe's ``InvalidInput`` (400, INVALID_ARGUMENT)."""

import asyncio
import base64
import binascii
import dataclasses
import json

import numpy as np
from kserve.errors import InvalidInput

SIGNATURES = {"serving_default": ("images", "float32"), "serving_uint8": ("images", "uint8"),
              "serving_bytes": ("image_bytes", "string")}
OUTPUTS = ("logits", "probabilities", "top_k_ids", "top_k_scores", "top_k_names")


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


def v2_image_bytes(value, i):
    """A v2 BYTES element as bytes (JSON carries them as latin-1 text); InvalidInput otherwise."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    try:
        return value.encode("latin-1")
    except (AttributeError, UnicodeEncodeError):
        raise InvalidInput(f"image_bytes[{i}]: an encoded image (bytes) is expected, got "
                           f"{type(value).__name__} {str(value)[:40]!r}") from None


def v2_tensor(tensor):
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


V2_TYPES = {"logits": "FP32", "probabilities": "FP32", "top_k_ids": "INT32", "top_k_scores": "FP32",
             "top_k_names": "BYTES"}


@dataclasses.dataclass(frozen=True)
class V1Call:
    """A TF Serving REST predict: its body, and the version or label its route names."""

    body: object
    version: str = None
    label: str = None
