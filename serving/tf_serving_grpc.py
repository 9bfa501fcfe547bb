"""TF Serving's gRPC API on the served models: ``PredictionService``'s Predict, Classify and
GetModelMetadata and ``ModelService``'s GetModelStatus, with the messages and servicers of
``tensorflow-serving-api`` (``tensorflow_serving/apis/*.proto``), so TF Serving's own client
stubs work unchanged. Failures carry TF Serving's status codes: NOT_FOUND for a model, version
or label not served, FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for a bad
request, UNIMPLEMENTED for Regress and MultiInference (the exports are classifiers).

Classify takes ``tf.Example``s holding an encoded image under ``image_bytes`` (a bytes list)
or pixels under ``images`` (a float or int64 list of H x W x C values) and answers each image's
top-k classes: the class name as ``label``, its probability as ``score``.
"""

import asyncio

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
import kserve
from grpc import aio
from kserve.errors import InvalidInput
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from serving import app, connections, protocol, tf_serving_metrics as tfs_metrics

SIGNATURE_DEF = "signature_def"


class Failed(Exception):
    """A request answered with a gRPC status code and one line."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _model(spec):
    """The served model and version number a ``ModelSpec`` asks for."""
    try:
        model = app.served(spec.name)
    except protocol.NotServed as err:
        raise Failed(grpc.StatusCode.NOT_FOUND, str(err)) from None
    label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
    version = spec.version.value if spec.HasField("version") else None
    try:
        return model, model.version_served(version, label)
    except protocol.NotServed as err:
        raise Failed(grpc.StatusCode.NOT_FOUND, str(err)) from None


def _signature(spec):
    name = spec.signature_name or "serving_default"
    if name not in protocol.SIGNATURES:
        raise Failed(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found (the export '
                     f"has {', '.join(protocol.SIGNATURES)})")
    return name


def _answer_spec(spec, name, number, signature=""):
    spec.name, spec.signature_name = name, signature
    spec.version.value = number


async def _outputs(model, current, signature, inputs, where):
    """The export's outputs for ``inputs`` (encoded images for serving_bytes, else pixels)."""
    if signature == "serving_bytes":
        if not inputs:
            raise InvalidInput(f"{where}: no images in the request")
        for i, data in enumerate(inputs):
            if not isinstance(data, bytes):
                raise InvalidInput(f"{where}[{i}]: an encoded image (bytes) is expected")
        pixels = await asyncio.get_running_loop().run_in_executor(None, current.decode, inputs)
    else:
        pixels = protocol.request_pixels(inputs, protocol.SIGNATURES[signature][1], current.image_shape, where)
    return await model.batcher.run(current, pixels)


