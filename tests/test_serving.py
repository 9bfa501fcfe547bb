"""reszoo-serve: exports served on KServe in TF Serving's REST protocol, on localhost.

One digits run is exported (SavedModel and ONNX) and served beside a broken and an empty model
folder; the answers are checked against the SavedModel itself and training.predict, bad requests
against their 4xx, a load of concurrent clients against a version rolled out under it, the ONNX
runtime against the SavedModel, and SIGTERM against a request in flight.
"""

import base64
import collections
import concurrent.futures
import gzip
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

from benchmarks.common import png_bomb, rss_mb
from conftest import ROOT, free_port, run_command

pytestmark = pytest.mark.xdist_group("serving")
MODEL = "resnet20_digits"
TOL = 1e-5  # of the logits' scale: batches of other sizes run other kernels


def _close(got, expected, tol=TOL):
    expected = np.asarray(expected)
    return np.allclose(got, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max())))


class Server:
    """``python -m serving ARGS`` on free ports, up when its model answers."""

    def __init__(self, tmp, base, *args, ready=MODEL):
        self.port, self.grpc_port, self.v2_grpc_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving", *[f"--model_base_path={base}"] * (base is not None),
             f"--port={self.port}", f"--grpc_port={self.grpc_port}", f"--v2_grpc_port={self.v2_grpc_port}",
             "--poll_seconds=0.2", *args],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.proc.poll() is None, self.output()[-4000:]
            try:
                if requests.get(f"{self.url}/v1/models/{ready}", timeout=5).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server did not come up:\n" + self.output()[-4000:])

    def output(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def predict(self, body, path=f"/v1/models/{MODEL}:predict", session=requests):
        data = body if isinstance(body, bytes) else json.dumps(body)
        answer = session.post(self.url + path, data=data, timeout=60)
        return answer.status_code, answer.json()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.log.close()


def _export(model_dir, export_dir, *args):
    proc = run_command("training.export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                       "--formats=saved_model,onnx", *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split("exported ", 1)[1].strip()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A digits run exported as version 1 under base/, beside a model folder whose only version is
    damaged, one with no version, and a half-written export; a second run (other weights) to roll
    out as version 2; the server on base/."""
    tmp = tmp_path_factory.mktemp("serving")
    base = tmp / "base"
    proc = run_command("training.train", "--epochs=1", "--model_args=base_width=8", f"--model_dir={tmp / 'run'}",
                       "--export", f"--export_dir={base}", "--export_formats=saved_model,onnx")
    assert proc.returncode == 0, proc.stderr[-2000:]
    v1 = base / MODEL / "1"
    shutil.copytree(v1, base / "broken" / "1")
    (base / "broken" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    (base / "empty").mkdir()
    shutil.copytree(v1, base / MODEL / ".tmp-2-killed")  # an export killed before its rename

    import keras

    from reszoo import naming

    shutil.copytree(tmp / "run", tmp / "run2")
    model = keras.saving.load_model(tmp / "run" / "last.keras", compile=False)
    kernel, bias = model.get_layer(naming.CLASSIFIER).get_weights()
    model.get_layer(naming.CLASSIFIER).set_weights([kernel[:, ::-1], bias[::-1]])  # other answers
    model.save(tmp / "run2" / "last.keras")
    server = Server(tmp, base)
    yield tmp, base, server
    server.stop()


def _images(n, seed=0):
    from reszoo.datasets import load_digits

    (_, _), (x, _), _ = load_digits()
    return x[seed:seed + n].astype("float32")  # raw pixels 0..16, as the model was trained


def _expected(version_dir, pixels):
    import tensorflow as tf

    out = tf.saved_model.load(str(version_dir)).signatures["serving_default"](images=tf.constant(pixels))
    return {k: v.numpy() for k, v in out.items()}


def _png(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[..., 0].astype("uint8")).save(buffer, "PNG")
    return buffer.getvalue()


def test_answers_are_the_exports_own_in_every_request_form(served, tmp_path):
    from training.predict import predict

    tmp, base, server = served
    pixels = _images(3)
    expected = _expected(base / MODEL / "1", pixels)
    status, rows = server.predict({"instances": pixels.tolist()})
    assert status == 200 and len(rows["predictions"]) == 3
    assert _close([p["logits"] for p in rows["predictions"]], expected["logits"])
    assert [p["top_k_names"] for p in rows["predictions"]] == expected["top_k_names"].astype(str).tolist()
    uint8 = {"signature_name": "serving_uint8", "inputs": {"images": pixels.astype(int).tolist()}}
    status, columns = server.predict(uint8)
    assert status == 200 and set(columns["outputs"]) == {"logits", "probabilities", "top_k_ids", "top_k_scores",
                                                         "top_k_names"}
    assert _close(columns["outputs"]["probabilities"], expected["probabilities"])
    files = []
    for i, image in enumerate(pixels):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(_png(image))
    b64 = [{"image_bytes": {"b64": base64.b64encode(f.read_bytes()).decode()}} for f in files]
    status, encoded = server.predict({"signature_name": "serving_bytes", "instances": b64})
    assert status == 200
    for answer, (_, top) in zip(encoded["predictions"], predict(str(base / MODEL), [str(f) for f in files])):
        assert answer["top_k_names"] == [name for name, _ in top]
        assert _close(answer["top_k_scores"], [score for _, score in top])
    status, one = server.predict({"instances": pixels[:1].tolist()}, path=f"/v1/models/{MODEL}/versions/1:predict")
    assert status == 200
    assert _close(one["predictions"][0]["logits"], expected["logits"][0])
    assert requests.get(f"{server.url}/v1/models/{MODEL}").json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    _check_metadata(server, base / MODEL / "1", "saved_model", "float32")

    v2 = {"inputs": [{"name": "images", "shape": [3, 8, 8, 1], "datatype": "FP32", "data": pixels.ravel().tolist()}]}
    answer = requests.post(f"{server.url}/v2/models/{MODEL}/infer", json=v2, timeout=60).json()
    outputs = {o["name"]: np.reshape(o["data"], o["shape"]) for o in answer["outputs"]}
    assert _close(outputs["logits"], expected["logits"])
    assert outputs["top_k_names"].tolist() == expected["top_k_names"].astype(str).tolist()
    assert _close(_grpc_logits(server.v2_grpc_port, pixels), expected["logits"].ravel())


def _check_metadata(server, version, runtime, precision):
    """TF Serving's GET .../metadata: its JSON parses into TF Serving's own SignatureDefMap, and
    each signature's inputs and outputs are the SavedModel's (as TensorFlow loads them)."""
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    answer = requests.get(f"{server.url}/v1/models/{MODEL}/metadata", timeout=30).json()
    assert answer == requests.get(f"{server.url}/v1/models/{MODEL}/versions/{version.name}/metadata").json()
    assert answer["model_spec"] == {"name": MODEL, "signature_name": "", "version": version.name}
    assert answer["metadata"]["reszoo"] == {"runtime": runtime, "precision": precision}
    signatures = json_format.ParseDict(answer["metadata"]["signature_def"], get_model_metadata_pb2.SignatureDefMap())
    loaded = tf.saved_model.load(str(version)).signatures
    assert set(signatures.signature_def) == set(loaded) == {"serving_default", "serving_uint8", "serving_bytes"}
    for name, signature in signatures.signature_def.items():
        assert signature.method_name == "tensorflow/serving/predict"
        (spec,) = loaded[name].structured_input_signature[1].values()
        (given,) = signature.inputs.values()
        assert tf.dtypes.as_dtype(given.dtype) == spec.dtype
        assert [d.size for d in given.tensor_shape.dim] == [-1 if d is None else d for d in spec.shape]
        assert set(signature.outputs) == set(loaded[name].structured_outputs)
    missing = requests.get(f"{server.url}/v1/models/{MODEL}/versions/99/metadata", timeout=30)
    assert missing.status_code == 404 and "version 99 is not served" in missing.json()["error"]


def _grpc_logits(port, pixels):
    import asyncio

    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def call():
        client = InferenceGRPCClient(f"127.0.0.1:{port}")
        tensor = InferInput("images", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        answer = await client.infer(InferRequest(model_name=MODEL, infer_inputs=[tensor]))
        return {o.name: o.as_numpy() for o in answer.outputs}["logits"].ravel().tolist()

    return asyncio.run(call())


def test_tf_serving_s_grpc_client_stubs_get_the_rest_answers_and_its_status_codes(served, tmp_path):
    """TF Serving's PredictionService and ModelService on --grpc_port, called through
    tensorflow-serving-api's own stubs: Predict in each signature, Classify, GetModelMetadata
    and GetModelStatus answer what REST answers; bad requests get TF Serving's status codes and
    the REST route's one line."""
    import grpc
    import tensorflow as tf
    from google.protobuf import json_format
    from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                         model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc,
                                         regression_pb2)

    _, base, server = served
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    pixels = _images(3)
    pngs = [_png(image) for image in pixels]
    rest = server.predict({"instances": pixels.tolist()})[1]["predictions"]

    def predict(name=MODEL, signature="", version=None, label=None, **inputs):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = name, signature
        if version is not None:
            request.model_spec.version.value = version
        if label is not None:
            request.model_spec.version_label = label
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        return request

    answers = [stub.Predict(predict(images=pixels), timeout=60),
               stub.Predict(predict(signature="serving_uint8", images=pixels.astype("uint8")), timeout=60),
               stub.Predict(predict(signature="serving_bytes", version=1, image_bytes=np.array(pngs, object)),
                            timeout=60)]
    for answer in answers:
        out = {k: tf.make_ndarray(v) for k, v in answer.outputs.items()}
        assert set(out) == {"logits", "probabilities", "top_k_ids", "top_k_scores", "top_k_names"}
        assert _close(out["logits"], [r["logits"] for r in rest])
        assert out["top_k_names"].astype(str).tolist() == [r["top_k_names"] for r in rest]
        assert (answer.model_spec.name, answer.model_spec.version.value) == (MODEL, 1)
    assert answers[1].model_spec.signature_name == "serving_uint8"
    only = predict(images=pixels)
    only.output_filter.append("top_k_ids")
    assert list(stub.Predict(only, timeout=60).outputs) == ["top_k_ids"]

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = MODEL
    for png in pngs:
        classify.input.example_list.examples.add().features.feature["image_bytes"].bytes_list.value.append(png)
    classes = stub.Classify(classify, timeout=60).result.classifications
    assert [[c.label for c in each.classes] for each in classes] == [r["top_k_names"] for r in rest]
    assert _close([[c.score for c in each.classes] for each in classes], [r["top_k_scores"] for r in rest])

    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = MODEL
    metadata.metadata_field.append("signature_def")
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert stub.GetModelMetadata(metadata, timeout=60).metadata["signature_def"].Unpack(signatures)
    rest_metadata = requests.get(f"{server.url}/v1/models/{MODEL}/metadata", timeout=30).json()
    assert signatures == json_format.ParseDict(rest_metadata["metadata"]["signature_def"],
                                               get_model_metadata_pb2.SignatureDefMap())
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = MODEL
    answer = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status, timeout=60)
    assert json_format.MessageToDict(answer, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True) == requests.get(
        f"{server.url}/v1/models/{MODEL}").json()

    wrong_image = predict(signature="serving_bytes", image_bytes=np.array([b"GIF8?"], object))
    bomb = predict()  # one float for a tensor of 2^40 images: TensorFlow would fill it
    bomb.inputs["images"].CopyFrom(tf.make_tensor_proto([0.0], "float32", [2 ** 40, 8, 8, 1]))
    no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    no_field.model_spec.name = MODEL
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = MODEL
    bad = [(stub.Predict, predict(name="nope", images=pixels), grpc.StatusCode.NOT_FOUND, "model 'nope' is not served"),
           (stub.Predict, predict(version=7, images=pixels), grpc.StatusCode.NOT_FOUND,
            "version 7 is not served (it serves version 1"),
           (stub.Predict, predict(label="canary", images=pixels), grpc.StatusCode.NOT_FOUND, "no version label 'canary'"),
           (stub.Predict, predict(signature="serving_float16", images=pixels), grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "serving_float16" not found'),
           (stub.Predict, predict(pixels=pixels), grpc.StatusCode.INVALID_ARGUMENT, "takes one input, 'images'"),
           (stub.Predict, predict(images=pixels[:, :4]), grpc.StatusCode.INVALID_ARGUMENT,
            "shape [3, 4, 8, 1], expected [batch, 8, 8, 1]"),
           (stub.Predict, predict(images=np.full((1, 8, 8, 1), np.nan, "float32")), grpc.StatusCode.INVALID_ARGUMENT,
            "finite float32"),
           (stub.Predict, predict(signature="serving_uint8", images=np.full((1, 8, 8, 1), 300)),
            grpc.StatusCode.INVALID_ARGUMENT, "0..255"),
           (stub.Predict, wrong_image, grpc.StatusCode.INVALID_ARGUMENT, "image 0 cannot be decoded"),
           (stub.Predict, bomb, grpc.StatusCode.INVALID_ARGUMENT, "claims over the server's limit"),
           (stub.Classify, classification_pb2.ClassificationRequest(model_spec=classify.model_spec),
            grpc.StatusCode.INVALID_ARGUMENT, "tf.Examples"),
           (stub.GetModelMetadata, no_field, grpc.StatusCode.INVALID_ARGUMENT, "at least one metadata_field"),
           (stub.Regress, regress, grpc.StatusCode.UNIMPLEMENTED, "the exports are classifiers")]
    for call, request, code, says in bad:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=60)
        assert caught.value.code() == code and says in caught.value.details(), (code, caught.value.details())
        assert "\n" not in caught.value.details()
    assert stub.Predict(predict(images=pixels[:1]), timeout=60).outputs["logits"].tensor_shape.dim[0].size == 1
    assert "Traceback" not in server.output()


def _tf_serving_metrics(server):
    """TF Serving's Prometheus names at its path, each sample as written (Prometheus' parser
    must read the text too, but it renames a counter's samples ``..._total``): {(name,
    labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    answer = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    assert list(text_string_to_metric_families(answer.text))
    samples = {}
    for line in answer.text.splitlines():
        if line and not line.startswith("#"):
            name, labels, value = re.fullmatch(r"([^{\s]+)(?:\{(.*)\})? (\S+)", line).groups()
            samples[name, tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or "")))] = float(value)
    return samples


def test_tf_serving_s_metric_names_move_with_each_request(served):
    """:tensorflow:serving:request_count, request_latency, runtime_latency and the batching
    queue's latency, under TF Serving's names and labels, each moved by a request (REST and
    gRPC), a refused one counted under its status code; KServe's own stay at /metrics."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    _, _, server = served
    before = _tf_serving_metrics(server)
    assert server.predict({"instances": _images(2).tolist()})[0] == 200
    assert server.predict({"instances": [[1, 2]]})[0] == 400
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(_images(1)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
    stub.Predict(request, timeout=60)
    after = _tf_serving_metrics(server)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    prefix = ":tensorflow:serving:"
    assert moved(prefix + "request_count", model_name=MODEL, status="OK") == 2
    assert moved(prefix + "request_count", model_name=MODEL, status="INVALID_ARGUMENT") == 1
    assert moved(prefix + "request_latency_count", model_name=MODEL, API="Predict", entrypoint="REST") == 2
    assert moved(prefix + "request_latency_count", model_name=MODEL, API="Predict", entrypoint="GRPC") == 1
    assert moved(prefix + "request_latency_sum", model_name=MODEL, API="Predict", entrypoint="GRPC") > 0  # microseconds
    assert moved(prefix + "runtime_latency_count", model_name=MODEL, API="Predict", runtime="saved_model") == 2
    assert moved(prefix + "batching_session:queuing_latency_count", thread_pool_name=MODEL) == 2
    assert "request_predict_seconds_count" in requests.get(f"{server.url}/metrics", timeout=30).text


def _kserve_stages(server):
    """KServe's per-stage histograms at /metrics: {(stage, "count" or "sum"): value} for MODEL."""
    from prometheus_client.parser import text_string_to_metric_families

    found = {}
    for family in text_string_to_metric_families(requests.get(f"{server.url}/metrics", timeout=30).text):
        for sample in family.samples:
            stage = re.fullmatch(r"request_(preprocess|predict|postprocess)_seconds_(count|sum)", sample.name)
            if stage and sample.labels.get("model_name") == MODEL:
                found[stage.groups()] = sample.value
    return found


def test_every_predict_route_goes_through_kserve_s_hooks_and_their_histograms(served):
    """TF Serving's routes (plain, versioned, labelled) and v2 each run KServe's preprocess
    (parse, decode), predict (the batcher and the model) and postprocess (the answer's form),
    so KServe's per-stage histograms count each request once per stage; a PNG's decoding is
    preprocess's time."""
    _, _, server = served
    pixels = _images(1)
    v2 = {"inputs": [{"name": "images", "shape": list(pixels.shape), "datatype": "FP32",
                      "data": pixels.ravel().tolist()}]}
    for path, body in ((f"/v1/models/{MODEL}:predict", {"instances": pixels.tolist()}),
                       (f"/v1/models/{MODEL}/versions/1:predict", {"inputs": pixels.tolist()}),
                       (f"/v1/models/{MODEL}:predict", {"signature_name": "serving_bytes",
                                                        "instances": [{"b64": base64.b64encode(
                                                            _png(pixels[0])).decode()}]}),
                       (f"/v2/models/{MODEL}/infer", v2)):
        before = _kserve_stages(server)
        answer = requests.post(server.url + path, json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        after = _kserve_stages(server)
        for stage in ("preprocess", "predict", "postprocess"):
            assert after[stage, "count"] - before.get((stage, "count"), 0) == 1, (path, stage)
            assert after[stage, "sum"] > before.get((stage, "sum"), 0), (path, stage)
    before = _kserve_stages(server)
    assert server.predict({"instances": [[1, 2]]}, path=f"/v1/models/{MODEL}/versions/1:predict")[0] == 400
    after = _kserve_stages(server)  # refused in preprocess: no model call
    assert after["predict", "count"] == before["predict", "count"]


def test_not_ready_until_every_model_is_available_and_a_late_answer_is_a_504(served, tmp_path):
    """/v2/health/ready is 503 (naming the model) while a model folder has no version AVAILABLE,
    200 once it has; a request past --request_timeout_ms gets 504 over REST and
    DEADLINE_EXCEEDED over gRPC, counted under that status, and the server answers after."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    _, base, _ = served
    shutil.copytree(base / MODEL / "1", tmp_path / "base" / MODEL / "1")
    (tmp_path / "base" / "later").mkdir()
    server = Server(tmp_path, tmp_path / "base", "--request_timeout_ms=100")
    try:
        answer = requests.get(f"{server.url}/v2/health/ready", timeout=30)
        assert answer.status_code == 503 and "no version AVAILABLE yet for later" in answer.json()["error"]
        many = np.zeros((10_000, 8, 8, 1), "uint8")  # its JSON alone takes longer than the deadline to parse
        status, said = server.predict({"signature_name": "serving_uint8", "inputs": many.tolist()})
        assert status == 504 and said["error"] == ("the request was not answered within the server's "
                                                   "--request_timeout_ms=100"), said
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = MODEL, "serving_bytes"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(np.array([_png(_images(1)[0])] * 1000, object)))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        with pytest.raises(grpc.RpcError) as caught:  # a thousand images take longer than that to decode
            stub.Predict(request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "100" in caught.value.details()
        counted = _tf_serving_metrics(server)[":tensorflow:serving:request_count", (("model_name", MODEL),
                                                                                    ("status", "DEADLINE_EXCEEDED"))]
        assert counted == 2
        shutil.copytree(base / MODEL / "1", tmp_path / "base" / "later" / "1")
        deadline = time.time() + 60
        while requests.get(f"{server.url}/v2/health/ready", timeout=30).status_code != 200:
            assert time.time() < deadline, server.output()[-2000:]
            time.sleep(0.2)
        while server.predict({"instances": _images(1).tolist()})[0] != 200:  # once the long calls are done
            assert time.time() < deadline, server.output()[-2000:]
            time.sleep(0.2)
        assert "Traceback" not in server.output()
    finally:
        server.stop()


CONFIG = """model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
"""


def test_a_model_config_file_serves_two_versions_and_their_labels(served, tmp_path):
    """TF Serving's --model_config_file (read with its protos): a specific policy serves versions
    1 and 2 side by side, /labels/stable and /labels/canary (REST and gRPC) reach each, the
    status lists both, and a request that names none gets the newest."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    tmp, base, _ = served
    folder = tmp_path / "models" / MODEL
    shutil.copytree(base / MODEL / "1", folder / "1")
    proc = run_command("training.export", f"--model_dir={tmp / 'run2'}", f"--export_dir={tmp_path / 'models'}",
                       f"--name={MODEL}", "--version=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp_path / "models.config").write_text(CONFIG.format(name=MODEL, base=folder))
    server = Server(tmp_path, None, f"--model_config_file={tmp_path / 'models.config'}")
    try:
        url = f"{server.url}/v1/models/{MODEL}"
        assert [v["version"] for v in requests.get(url, timeout=30).json()["model_version_status"]] == ["2", "1"]
        assert requests.get(f"{url}/labels/canary", timeout=30).json()["model_version_status"][0]["version"] == "2"
        body = {"instances": _images(2).tolist()}
        logits = {path: [p["logits"] for p in server.predict(body, path=f"/v1/models/{MODEL}{path}:predict")[1][
            "predictions"]] for path in ("", "/versions/1", "/versions/2", "/labels/stable", "/labels/canary")}
        assert logits["/labels/stable"] == logits["/versions/1"] and logits["/labels/canary"] == logits["/versions/2"]
        assert logits[""] == logits["/versions/2"] and not _close(logits["/versions/1"], logits["/versions/2"])
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.version_label = MODEL, "stable"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(_images(2)))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}"))
        answer = stub.Predict(request, timeout=60)
        assert answer.model_spec.version.value == 1 and _close(tf.make_ndarray(answer.outputs["logits"]),
                                                              logits["/versions/1"])
        status, said = server.predict(body, path=f"/v1/models/{MODEL}/labels/beta:predict")
        assert status == 404 and "no version label 'beta' (its labels: canary, stable)" in said["error"]
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_damaged_empty_and_half_written_models_are_reported_and_not_served(served):
    _, _, server = served
    log = server.output()
    assert "serve: error: broken version 1 cannot be loaded, its files are damaged" in log
    assert "serve: error: empty (" in log and "has no complete version yet" in log
    assert f"serving {MODEL} version 1 (saved_model, float32), warmed up with 3 requests" in log
    for name in ("broken", "empty", ".tmp-2-killed"):
        status, answer = server.predict({"instances": _images(1).tolist()}, path=f"/v1/models/{name}:predict")
        assert status == 404 and name in answer["error"]
    assert requests.get(f"{server.url}/v1/models/broken").status_code == 404


BAD = [  # (body, status, what the one-line error says)
    (b"{not json", 400, ("not JSON", "Unrecognized request format")),  # ours for curl's form type, KServe's for JSON
    ([1, 2], 400, 'a JSON object with "instances" or "inputs"'),
    ({"instances": [[1, 2]]}, 400, "shape [1, 2], expected [batch, 8, 8, 1]"),
    ({"instances": [[["a"] * 1] * 8] * 8}, 400, "not a rectangular array of numbers"),
    ({"instances": []}, 400, "non-empty list"),
    ({"instances": [1], "inputs": [1]}, 400, "exactly one of"),
    ({"signature_name": "serving_float16", "instances": [1]}, 400, "signature_name 'serving_float16' is not served"),
    ({"signature_name": "serving_uint8", "instances": np.full((1, 8, 8, 1), 300).tolist()}, 400, "0..255"),
    ({"signature_name": "serving_bytes", "instances": [{"image_bytes": {"b64": base64.b64encode(b"GIF8?").decode()}}]},
     400, "image 0 cannot be decoded"),
    ({"signature_name": "serving_bytes", "instances": [{"image_bytes": {"b64": "@@@"}}]}, 400, "not valid base64"),
    ({"signature_name": "serving_bytes", "instances": ["raw"]}, 400, 'image_bytes must be {"b64"'),
    ({"instances": [{"pixels": 1}]}, 400, 'the "images" input of serving_default'),
]


def test_bad_requests_get_a_4xx_with_one_line_and_the_server_keeps_serving(served):
    _, _, server = served
    for body, status, says in BAD:
        got, answer = server.predict(body)
        said = answer.get("error", "")
        assert (got, any(s in said for s in (says if isinstance(says, tuple) else [says]))) == (status, True), \
            (body, answer)
        assert "\n" not in answer["error"]
    assert server.predict({"instances": [1]}, path="/v1/models/nope:predict")[0] == 404
    got, answer = server.predict({"instances": _images(1).tolist()}, path=f"/v1/models/{MODEL}/versions/7:predict")
    assert got == 404 and "version 7 is not served (it serves version 1" in answer["error"]
    got, answer = server.predict(b" " * (17 * 2 ** 20))
    assert got == 413 and "over the server's limit" in answer["error"]
    assert server.predict({"instances": _images(1).tolist()})[0] == 200
    assert "Traceback" not in server.output()


HOSTILE_V1 = [  # bodies that once reached numpy or the model (500s, null logits): each a 400 now
    ({"signature_name": ["serving_default"], "instances": [1]}, "signature_name ['serving_default'] is not served"),
    ({"signature_name": {"a": 1}, "instances": [1]}, "is not served"),
    ({"instances": np.full((1, 8, 8, 1), 1e308).tolist()}, "finite float32"),  # inf in float32
    ({"inputs": np.zeros((0, 8, 8, 1)).tolist()}, "shape [0]"),
    ({"instances": np.full((1, 8, 8, 1), True).tolist()}, "not a rectangular array of numbers"),
    ({"inputs": {"images": np.zeros((1, 8, 8, 1)).tolist(), "other": 1}}, 'holds the one input of serving_default'),
]


def _v2(name, datatype, shape, data):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


HOSTILE_V2 = [  # (body, what the one line says)
    (_v2("images", "FP32", [1, 8, 8, 1], ["a"] * 64), "does not fit its shape [1, 8, 8, 1] and datatype FP32"),
    (_v2("images", "FP32", [2, 8, 8, 1], [0.0] * 64), "cannot reshape"),
    (_v2("images", "UINT8", [1, 8, 8, 1], [300] * 64), "out of bounds for uint8"),
    (_v2("images", "FP32", [0, 8, 8, 1], []), "no images"),
    (_v2("images", "FP32", [1, 8, 8, 1], [1e39] * 64), "finite float32"),
    (_v2("images", "FP32", [-1, 8, 8, 1], [0.0] * 64), "none negative"),
    (_v2("images", "FP32", [10 ** 12, 8, 8, 1], [0.0] * 64), "cannot reshape"),
    (_v2("image_bytes", "BYTES", [2], ["x"]), "does not fit its shape [2]"),
    (_v2("image_bytes", "BYTES", [1], [None]), "image_bytes[0]: an encoded image (bytes) is expected"),
    (_v2("image_bytes", "BYTES", [1], ["\u20ac"]), "image_bytes[0]: an encoded image (bytes) is expected"),
    ({"inputs": "nope"}, "does not fit the protocol's schema at inputs"),  # FastAPI's 422, echoing the body
    ({"inputs": [{"name": "images", "datatype": "FP32", "shape": [], "data": None},  # ... as a 500 with Infinity
                 {"name": "x", "datatype": "FP32", "shape": [1], "data": [float("inf")]}]}, "protocol's schema"),
]


def _hostile(server, model, grpc_port):
    """The hostile bodies over TF Serving's REST (both routes), v2 REST (JSON and binary) and
    v2 gRPC: each a 4xx (gRPC: INVALID_ARGUMENT) with one line; a good request answers after."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as stubs

    version = requests.get(f"{server.url}/v1/models/{model}").json()["model_version_status"][0]["version"]
    for path in (f"/v1/models/{model}:predict", f"/v1/models/{model}/versions/{version}:predict"):
        for body, says in HOSTILE_V1:
            status, answer = server.predict(body, path=path)
            assert status == 400 and says in answer["error"] and "\n" not in answer["error"], (path, body, answer)
    status, answer = server.predict(b"[" * 50_000, path=f"/v1/models/{model}/versions/{version}:predict")
    assert status == 400 and "nested too deeply" in answer["error"]
    for body, says in HOSTILE_V2:
        answer = requests.post(f"{server.url}/v2/models/{model}/infer", data=json.dumps(body), timeout=30,
                               headers={"Content-Type": "application/json"})  # json.dumps: Infinity as JS writes it
        assert answer.status_code == 400 and says in answer.json()["error"], (body, answer.text)
    header = json.dumps({"inputs": [{"name": "images", "shape": [1, 8, 8, 1], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 256}}]}).encode()
    answer = requests.post(f"{server.url}/v2/models/{model}/infer", data=header + bytes(100), timeout=30,
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "Content-Type": "application/octet-stream"})
    assert answer.status_code == 400 and "does not fit the request's header" in answer.json()["error"]
    if grpc_port:
        stub = stubs.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{grpc_port}"))

        def request(name, datatype, shape, raw=None, **contents):
            tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
            for field, values in contents.items():
                getattr(tensor.contents, field).extend(values)
            return pb.ModelInferRequest(model_name=model, inputs=[tensor],
                                        raw_input_contents=[raw] if raw is not None else [])

        for call, says in [(request("images", "FP32", [1, 8, 8, 1], fp32_contents=[0.0] * 10), "cannot reshape"),
                           (request("images", "FP32", [1, 8, 8, 1], raw=bytes(10)), "multiple of element size"),
                           (request("images", "FP32", [0, 8, 8, 1]), "no images"),
                           (request("images", "UINT8", [1, 8, 8, 1], uint_contents=[300] * 64), "out of bounds"),
                           (request("images", "FP32", [1, 8, 8, 1], fp32_contents=[float("nan")] * 64), "finite"),
                           (request("image_bytes", "BYTES", [3], bytes_contents=[b"junk"]), "shape [3]"),
                           (request("images", "FP32", [2 ** 40, 8, 8, 1], fp32_contents=[0.0] * 64), "reshape")]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(call, timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in caught.value.details()
        good = stub.ModelInfer(request("images", "FP32", [1, 8, 8, 1], fp32_contents=_images(1).ravel().tolist()))
        assert [o.name for o in good.outputs] == list(("logits", "probabilities", "top_k_ids", "top_k_scores",
                                                       "top_k_names"))
    status, answer = server.predict({"instances": _images(1).tolist()}, path=f"/v1/models/{model}:predict")
    assert status == 200
    assert "Traceback" not in server.output()


def test_hostile_requests_over_every_protocol_get_a_4xx_with_one_line(served):
    _, _, server = served
    _hostile(server, MODEL, server.v2_grpc_port)


def _fuzz_bodies():
    """Hypothesis strategies for hostile request bodies: TF Serving's v1 JSON and the v2
    protocol's, with any JSON (non-finite numbers, deep and ragged lists, wrong types) where
    images and tensors belong, near-miss image arrays, and bytes that are not JSON."""
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=12)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8), inner, max_size=3), max_leaves=24)
    images = st.builds(lambda n, side, value: np.full((n, side, 8, 1), value).tolist(), st.integers(0, 3),
                       st.sampled_from([7, 8, 9]), st.integers(-300, 300) | st.floats(width=32))
    encoded = st.lists(st.fixed_dictionaries({"b64": st.text(max_size=40) | st.binary(max_size=60).map(
        lambda b: base64.b64encode(b).decode())}), max_size=3)
    signature = st.sampled_from(["serving_default", "serving_uint8", "serving_bytes", "nope"]) | values
    v1 = st.fixed_dictionaries({}, optional={"instances": images | encoded | values, "inputs": images | values,
                                             "signature_name": signature})
    tensor = st.fixed_dictionaries({"name": st.sampled_from(["images", "image_bytes", "x"]),
                                    "datatype": st.sampled_from(["FP32", "UINT8", "BYTES", "INT64", "FP16", "BOOL", "X"]),
                                    "shape": st.lists(st.integers(-2, 10), max_size=5), "data": values | images})
    v2 = st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=2)}, optional={"id": values})
    raw = st.binary(max_size=200)
    return v1, v2, raw


def test_a_fuzz_of_hostile_bodies_gets_only_4xx_and_memory_stays_flat(served):
    """A bounded Hypothesis run (about 1,500 requests) over both protocols' bodies: no 5xx, every
    refusal one line of JSON, the server's RSS within 10% of where it started, and it answers
    after."""
    from hypothesis import HealthCheck, given, settings

    _, _, server = served
    v1, v2, raw = _fuzz_bodies()
    session = requests.Session()
    routes = {"v1": f"/v1/models/{MODEL}:predict", "v1 version": f"/v1/models/{MODEL}/versions/1:predict",
              "v2": f"/v2/models/{MODEL}/infer"}
    for _ in range(100):  # the server's memory after its first requests, as a client sees it running
        server.predict({"instances": _images(1).tolist()}, session=session)
    start = rss_mb(server.proc.pid)
    seen = collections.Counter()

    def send(route, data):
        answer = session.post(server.url + routes[route], data=data, timeout=60,
                              headers={"Content-Type": "application/json"})
        seen[answer.status_code] += 1
        assert answer.status_code < 500, (route, data[:300], answer.status_code, answer.text[:300])
        if answer.status_code != 200:
            error = answer.json()["error"]
            assert isinstance(error, str) and "\n" not in error, (route, data[:300], answer.text[:300])

    fuzz = settings(max_examples=500, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    @fuzz
    @given(body=v1)
    def v1_bodies(body):
        send("v1", json.dumps(body).encode())
        send("v1 version", json.dumps(body).encode())

    @fuzz
    @given(body=v2, data=raw)
    def v2_and_raw_bodies(body, data):
        send("v2", json.dumps(body).encode())
        send("v1", data)

    v1_bodies()
    v2_and_raw_bodies()
    assert sum(seen.values()) >= 1500 and seen[400] > 500, seen
    assert rss_mb(server.proc.pid) < 1.1 * start, (start, rss_mb(server.proc.pid), seen)
    assert server.predict({"instances": _images(1).tolist()}, session=session)[0] == 200
    assert "Traceback" not in server.output()


def _chunked(server, path, total, chunk=2 ** 16):
    """POST ``total`` bytes of JSON-ish filler as a chunked body (no Content-Length) over a raw
    socket, stopping as soon as the server answers; the answer's status and body."""
    import select

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        sent = 0
        while sent < total and not select.select([conn], [], [], 0)[0]:
            try:
                conn.sendall(f"{chunk:x}\r\n".encode() + b" " * chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += chunk
        if sent >= total:
            conn.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < int(
                re.search(rb"content-length: (\d+)", answer.lower()).group(1) if b"content-length" in answer.lower()
                else 0):
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    head, body = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body), sent


def test_bodies_over_the_limit_in_any_form_and_image_bombs_are_refused_with_flat_memory(served):
    """TF Serving's open reports, tried here: a chunked body (no Content-Length) is counted as it
    comes, a gzip body is inflated with the limit on its inflated size (a bomb stops there), an
    image whose header claims 20000 x 20000 pixels is refused before decoding; good gzip bodies
    answer as plain ones, and the server's memory stays where it was."""
    _, _, server = served
    pixels = _images(2)
    plain = server.predict({"instances": pixels.tolist()})
    before = rss_mb(server.proc.pid)
    for path in (f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}/versions/1:predict",
                 f"/v2/models/{MODEL}/infer"):
        status, answer, sent = _chunked(server, path, 2 ** 30)  # 1 GiB offered
        assert status == 413 and "and still coming" in answer["error"] and sent < 64 * 2 ** 20, (path, answer, sent)
    body = json.dumps({"instances": pixels.tolist()}).encode()
    zipped = requests.post(server.url + f"/v1/models/{MODEL}:predict", data=gzip.compress(body), timeout=30,
                           headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert (zipped.status_code, zipped.json()) == plain
    for data, encoding, status, says in [(gzip.compress(b" " * (256 * 2 ** 20)), "gzip", 413, "once inflated"),
                                         (gzip.compress(body)[:-20], "gzip", 400, "cut short"),
                                         (b"not gzip at all", "gzip", 400, "cannot be inflated"),
                                         (body, "br", 415, "Content-Encoding 'br' is not accepted")]:
        answer = requests.post(server.url + f"/v1/models/{MODEL}:predict", data=data, timeout=60,
                               headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
        assert answer.status_code == status and says in answer.json()["error"], (encoding, answer.text)
    bomb, large = (base64.b64encode(png_bomb(side)).decode() for side in (20000, 5000))
    assert len(bomb) < 2 ** 20
    for path in (f"/v1/models/{MODEL}:predict", f"/v1/models/{MODEL}/versions/1:predict"):
        status, answer = server.predict({"signature_name": "serving_bytes", "instances": [{"b64": bomb}] * 3},
                                        path=path)
        assert status == 400 and answer["error"] == ("image 0 claims over 178956970 pixels, over the server's limit "
                                                     "of 4096 x 4096; it was not decoded"), answer
        status, answer = server.predict({"signature_name": "serving_bytes", "instances": [{"b64": large}]}, path=path)
        assert status == 400 and answer["error"].startswith("image 0 claims 5000 x 5000 pixels, over"), answer
    assert server.predict({"instances": pixels.tolist()}) == plain
    assert rss_mb(server.proc.pid) < before + 100
    assert "Traceback" not in server.output()


def _raw_answer(conn):
    """The status and JSON body of the one answer on ``conn``, read until the server closes it."""
    answer = b""
    while data := conn.recv(65536):
        answer += data
    head, body = answer.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_slow_and_idle_clients_cannot_lock_out_a_normal_one_and_sigterm_drains_with_readiness_503(served, tmp_path):
    """--log_requests logs each request (uvicorn's access line, KServe's timings), and without it
    nothing is; --host binds REST and TF Serving's gRPC there; a request whose head or body is still
    coming after --read_timeout_ms gets 408 and its connection closes; past --max_connections,
    the connections idle longest are closed and a normal client is answered; on SIGTERM with
    --drain_ms the server goes on answering with /v2/health/ready at 503, then exits 0."""
    import resource

    _, base, quiet = served
    server = Server(tmp_path, base / MODEL, "--host=127.0.0.1", "--read_timeout_ms=1000", "--max_connections=50",
                    "--drain_ms=3000", "--log_requests")
    try:
        assert f"serving REST on 127.0.0.1:{server.port}" in server.output()
        for logged in (server, quiet):  # a line per request with --log_requests only, and KServe's timings
            assert logged.predict({"instances": _images(1).tolist()})[0] == 200
        time.sleep(0.5)
        assert f'"POST /v1/models/{MODEL}:predict HTTP/1.1" 200' in server.output()
        assert re.search(r"kserve\.io\S*predict: [0-9.e-]+ \['http_status:200'", server.output()), server.output()[-2000:]
        assert ":predict HTTP/1.1" not in quiet.output() and "http_status:200" not in quiet.output()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect(("10.255.255.255", 1))  # no packet sent: the address a route out would use
                outside = probe.getsockname()[0]
            except OSError:
                outside = "127.0.0.1"
        if not outside.startswith("127."):  # a machine with a network interface
            for port in (server.port, server.grpc_port):
                with pytest.raises(OSError), socket.create_connection((outside, port), timeout=2):
                    pass
        for partial in (b"GET /v1/models/resnet20_digits HTTP/1.1\r\nHost: x\r\n",
                        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode()):
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
                begin = time.time()
                conn.sendall(partial)
                status, answer = _raw_answer(conn)
                assert status == 408 and 0.9 < time.time() - begin < 10
                assert answer["error"] == ("the request did not arrive whole within 1 s of its first byte "
                                           "(--read_timeout_ms)")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(1000)]
        idle[-1].sendall(b"GET /v1/models/resnet20_digits HTTP/1.1\r\nHost:")  # slow header, the newest
        pixels = _images(2)
        assert server.predict({"instances": pixels.tolist()})[0] == 200
        closed = 0
        for conn in idle:
            conn.settimeout(5)
            closed += conn.recv(10) == b""
            conn.close()
        assert closed >= 1000 - 50
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        server.proc.send_signal(signal.SIGTERM)
        begin = time.time()
        answer = requests.get(f"{server.url}/v2/health/ready", timeout=5)
        assert answer.status_code == 503 and answer.json()["error"].startswith("the server is shutting down (SIGTERM")
        assert server.predict({"instances": pixels.tolist()})[0] == 200
        assert server.proc.wait(60) == 0 and time.time() - begin > 2.5
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.url}/v2/health/ready", timeout=5)
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_versions_are_read_as_tf_serving_reads_them(served, tmp_path):
    """"0010" is version 10 and "²" no version (it once killed the watcher); a version seen
    half-copied is served once its copy completes; a served version whose folder is removed is
    unloaded for the newest that remains (TF Serving's latest policy)."""
    _, base, _ = served
    v1 = base / MODEL / "1"
    models = tmp_path / "models"
    shutil.copytree(v1, models / "m" / "0003")
    (models / "m" / "\u00b2").mkdir()
    server = Server(tmp_path, models / "m", ready="m")
    try:
        def serving():
            return requests.get(f"{server.url}/v1/models/m", timeout=10).json()["model_version_status"][0]["version"]

        def wait_for(condition, what):
            deadline = time.time() + 60
            while not condition():
                assert time.time() < deadline, f"{what}:\n" + server.output()[-3000:]
                time.sleep(0.2)

        assert serving() == "3"
        shutil.copytree(v1, models / "m" / "5", ignore=shutil.ignore_patterns("variables"))
        wait_for(lambda: "m version 5 has no variables/" in server.output(), "the half copy reported")
        assert serving() == "3"
        shutil.copytree(v1 / "variables", models / "m" / "5" / "variables")
        wait_for(lambda: serving() == "5", "the completed copy served")
        shutil.rmtree(models / "m" / "5")
        wait_for(lambda: serving() == "3", "the newest remaining served")
        assert "serve: m version 5 was removed; unloaded" in server.output()
        assert server.predict({"instances": _images(1).tolist()}, path="/v1/models/m:predict")[0] == 200
    finally:
        server.stop()
    assert "Traceback" not in server.output()