def _ndarray(proto, key, max_values):
    """A TensorProto as numpy; InvalidInput for one whose shape is negative or claims more than
    ``max_values`` values (a one-value ``float_val`` fills any shape: a bomb in a few bytes),
    or whose values do not fit its dtype and shape."""
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise InvalidInput(f"input {key!r}: its shape must be known, no dimension negative")
    if int(np.prod(dims, dtype=object)) > max_values:
        raise InvalidInput(f"input {key!r}: shape {dims} claims over the server's limit of {max_values} values")
    try:
        return tf.make_ndarray(proto)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"input {key!r}: not a tensor its dtype and shape describe ({err})") from None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TF Serving's ``tensorflow.serving.PredictionService``; Predict and Classify answer within
    ``timeout_s`` (the server's --request_timeout_ms) or DEADLINE_EXCEEDED."""

    def __init__(self, timeout_s, max_values):
        self.timeout_s, self.max_values = timeout_s, max_values

    async def Predict(self, request, context):
        return await _handle(context, self._predict, request, "Predict", self.timeout_s)

    async def _predict(self, request):
        model, current = _model(request.model_spec)
        signature = _signature(request.model_spec)
        key = protocol.SIGNATURES[signature][0]
        if set(request.inputs) != {key}:
            raise InvalidInput(f"{signature} takes one input, {key!r}; the request has {sorted(request.inputs)}")
        array = _ndarray(request.inputs[key], key, self.max_values)
        inputs = list(array.ravel()) if signature == "serving_bytes" else array
        out = await _outputs(model, current, signature, inputs, key)
        wanted = list(request.output_filter) or list(protocol.OUTPUTS)
        unknown = sorted(set(wanted) - set(protocol.OUTPUTS))
        if unknown:
            raise InvalidInput(f"output_filter: {unknown} are not outputs of {signature} ({', '.join(protocol.OUTPUTS)})")
        response = predict_pb2.PredictResponse()
        _answer_spec(response.model_spec, model.name, current.number, signature)
        for name in wanted:
            value = out[name].astype(bytes) if name == "top_k_names" else out[name]
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    async def Classify(self, request, context):
        return await _handle(context, self._classify, request, "Classify", self.timeout_s)

    async def _classify(self, request):
        model, current = _model(request.model_spec)
        kind = request.input.WhichOneof("kind")
        examples = (request.input.example_list.examples if kind == "example_list" else
                    request.input.example_list_with_context.examples if kind else [])
        if not examples:
            raise InvalidInput("Classify needs tf.Examples in its input's example_list")
        features = [example.features.feature for example in examples]
        if all("image_bytes" in f for f in features):
            signature, inputs = "serving_bytes", [b for f in features for b in f["image_bytes"].bytes_list.value]
            if len(inputs) != len(features):
                raise InvalidInput("image_bytes: each tf.Example holds one encoded image")
        elif all("images" in f for f in features):
            signature = "serving_default"
            values = [f["images"].float_list.value or f["images"].int64_list.value for f in features]
            size = int(np.prod(current.image_shape))
            if any(len(v) != size for v in values):
                raise InvalidInput(f"images: each tf.Example holds {size} pixel values "
                                   f"({' x '.join(map(str, current.image_shape))}), found {[len(v) for v in values][:4]}")
            inputs = np.asarray(values, "float64").reshape((len(values), *current.image_shape))
        else:
            raise InvalidInput('each tf.Example holds "image_bytes" (an encoded image) or "images" (pixels)')
        out = await _outputs(model, current, signature, inputs, "example_list")
        response = classification_pb2.ClassificationResponse()
        _answer_spec(response.model_spec, model.name, current.number, request.model_spec.signature_name)
        for names, scores in zip(out["top_k_names"], out["top_k_scores"]):
            classification = response.result.classifications.add()
            for name, score in zip(names, scores):
                classification.classes.add(label=str(name), score=float(score))
        return response

    async def GetModelMetadata(self, request, context):
        return await _handle(context, self._metadata, request)

    async def _metadata(self, request):
        model, current = _model(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise InvalidInput("GetModelMetadataRequest must specify at least one metadata_field")
        if fields != [SIGNATURE_DEF]:
            raise InvalidInput(f"metadata_field: only {SIGNATURE_DEF!r} is served, not {[f for f in fields if f != SIGNATURE_DEF]}")
        try:
            signatures = current.signature_def_map
        except protocol.NotServed as err:
            raise Failed(grpc.StatusCode.FAILED_PRECONDITION, str(err)) from None
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        _answer_spec(response.model_spec, model.name, current.number)
        response.metadata[SIGNATURE_DEF].Pack(signatures)
        return response


    async def Regress(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the exports are classifiers: use Predict or Classify")

    async def MultiInference(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "the exports are classifiers: use Predict or Classify")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """TF Serving's ``tensorflow.serving.ModelService`` (status only: models are managed by
    the folders, as TF Serving's file system source manages them)."""

    async def GetModelStatus(self, request, context):
        return await _handle(context, self._status, request)

    async def _status(self, request):
        spec = request.model_spec
        model, current = _model(spec)
        everything = spec.WhichOneof("version_choice") is None
        return json_format.ParseDict(model.status() if everything else model.status(current.number),
                                     get_model_status_pb2.GetModelStatusResponse())

    async def HandleReloadConfigRequest(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "models are read from --model_base_path's folders")


async def _handle(context, method, request, api=None, timeout_s=None):
    """``method(request)``; its failure aborts the call with its status code and one line.
    With ``api``, the request is counted and timed in TF Serving's metrics, and answered within
    ``timeout_s``."""
    try:
        if api is None:
            return await method(request)
        with tfs_metrics.request(request.model_spec.name, api, "GRPC"):
            return await protocol.within_deadline(method(request), timeout_s)
    except Failed as err:
        await context.abort(err.code, str(err))
    except InvalidInput as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.reason)
    except protocol.DeadlineExceeded as err:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(err))


class Server:
    """The two services on ``host``:``port``, in the model server's event loop (``options``: the
    server's ``serving.options.ServeOptions``)."""

    def __init__(self, host, port, options):
        self.address, self.options = connections.address(host, port), options
        self._server = None

    async def serve(self):
        self._server = aio.server(options=[("grpc.max_receive_message_length", self.options.max_request_bytes)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.options.request_timeout_s, self.options.max_request_bytes), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), self._server)
        self._server.add_insecure_port(self.address)
        await self._server.start()
        await self._server.wait_for_termination()

    async def stop(self, grace_s):
        if self._server is not None:
            await self._server.stop(grace=grace_s)


class ModelServer(kserve.ModelServer):
    """KServe's model server with TF Serving's gRPC API (a ``Server``, or None) beside its own
    servers, in its event loop, stopped with them; its REST server under ``connections.Limits``."""

    def __init__(self, tf_serving, limits, **kwargs):
        super().__init__(**kwargs)
        self.tf_serving, self.limits = tf_serving, limits

    async def _serve(self):
        rest = self._rest_server or self._rest_multiprocess_server._rest_server
        connections.install(rest, self.limits)
        if self.tf_serving:
            self.servers.append(self.tf_serving.serve())
        await super()._serve()

    def stop(self, sig):
        super().stop(sig)
        if self.tf_serving:
            asyncio.create_task(self.tf_serving.stop(self.grace_period))