def _client(server, pixels, until, answers, errors):
    session = requests.Session()
    i = 0
    while not until(i):
        image = pixels[i % len(pixels)][None]
        try:
            status, answer = server.predict({"instances": image.tolist()}, session=session)
        except requests.RequestException as err:
            errors.append(repr(err))
        else:
            if status != 200:
                errors.append(answer)
            else:
                answers.append((i % len(pixels), answer["predictions"][0]["logits"]))
        i += 1


def test_concurrent_clients_are_batched_and_a_version_rolls_out_under_load(served):
    tmp, base, server = served
    pixels = _images(16)
    v1 = _expected(base / MODEL / "1", pixels)["logits"]
    answers, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: _client(server, pixels, lambda i: i >= 25, answers, errors), range(8)))
    assert errors == [] and len(answers) == 8 * 25
    for i, logits in answers:
        assert _close(logits, v1[i])
    metrics = requests.get(f"{server.url}/metrics").text
    count = float(next(l for l in metrics.splitlines() if l.startswith(f'reszoo_batch_size_count{{model="{MODEL}"}}'))
              .split()[-1])
    total = float(next(l for l in metrics.splitlines() if l.startswith(f'reszoo_batch_size_sum{{model="{MODEL}"}}'))
                  .split()[-1])
    assert total >= 8 * 25 and count < total  # every image was run, some of them in shared batches

    answers.clear()
    rolled = threading.Event()
    after = []

    def until(i):
        if rolled.is_set():
            after.append(i)
        return rolled.is_set() and len(after) > 8 * 10

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        clients = [pool.submit(_client, server, pixels, until, answers, errors) for _ in range(8)]
        final = _export(tmp / "run2", base)  # the real export: a .tmp- folder, renamed into place
        assert final.endswith(f"{MODEL}/2")
        deadline = time.time() + 60
        while requests.get(f"{server.url}/v1/models/{MODEL}").json()["model_version_status"][0]["version"] != "2":
            assert time.time() < deadline, server.output()[-4000:]
            time.sleep(0.1)
        switched = len(answers)
        rolled.set()
        [c.result() for c in clients]
    v2 = _expected(base / MODEL / "2", pixels)["logits"]
    assert errors == [] and len(answers) > switched
    old = [_close(logits, v1[i]) for i, logits in answers]
    new = [_close(logits, v2[i]) for i, logits in answers]
    assert all(a or b for a, b in zip(old, new))  # each answer is one version's, whole
    assert all(new[switched + 8:]) and any(old)  # answers after the switch are version 2's


def test_the_onnx_runtime_answers_as_the_saved_model_and_sigterm_drains_its_worker_processes(served):
    tmp, base, server = served
    onnx = Server(tmp, base / MODEL, "--runtime=onnx", "--max_batch_size=1", "--workers=2")
    try:
        _hostile(onnx, MODEL, onnx.v2_grpc_port)
        pixels = _images(64, seed=100)
        status, answer = onnx.predict({"instances": pixels.tolist()})
        version = requests.get(f"{onnx.url}/v1/models/{MODEL}").json()["model_version_status"][0]["version"]
        _check_metadata(onnx, base / MODEL / version, "onnx", "float32")
        expected = _expected(base / MODEL / version, pixels)
        assert status == 200
        assert _close([p["logits"] for p in answer["predictions"]], expected["logits"], 1e-4)
        assert [p["top_k_ids"][0] for p in answer["predictions"]] == expected["top_k_ids"][:, 0].tolist()
        assert _close([p["top_k_scores"] for p in answer["predictions"]], expected["top_k_scores"], 1e-4)
        big = json.dumps({"instances": np.repeat(pixels, 300, axis=0).tolist()}).encode()  # 19,200 images: 3 s
        done = {}
        thread = threading.Thread(target=lambda: done.update(answer=onnx.predict(big)))
        thread.start()
        time.sleep(1.0)
        onnx.proc.send_signal(signal.SIGTERM)
        thread.join(60)
        assert done["answer"][0] == 200 and len(done["answer"][1]["predictions"]) == 64 * 300
        assert onnx.proc.wait(60) == 0
        assert "(2 worker processes)" in onnx.output() and onnx.output().count("serving resnet20_digits version") == 3
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{onnx.url}/v1/models/{MODEL}", timeout=5)
    finally:
        onnx.stop()


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path, served):
    _, base, server = served
    (tmp_path / "only_broken").mkdir()
    shutil.copytree(base / "broken", tmp_path / "only_broken" / "broken")
    cases = [([], 2, "--model_base_path is required"),
             ([f"--model_base_path={tmp_path / 'nowhere'}"], 2, "is not a folder"),
             ([f"--model_base_path={tmp_path}/only_broken/broken", f"--port={server.port}"], 2, "the port is in use"),
             ([f"--model_base_path={base}", "--port=8123", "--grpc_port=8123"], 2, "--grpc_port must differ from --port"),
             ([f"--model_base_path={base}", "--runtime=tflite"], 2, "--runtime"),
             ([f"--model_base_path={base}", "--host=no-such-host.invalid"], 2,
              "--host=no-such-host.invalid: not an address or a name this machine resolves"),
             ([f"--model_base_path={base}", "--host=203.0.113.7"], 2, "--host=203.0.113.7: cannot listen there"),
             ([f"--model_base_path={base}", f"--model_config_file={tmp_path / 'c'}"], 2, "not both"),
             ([f"--model_config_file={tmp_path / 'nowhere.config'}"], 2, "cannot read"),
             ([f"--model_config_file={tmp_path / 'garbled.config'}"], 2, "is not TF Serving's ModelServerConfig text"),
             ([f"--model_config_file={tmp_path / 'unlabelled.config'}"], 2,
              "label 'canary' names version 2, which its specific policy (1) does not serve"),
             ([f"--model_base_path={tmp_path / 'only_broken'}", f"--port={free_port()}", "--grpc_port=0",
               "--v2_grpc_port=0"], 1,
              "nothing to serve")]
    (tmp_path / "garbled.config").write_text("model_config_list { config { name: ")
    (tmp_path / "unlabelled.config").write_text(CONFIG.format(name=MODEL, base=base / MODEL).replace(
        "versions: 1 versions: 2", "versions: 1"))
    for args, code, says in cases:
        proc = run_command("serving", *args)
        lines = [l for l in proc.stderr.splitlines() if l.startswith("serve: error:")]
        assert proc.returncode == code and any(says in l for l in lines), (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    without = tmp_path / "without_openvino"  # a machine where the [serve] extra's OpenVINO is not installed
    without.mkdir()
    (without / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\n")
    proc = run_command("serving", f"--model_base_path={base}", "--runtime=openvino_int8",
                       PYTHONPATH=str(without))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
        "serve: error: --runtime=openvino_int8 needs openvino: pip install -e '.[serve]'"), proc.stderr[-2000:]


def _kserve_object(data, klass, where):
    """``data`` (a manifest's mapping) built as KServe's (or Kubernetes') Python model ``klass``,
    field by field: an unknown field, a wrong type or a missing required field fails."""
    import kserve
    import kubernetes.client

    if klass.lower().startswith("list["):  # both generators' spellings: list[X] and List[X]
        assert isinstance(data, list), f"{where}: expected a list"
        return [_kserve_object(d, klass[5:-1], f"{where}[{i}]") for i, d in enumerate(data)]
    if klass.lower().startswith(("dict(", "dict[")):  # dict(str, X) and Dict[str, X]
        assert isinstance(data, dict), f"{where}: expected a mapping"
        value = klass[5:-1].split(", ", 1)[1]
        return {k: _kserve_object(v, value, f"{where}.{k}") for k, v in data.items()}
    if klass in ("str", "int", "bool", "float", "object"):
        assert klass == "object" or isinstance(data, {"str": str, "int": int, "bool": bool, "float": float}[klass]), \
            f"{where}: expected {klass}, got {data!r}"
        return data
    cls = getattr(kserve.models, klass, None) or getattr(kubernetes.client.models, klass)
    names = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = set(data) - set(names)
    assert not unknown, f"{where}: {klass} has no field {sorted(unknown)}"
    return cls(**{names[k]: _kserve_object(v, cls.openapi_types[names[k]], f"{where}.{k}") for k, v in data.items()})


def test_the_kserve_manifests_are_kserve_objects_and_run_reszoo_serve_with_its_own_flags(tmp_path):
    import yaml

    deploy = ROOT / "deploy"
    kinds = {"InferenceService": "V1beta1InferenceService", "ServingRuntime": "V1alpha1ServingRuntime"}
    manifests = {}
    for path in sorted((deploy / "kserve").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert data["apiVersion"].startswith("serving.kserve.io/"), path
        manifests[path.name] = _kserve_object(data, kinds[data["kind"]], path.name)
    assert set(manifests) == {"tensorflow.yaml", "reszoo.yaml", "reszoo-runtime.yaml"}
    assert manifests["tensorflow.yaml"].spec.predictor.model.model_format.name == "tensorflow"
    runtime = manifests["reszoo-runtime.yaml"]
    served = manifests["reszoo.yaml"].spec.predictor.model
    assert served.runtime == runtime.metadata.name
    assert served.model_format.name in [f.name for f in runtime.spec.supported_model_formats]
    container = runtime.spec.containers[0]
    assert container.name == "kserve-container" and container.ports[0].container_port == 8080
    dockerfile = (deploy / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["reszoo-serve"]' in dockerfile
    for package in ("reszoo", "training", "serving"):  # every package setup.py installs is in the image
        assert f"COPY {package} {package}" in dockerfile and f'"{package}"' in (ROOT / "setup.py").read_text()
    command = json.loads(re.search(r"^CMD (.*)$", dockerfile, re.M).group(1))
    for args in (container.args, command):  # every flag is reszoo-serve's: it gets as far as the missing folder
        args = [a.replace("{{.Name}}", "resnet20-digits").replace("/mnt/models", str(tmp_path / "mnt")) for a in args]
        proc = run_command("serving", *args, f"--port={free_port()}", "--grpc_port=0",
                           "--v2_grpc_port=0")
        assert proc.returncode == 2 and f"serve: error: --model_base_path: '{tmp_path / 'mnt'}' is not a folder" in \
            proc.stderr, (args, proc.stderr[-1500:])


def _task_run(folder, backbone_run, num_classes, seed):
    """A run folder as ``--adapters`` leaves it (task.npz, flags.json, results.json), its task
    made here: adapters and a classifier with random weights on ``backbone_run``'s model."""
    import keras

    from reszoo import transfer

    backbone = keras.saving.load_model(backbone_run / "last.keras", compile=False)
    adapted = transfer.add_adapters(backbone, "parallel", num_classes=num_classes)
    rng = np.random.default_rng(seed)
    for layer in transfer.task_layers(adapted):
        target = getattr(layer, "adapter", layer)
        target.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in target.get_weights()])
    folder.mkdir()
    transfer.save_task(adapted, folder / "task.npz")
    (folder / "flags.json").write_text(json.dumps({"init_from": str(backbone_run), "adapters": "parallel"}))
    (folder / "results.json").write_text(json.dumps({"class_names": [f"c{i}" for i in range(num_classes)]}))
    return adapted


def test_adapter_tasks_share_one_backbone_and_answer_as_their_models(served):
    from reszoo.layers import ResidualAdapter
    from serving.servables import AdapterTask, Backbones

    tmp, _, _ = served
    adapted = {name: _task_run(tmp / name, tmp / "run", classes, seed)
               for name, classes, seed in [("task_a", 5, 1), ("task_b", 3, 2)]}
    backbones = Backbones()
    tasks = {name: AdapterTask(str(tmp / name), backbones) for name in adapted}
    convs = [[layer.conv for layer in task.model.layers if isinstance(layer, ResidualAdapter)]
             for task in tasks.values()]
    assert len(convs[0]) == 18 and all(a is b for a, b in zip(*convs))  # one backbone's convolutions in memory
    pixels = _images(4)
    server = Server(tmp, None, "--grpc_port=0", "--v2_grpc_port=0", f"--adapter_tasks={tmp / 'task_a'},{tmp / 'task_b'}",
                    ready="task_a")
    try:
        for name, model in adapted.items():
            status, answer = server.predict({"instances": pixels.tolist()}, path=f"/v1/models/{name}:predict")
            expected = np.asarray(model([pixels], training=False))  # a cloned model takes a list
            assert status == 200 and _close([p["logits"] for p in answer["predictions"]], expected)
            assert _close(tasks[name].run(pixels)["logits"], expected)
            assert answer["predictions"][0]["top_k_names"][0] == f"c{expected[0].argmax()}"
        _hostile(server, "task_a", 0)
    finally:
        server.stop()
    assert "serving task_b (adapter task on" in server.output()


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None,
                    reason="TF Serving's tensorflow_model_server is not on PATH (it is on neither PyPI nor Debian)")
def test_tf_serving_gives_the_same_answers_to_the_same_requests(served, tmp_path):
    _, base, server = served
    port = free_port()
    tfs = subprocess.Popen(["tensorflow_model_server", f"--rest_api_port={port}", "--port=0", f"--model_name={MODEL}",
                            f"--model_base_path={base / MODEL}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1/models/{MODEL}"
        deadline = time.time() + 120
        while True:
            try:
                if requests.get(url, timeout=5).ok:
                    break
            except requests.ConnectionError:
                assert time.time() < deadline
                time.sleep(0.5)
        assert requests.get(url).json()["model_version_status"][0]["state"] == "AVAILABLE"
        pixels = _images(3)
        b64 = [{"image_bytes": {"b64": base64.b64encode(_png(image)).decode()}} for image in pixels]
        for body in ({"instances": pixels.tolist()}, {"signature_name": "serving_uint8", "inputs": pixels.tolist()},
                     {"signature_name": "serving_bytes", "instances": b64}):
            theirs = requests.post(f"{url}:predict", data=json.dumps(body), timeout=60).json()
            ours = server.predict(body)[1]
            key = "predictions" if "predictions" in ours else "outputs"
            if key == "predictions":
                assert [p["top_k_names"] for p in theirs[key]] == [p["top_k_names"] for p in ours[key]]
                assert _close([p["logits"] for p in theirs[key]], [p["logits"] for p in ours[key]])
            else:
                assert theirs[key]["top_k_names"] == ours[key]["top_k_names"]
                assert _close(theirs[key]["logits"], ours[key]["logits"])
    finally:
        tfs.terminate()
        tfs.wait(30)
