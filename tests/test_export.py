"""training.export and training.predict: SavedModels that TF Serving's tools load as they are."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import reszoo
from helpers import infer

from conftest import ROOT


ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
TOL = dict(rtol=1e-5, atol=1e-5)  # exported graph vs Keras model, float32 logits

pytestmark = pytest.mark.xdist_group("export")


def cli(module, *args, timeout=300, **env):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env={**ENV, **env},
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc, prog):
    lines = [l for l in proc.stderr.splitlines() if l.strip() and not l.startswith(("WARNING", "I0000", "E0000", "W0000"))]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), proc.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished digits run, exported by train's --export switch (version 1)."""
    tmp = tmp_path_factory.mktemp("export")
    proc = cli("training.train", "--epochs=3", "--model_args=base_width=16", f"--model_dir={tmp / 'run'}",
               "--export", f"--export_dir={tmp / 'saved_models'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"exported {tmp / 'saved_models' / 'resnet20_digits' / '1'}" in proc.stdout
    import reszoo  # noqa: F401
    model = keras.saving.load_model(tmp / "run" / "last.keras", compile=False)
    return tmp, tmp / "run", tmp / "saved_models" / "resnet20_digits", model


def _digits():
    from reszoo.datasets import load_digits
    (_, _), (x_test, y_test), names = load_digits()
    return x_test[:32], y_test[:32], names


def test_export_twice_gives_versions_1_and_2_with_metadata(run):
    tmp, model_dir, base, model = run
    proc = cli("training.export", f"--model_dir={model_dir}", f"--export_dir={tmp / 'saved_models'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(str(base / "2"))
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temporary folder left either
    meta = json.loads((base / "2" / "metadata.json").read_text())
    assert meta["version"] == 2 and meta["model"] == "resnet20" and meta["dataset"] == "digits"
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta["input"] == {"height": 8, "width": 8, "channels": 1}
    assert meta["params"] == sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert meta["source"]["flags"]["model_args"] == ["base_width=16"]
    assert meta["versions"]["keras_backend"] == "tensorflow" and meta["versions"]["reszoo"]
    assert len(meta["preprocessing"]["mean"]) == 1 and meta["preprocessing"]["std"][0] > 1


def test_a_fresh_process_loads_each_version_and_matches_the_keras_model(run, tmp_path):
    tmp, _, base, model = run
    cli("training.export", f"--model_dir={tmp / 'run'}", f"--export_dir={tmp / 'saved_models'}")
    x, _, _ = _digits()
    np.save(tmp_path / "x.npy", x)
    script = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "x = np.load(sys.argv[1])\n"
        "out = {}\n"
        "for d in sys.argv[2:]:\n"
        "    sig = tf.saved_model.load(d).signatures\n"
        "    a = sig['serving_default'](images=tf.constant(x, tf.float32))\n"
        "    b = sig['serving_uint8'](images=tf.constant(x, tf.uint8))\n"
        "    out[d] = {k: v.numpy().tolist() for k, v in a.items() if k != 'top_k_names'}\n"
        "    out[d]['names'] = [[n.decode() for n in row] for row in a['top_k_names'].numpy()]\n"
        "    out[d]['uint8_logits'] = b['logits'].numpy().tolist()\n"
        "print(json.dumps(out))\n")
    versions = sorted(str(base / v) for v in os.listdir(base) if v.isdigit())
    assert len(versions) >= 2
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.npy"), *versions],
                          env=ENV, capture_output=True, text=True, timeout=300)  # no reszoo import
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = infer(model, x.astype("float32"))
    for version, out in json.loads(proc.stdout.splitlines()[-1]).items():
        np.testing.assert_allclose(out["logits"], expected, **TOL, err_msg=version)
        np.testing.assert_allclose(out["uint8_logits"], expected, **TOL)
        probabilities = np.asarray(out["probabilities"])
        np.testing.assert_allclose(probabilities, keras.ops.softmax(expected).numpy(), rtol=1e-4, atol=1e-6)
        order = np.argsort(-expected, axis=1)[:, :5]
        assert (np.asarray(out["top_k_ids"]) == order).all()
        assert out["names"] == [[str(i) for i in row] for row in order]
        np.testing.assert_allclose(out["top_k_scores"], np.take_along_axis(probabilities, order, 1), rtol=1e-6)


def test_saved_model_cli_lists_the_signatures_with_names_dtypes_and_shapes(run):
    _, _, base, _ = run
    proc = subprocess.run(["saved_model_cli", "show", "--all", "--dir", str(base / "1")], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    blocks = {b.split("']")[0]: b for b in text.split("signature_def['")[1:]}
    assert {"serving_default", "serving_uint8", "serving_bytes"} <= set(blocks)
    for name, dtype, shape in [("serving_default", "DT_FLOAT", "(-1, 8, 8, 1)"),
                               ("serving_uint8", "DT_UINT8", "(-1, 8, 8, 1)")]:
        assert "inputs['images']" in blocks[name] and f"dtype: {dtype}\n        shape: {shape}" in blocks[name]
    assert "inputs['image_bytes']" in blocks["serving_bytes"] and "DT_STRING\n        shape: (-1)" in blocks["serving_bytes"]
    for block in (blocks[n] for n in ("serving_default", "serving_uint8", "serving_bytes")):
        for output, dtype, shape in [("logits", "DT_FLOAT", "(-1, 10)"), ("probabilities", "DT_FLOAT", "(-1, 10)"),
                                     ("top_k_ids", "DT_INT32", "(-1, 5)"), ("top_k_scores", "DT_FLOAT", "(-1, 5)"),
                                     ("top_k_names", "DT_STRING", "(-1, 5)")]:
            assert f"outputs['{output}'] tensor_info:\n        dtype: {dtype}\n        shape: {shape}" in block
        assert "Method name is: tensorflow/serving/predict" in block


def test_the_warm_up_requests_are_tf_serving_s_prediction_logs_that_each_signature_takes(run):
    """assets.extra/tf_serving_warmup_requests: TFRecords of TF Serving's PredictionLog, one
    predict request per signature, each answered by the SavedModel's signature of its name (as
    TF Serving replays them before the version is AVAILABLE)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    _, _, base, _ = run
    path = base / "1" / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path))]
    requests = [log.predict_log.request for log in logs]
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "serving_uint8", "serving_bytes"]
    signatures = tf.saved_model.load(str(base / "1")).signatures
    answers = []
    for request in requests:
        (name, tensor), = request.inputs.items()
        answers.append(signatures[request.model_spec.signature_name](**{name: tf.constant(tf.make_ndarray(tensor))}))
        assert answers[-1]["logits"].shape == (1, 10)
    for answer in answers[1:]:  # the same grey image three ways
        np.testing.assert_allclose(answer["logits"], answers[0]["logits"], rtol=1e-5, atol=1e-5)


def _png(image):
    import tensorflow as tf
    return tf.io.encode_png(tf.constant(image, tf.uint8)).numpy()


def test_bytes_signature_on_a_png_equals_the_pixel_signature(run):
    import tensorflow as tf

    _, _, base, _ = run
    sig = tf.saved_model.load(str(base / "1")).signatures
    x, _, _ = _digits()
    pngs = [_png(image) for image in x[:4]]
    from_bytes = sig["serving_bytes"](image_bytes=tf.constant(pngs))["logits"].numpy()
    decoded = np.stack([tf.io.decode_png(p).numpy() for p in pngs]).astype("float32")
    from_pixels = sig["serving_default"](images=tf.constant(decoded))["logits"].numpy()
    np.testing.assert_array_equal(from_bytes, from_pixels)
    # A larger RGB PNG is converted to grey and resized to 8x8 inside, as the pixel path would be.
    big = np.repeat(np.kron(x[0], np.ones((2, 2, 1))), 3, axis=2).astype("uint8")
    got = sig["serving_bytes"](image_bytes=tf.constant([_png(big)]))["logits"].numpy()
    grey = tf.image.rgb_to_grayscale(tf.constant(big))
    want = sig["serving_default"](images=tf.image.resize(tf.cast(grey, tf.float32), (8, 8))[None])["logits"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_predict_prints_the_top_classes_of_an_image(run, tmp_path):
    import tensorflow as tf

    _, _, base, _ = run
    x, _, _ = _digits()
    (tmp_path / "digit.png").write_bytes(_png(x[0]))
    proc = cli("training.predict", f"--saved_model={base}", tmp_path / "digit.png")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == str(tmp_path / "digit.png") and len(lines) == 6
    sig = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    top = sig(images=tf.constant(x[:1], tf.float32))
    assert lines[1].split()[:2] == ["1.", top["top_k_names"].numpy()[0][0].decode()]
    assert float(lines[1].split()[2]) == pytest.approx(float(top["top_k_scores"].numpy()[0][0]), abs=1e-4)
    (tmp_path / "notes.png").write_text("not an image")
    proc = cli("training.predict", f"--saved_model={base}", tmp_path / "notes.png")
    line = _one_error_line(proc, "predict")
    assert proc.returncode == 2 and "notes.png cannot be decoded as an image (Unknown image file format" in line
    proc = cli("training.predict", f"--saved_model={tmp_path}", tmp_path / "digit.png")
    assert proc.returncode == 2 and "neither a SavedModel" in _one_error_line(proc, "predict")


def test_predict_reads_cmyk_jpeg_and_webp_into_a_grey_model(run, tmp_path):
    """TensorFlow's decoders refuse a CMYK JPEG or a WebP to grey; the export decodes each in
    its own colour space and converts, as training does."""
    from PIL import Image

    _, _, base, _ = run
    x, _, _ = _digits()
    rgb = Image.fromarray(np.repeat(x[0] * 15, 3, axis=2).astype("uint8"))
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgb.save(tmp_path / "digit.webp", lossless=True)
    rgb.save(tmp_path / "digit.png")
    proc = cli("training.predict", f"--saved_model={base}", "--top=1", *(tmp_path / n for n in ("cmyk.jpg", "digit.webp", "digit.png")))
    assert proc.returncode == 0, proc.stderr[-2000:]
    tops = [l.split()[1] for l in proc.stdout.splitlines() if l.startswith("  1.")]
    assert len(tops) == 3 and tops[1] == tops[2]  # lossless WebP: the same pixels as the PNG


def test_predict_on_a_damaged_export_says_what_is_wrong(run, tmp_path):
    import shutil

    _, _, base, _ = run
    x, _, _ = _digits()
    (tmp_path / "digit.png").write_bytes(_png(x[0]))
    cases = {"no_variables": "has no variables/", "truncated": "cannot be loaded, its files are damaged",
             "bad_pb": "cannot be loaded, its files are damaged"}
    for name, message in cases.items():
        copy = tmp_path / name / "1"
        shutil.copytree(base / "1", copy)
        if name == "no_variables":
            shutil.rmtree(copy / "variables")
        elif name == "truncated":
            data = next((copy / "variables").glob("variables.data-*"))
            data.write_bytes(data.read_bytes()[:100])
        else:
            (copy / "saved_model.pb").write_bytes(b"\x08\x01garbage")
        proc = cli("training.predict", f"--saved_model={copy.parent}", tmp_path / "digit.png")
        assert proc.returncode == 2, (name, proc.stderr[-1500:])
        line = _one_error_line(proc, "predict")
        assert message in line and "export it again" in line, (name, line)
        assert "Traceback" not in proc.stderr


def test_onnx_openvino_and_tflite_are_verified_against_the_keras_model(run, tmp_path):
    import onnxruntime as ort  # in the dev extras: a missing package fails here, never skips
    import openvino as ov
    import tensorflow as tf

    _, model_dir, _, model = run
    proc = cli("training.export", f"--model_dir={model_dir}", f"--export_dir={tmp_path}",
               "--formats=saved_model,openvino,tflite")
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = tmp_path / "resnet20_digits" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["formats"] == ["saved_model", "onnx", "openvino", "tflite"]  # OpenVINO's IR is made from ONNX
    assert metadata["runtimes"]["openvino_bf16"] == {"file": "model.xml", "precision": "bfloat16"}
    assert set(metadata["runtimes"]) == {"saved_model", "onnx", "openvino", "openvino_bf16"}
    x, _, _ = _digits()
    expected = infer(model, x.astype("float32"))
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"images": x.astype("float32")})[0], expected, rtol=1e-4, atol=1e-4)
    # f32 asked for: on a CPU with AMX, OpenVINO's default would run this float32 IR in bf16.
    compiled = ov.Core().compile_model(str(version / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled(x.astype("float32"))[0], expected, rtol=1e-4, atol=1e-4)
    runner = tf.lite.Interpreter(model_path=str(version / "model.tflite")).get_signature_runner("serve")
    (name,) = runner.get_input_details()
    np.testing.assert_allclose(next(iter(runner(**{name: x.astype("float32")}).values())), expected, rtol=1e-4, atol=1e-4)


def test_int8_is_written_with_its_measured_accuracy_and_refused_where_it_loses_too_much(run, tmp_path, monkeypatch):
    """--quantize=int8: model_int8.onnx (ONNX Runtime), model_int8.xml (OpenVINO) and
    model_int8.tflite (LiteRT, int8 but its classifier) beside the float32 files, each one's
    top-1 and agreement on the run's test split printed and in the
    metadata (the float32 top-1 is training's own), at least 99% of answers as float32's; a
    calibration on black images wrecks them, and the export keeps everything but those files,
    saying so in one line with exit 2. reszoo-serve's int8 runtimes answer with them, and
    reszoo-validate measures them."""
    import onnxruntime as ort
    import openvino as ov
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from reszoo.datasets import load_digits
    from serving import servables

    _, model_dir, _, _ = run
    proc = cli("training.export", f"--model_dir={model_dir}", f"--export_dir={tmp_path}", "--quantize=int8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = tmp_path / "resnet20_digits" / "1"
    found = json.loads((version / "metadata.json").read_text())
    assert found["formats"] == ["saved_model", "onnx", "openvino", "onnx_int8", "openvino_int8", "litert_int8"]
    assert {name: r["precision"] for name, r in found["runtimes"].items()} == {
        "saved_model": "float32", "onnx": "float32", "onnx_int8": "int8", "openvino": "float32",
        "openvino_bf16": "bfloat16", "openvino_int8": "int8", "litert_int8": "int8"}
    reported = json.loads((model_dir / "results.json").read_text())["test_accuracy"]
    (_, _), (x, y), _ = load_digits()
    x = x.astype("float32")
    onnx_int8 = ort.InferenceSession(str(version / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    openvino_int8 = ov.Core().compile_model(str(version / "model_int8.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    litert = Interpreter(model_path=str(version / "model_int8.tflite"))
    litert.resize_tensor_input(litert.get_input_details()[0]["index"], x.shape)
    litert.allocate_tensors()
    litert.set_tensor(litert.get_input_details()[0]["index"], x)
    litert.invoke()
    edges = {litert.get_input_details()[0]["name"], litert.get_output_details()[0]["name"], "tfl.dequantize"}
    floats = {d["name"] for d in litert.get_tensor_details() if d["dtype"] == np.float32} - edges
    assert floats and all(re.search(r"/fc(_\d+)?/", name) for name in floats), floats  # the classifier alone
    answers = {"onnx_int8": onnx_int8.run(["logits"], {"images": x})[0], "openvino_int8": openvino_int8(x)[0],
               "litert_int8": litert.get_tensor(litert.get_output_details()[0]["index"])}
    assert set(found["int8"]) == set(answers)
    for name, int8 in found["int8"].items():
        assert int8["written"] is True and int8["file"] == found["runtimes"][name]["file"]
        assert (int8["calibration_images"], int8["validation_images"]) == (256, 359)
        assert int8["top1_float32"] == pytest.approx(100 * reported, abs=1e-3)
        assert int8["top1_int8"] >= int8["top1_float32"] - 1.0 and int8["top1_agreement"] >= 99, (name, int8)
        assert 100 * np.mean(answers[name].argmax(1) == y) == pytest.approx(int8["top1_int8"], abs=1e-3)
        assert int8["images_lost"] - int8["images_gained"] == round(3.59 * (int8["top1_float32"] - int8["top1_int8"]))
        assert int8["images_lost"] + int8["images_gained"] <= round(3.59 * (100 - int8["top1_agreement"]))
        assert (f"export: {int8['file']}: int8 top-1 {int8['top1_int8']:.2f}% against float32's "
                f"{int8['top1_float32']:.2f}% on 359 held-out images (the test split of digits)") in proc.stdout
        served = servables.Version(str(version), name)
        np.testing.assert_allclose(served.run(x[:4])["logits"], answers[name][:4], rtol=1e-4, atol=1e-4)
    assert os.path.getsize(version / "model_int8.onnx") < 0.4 * os.path.getsize(version / "model.onnx")
    assert os.path.getsize(version / "model_int8.bin") < 0.4 * os.path.getsize(version / "model.bin")
    from training import validation  # reszoo-validate --runtime=openvino_int8, in this process

    row = validation.run(validation.load_source(str(version), "last", None, runtime="openvino_int8"),
                       results_csv=str(tmp_path / "v.csv"), confusion="", say=lambda *_: None)
    assert row["source"] == f"{version} (openvino_int8)" and float(row["top1"]) == pytest.approx(
        found["int8"]["openvino_int8"]["top1_int8"], abs=1e-3)
    damaged = tmp_path / "damaged" / "1"
    shutil.copytree(version, damaged)
    for name, file in [("onnx_int8", "model_int8.onnx"), ("openvino_int8", "model_int8.bin")]:
        (damaged / file).write_bytes((damaged / file).read_bytes()[:1000])
        with pytest.raises(ValueError, match="cannot be loaded, its files are damaged"):
            servables.Version(str(damaged), name)

    black = tmp_path / "black"
    for label in range(10):
        (black / str(label)).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.zeros((8, 8), "uint8"), "L").save(black / str(label) / f"{i}.png")
    from training import exporter, quantize
    from training.common import engines

    opened = engines.open_runtime

    def cannot_compile(runtime, folder):  # as OpenVINO refused a graph with -inf in it
        if runtime == "openvino_int8":
            raise RuntimeError("Exception from src/plugin.cpp:59:\ncould not append an elementwise post-op\n")
        return opened(runtime, folder)

    monkeypatch.setattr(quantize.engines, "open_runtime", cannot_compile)
    with pytest.raises(exporter.ExportError) as refused:  # main() prints it as one line and exits with its code
        exporter.export(str(model_dir), str(tmp_path), int8=exporter.Int8Options(calibration_data=str(black)))
    monkeypatch.undo()
    version = tmp_path / "resnet20_digits" / "2"
    assert refused.value.code == 2 and "over --max_accuracy_drop=1, not written" in str(refused.value)
    assert ("model_int8.xml: openvino cannot run it (could not append an elementwise post-op), not written"
            in str(refused.value)) and "\n" not in str(refused.value)
    assert str(refused.value).endswith("; the float32 export is in " + str(version))
    found = json.loads((version / "metadata.json").read_text())
    assert found["formats"] == ["saved_model", "onnx", "openvino"]
    for name in ("onnx_int8", "openvino_int8", "litert_int8"):
        assert found["int8"][name]["written"] is False and found["int8"][name]["calibration"] == str(black)
        assert found["int8"][name]["calibration_images"] == 30 and name not in found["runtimes"]
    assert sorted(p.name for p in version.iterdir()) == ["assets", "assets.extra", "fingerprint.pb", "metadata.json",
                                                         "model.bin", "model.onnx", "model.xml", "saved_model.pb",
                                                         "variables"]
    with pytest.raises(ValueError, match=r"has no model_int8.onnx \(export it with --quantize=int8"):
        servables.Version(str(version), "onnx_int8")
    with pytest.raises(ValueError, match=r"has no model_int8.xml \(export it with --quantize=int8"):
        servables.Version(str(version), "openvino_int8")


def test_a_keras_file_exports_as_a_run_does(run, tmp_path):
    _, model_dir, _, model = run
    proc = cli("training.export", f"--model_file={model_dir / 'last.keras'}", f"--export_dir={tmp_path}",
               "--name=digits_file")
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = tmp_path / "digits_file" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["source"]["file"] == str(model_dir / "last.keras") and metadata["model"] == model.name
    assert metadata["class_names"] == [str(i) for i in range(10)] and metadata["eval_transform"]["crop_pct"] is None
    x, _, _ = _digits()
    import tensorflow as tf

    served = tf.saved_model.load(str(version)).signatures["serving_default"](images=tf.constant(x, tf.float32))
    np.testing.assert_allclose(served["logits"], infer(model, x.astype("float32")), **TOL)


def test_a_resnext_exports_to_onnx_and_openvino_with_tensorflow_s_own_grouped_convolutions(tmp_path):
    """Keras' TensorFlow backend runs a grouped convolution in an XLA-compiled tf.function, which
    tf2onnx left as an op ONNX Runtime refused; the export traces TensorFlow's grouped Conv2D."""
    import onnxruntime as ort

    model = reszoo.create_model("resnext50_32x4d", input_shape=(32, 32, 3), num_classes=10, layers=(1, 1, 1, 1),
                                block="bottleneck", width_per_group=1)
    model.save(tmp_path / "resnext.keras")
    proc = cli("training.export", f"--model_file={tmp_path / 'resnext.keras'}", f"--export_dir={tmp_path}",
               "--formats=onnx,openvino")
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = tmp_path / "resnext" / "1"
    assert json.loads((version / "metadata.json").read_text())["formats"] == ["saved_model", "onnx", "openvino"]
    assert b"_XlaMustCompile" not in (version / "saved_model.pb").read_bytes()
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"images": x})[0], infer(model, x), rtol=1e-4, atol=1e-4)


TIMM_TRANSFORM = r'''
import sys
import numpy as np, timm
from PIL import Image
from timm.data import create_transform, resolve_data_config
config = resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(sys.argv[1]).to_dict())
x = create_transform(**config)(Image.open(sys.argv[2]).convert("RGB")).numpy()
mean, std = (np.asarray(config[k])[:, None, None] for k in ("mean", "std"))
np.save(sys.argv[3], ((x * std + mean) * 255).transpose(1, 2, 0))
'''


def test_published_weights_export_with_their_eval_transform_and_imagenet_s_names(tmp_path):
    """--weights=timm/ARCH.TAG, from a Hugging Face cache laid out as the hub's client lays it
    out: serving_bytes applies timm's eval transform (the shorter side to size / crop_pct,
    bicubic, the central crop; within a grey level of timm's own transform on average, timm in
    its own process), top_k_names are ImageNet's words (in the order of keras.applications'
    index, as keras-hub ships it), and the metadata carries the card."""
    import tensorflow as tf
    from keras_hub.src.utils.imagenet.imagenet_utils import IMAGENET_NAMES
    from PIL import Image

    from reszoo import datasets, hub
    from serving import servables
    from training import predict
    from training.common.images import EvalTransform, serving_image

    synsets, names = datasets.imagenet_classes()
    assert synsets == [IMAGENET_NAMES[i][0] for i in range(1000)] and names[:3] == ["tench", "goldfish",
                                                                                      "great white shark"]
    tag = "resnet18.a1_in1k"
    repo = tmp_path / "hub" / f"models--timm--{tag}"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    hub.save_timm(reszoo.create_model("resnet18", padding="symmetric", preprocessing="torch"),
                  str(repo / "snapshots" / ("0" * 40)))
    proc = cli("training.export", f"--weights=timm/{tag}", f"--export_dir={tmp_path / 'out'}", HF_HUB_OFFLINE="1",
               HF_HUB_CACHE=str(tmp_path / "hub"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = tmp_path / "out" / "resnet18_a1_in1k" / "1"
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["class_names"] == names and metadata["dataset"] == "imagenet-1k"
    assert metadata["eval_transform"] == {"crop_pct": 0.95, "interpolation": "bicubic"}
    assert metadata["source"]["weights"] == f"timm/{tag}" and metadata["source"]["card"]["license"] == "apache-2.0"

    rows, columns = np.mgrid[0:300, 0:400]
    image = np.stack([(np.sin(columns / 17) + 1) * 120, (np.cos(rows / 23) + 1) * 120, (columns + rows) / 3],
                     -1).astype("uint8")
    Image.fromarray(image).save(tmp_path / "image.png")
    data = (tmp_path / "image.png").read_bytes()
    pixels = serving_image(tf.constant(data), (224, 224, 3), EvalTransform(0.95, "bicubic")).numpy()
    subprocess.run([sys.executable, "-c", TIMM_TRANSFORM, tag, str(tmp_path / "image.png"), str(tmp_path / "timm.npy")],
                   check=True, capture_output=True, timeout=300)
    assert np.abs(pixels - np.load(tmp_path / "timm.npy")).mean() < 1.0
    served = tf.saved_model.load(str(version)).signatures
    by_bytes = served["serving_bytes"](image_bytes=tf.constant([data]))
    by_pixels = served["serving_default"](images=tf.constant(pixels[None]))
    np.testing.assert_allclose(by_bytes["logits"], by_pixels["logits"], rtol=1e-5, atol=1e-5)
    assert [n.decode() for n in by_bytes["top_k_names"].numpy()[0]] == [names[i] for i in by_bytes["top_k_ids"][0]]
    np.testing.assert_array_equal(servables.Version(str(version), "saved_model").decode([data])[0], pixels)
    (_, top), = predict.predict(str(version), [str(tmp_path / "image.png")])  # what training.predict prints
    assert top[0][0] == by_bytes["top_k_names"].numpy()[0][0].decode() in names


def test_a_mismatch_is_an_error_and_writes_nothing(run, tmp_path, monkeypatch):
    from training import exporter

    _, model_dir, _, _ = run
    monkeypatch.setattr(exporter, "TOLERANCE", dict(rtol=0.0, atol=-1.0))  # nothing can pass
    with pytest.raises(exporter.ExportError, match="does not reproduce the Keras model"):
        exporter.export(str(model_dir), str(tmp_path))
    assert os.listdir(tmp_path / "resnet20_digits") == []


def test_a_file_its_runtime_cannot_load_is_one_line_and_writes_nothing(run, tmp_path, monkeypatch):
    from training import exporter
    from training.common import engines

    def refuse(name, folder):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : Load model failed\nmore detail")

    _, model_dir, _, _ = run
    monkeypatch.setattr(engines, "open_runtime", refuse)
    with pytest.raises(exporter.ExportError, match=r"^model.onnx: its runtime cannot run it \(\[ONNXRuntimeError\] : 10 : "
                                                 r"INVALID_GRAPH : Load model failed\); nothing was written$"):
        exporter.export(str(model_dir), str(tmp_path), formats=("saved_model", "onnx"))
    assert os.listdir(tmp_path / "resnet20_digits") == []


def test_export_from_the_jax_backend(run, tmp_path):
    import tensorflow as tf

    _, model_dir, _, model = run
    proc = cli("training.export", f"--model_dir={model_dir}", f"--export_dir={tmp_path}", KERAS_BACKEND="jax")
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = tmp_path / "resnet20_digits" / "1"
    assert json.loads((version / "metadata.json").read_text())["versions"]["keras_backend"] == "jax"
    x, _, _ = _digits()
    got = tf.saved_model.load(str(version)).signatures["serving_default"](images=tf.constant(x, tf.float32))
    np.testing.assert_allclose(got["logits"].numpy(), infer(model, x.astype("float32")), rtol=1e-4, atol=1e-4)
    proc = cli("training.export", f"--model_dir={model_dir}", f"--export_dir={tmp_path}", "--formats=onnx",
               KERAS_BACKEND="jax")
    assert proc.returncode == 2 and "KERAS_BACKEND=tensorflow" in _one_error_line(proc, "export")


def test_an_export_killed_midway_leaves_no_version_behind(run, tmp_path):
    _, model_dir, _, _ = run
    base = tmp_path / "resnet20_digits"
    proc = subprocess.Popen([sys.executable, "-m", "training.export", f"--model_dir={model_dir}",
                             f"--export_dir={tmp_path}", "--formats=saved_model,tflite"],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (base.exists() and any(p.name.startswith(".tmp-") for p in base.iterdir())):
        assert proc.poll() is None and time.time() < deadline, "export ended before it was killed"
        time.sleep(0.01)
    time.sleep(0.5)  # midway: the SavedModel is being written
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in base.iterdir() if p.name.isdigit()]
    # The next export takes version 1 and clears the dead export's temporary folder.
    again = cli("training.export", f"--model_dir={model_dir}", f"--export_dir={tmp_path}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted(p.name for p in base.iterdir()) == ["1"]


def test_bad_requests_give_one_line(run, tmp_path, usage_errors):
    _, model_dir, base, _ = run
    cases = [
        ((f"--model_dir={tmp_path / 'missing'}",), 2, "is not a training run folder"),
        (("--export_dir=x",), 2, "give --model_dir (a training run folder), --weights (published weights) or "
                                 "--model_file"),
        ((f"--model_dir={model_dir}", "--weights=timm/resnet18.a1_in1k"), 2, "give one of --model_dir, --weights"),
        (("--weights=imagenet",), 2, "keras.applications' weights: name the model, one of densenet121"),
        ((f"--model_file={tmp_path / 'none.keras'}",), 2, "no such file"),
        ((f"--model_dir={model_dir}", "--formats=pmml"), 2, "saved_model, onnx, openvino, tflite"),
        ((f"--model_dir={model_dir}", f"--export_dir={base.parent}", "--version=1"), 2, "never overwritten"),
        ((f"--model_dir={model_dir}", "--checkpoint=final"), 2, "checkpoint"),
    ]
    (tmp_path / "a_file").write_text("")
    cases.append(((f"--model_dir={model_dir}", f"--export_dir={tmp_path / 'a_file'}"), 2, "cannot create"))
    (tmp_path / "unfinished").mkdir()
    cases.append(((f"--model_dir={tmp_path / 'unfinished'}",), 2, "has not finished"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "last.keras").write_bytes(b"PK not a zip")
    cases.append(((f"--model_dir={tmp_path / 'corrupt'}", f"--export_dir={tmp_path}"), 1,
                  "is not a .keras file, or is truncated"))
    cases.append(((f"--model_dir={model_dir}", f"--export_dir={tmp_path}", "--quantize=int8",
                   f"--calibration_data={tmp_path / 'none'}"), 2, "is not a folder (of class sub-folders of images)"))
    cases.append(((f"--model_dir={model_dir}", f"--export_dir={tmp_path}", "--quantize=int8",
                   f"--validation_data={tmp_path / 'unfinished'}"), 2, "has no class sub-folders"))
    cases.append(((f"--model_dir={model_dir}", "--quantize=int8", "--max_accuracy_drop=-1"), 2,
                  "--max_accuracy_drop"))
    said = usage_errors([(args, {}) for args, _, _ in cases], command="training.export")
    for (args, code, message), (got, stderr) in zip(cases, said):
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert got == code and len(lines) == 1 and lines[0].startswith("export: error:"), (args, stderr[-1500:])
        assert message in lines[0] and "Traceback" not in stderr, args
    assert sorted(os.listdir(base))[:1] == ["1"]  # version 1 untouched by the refused export
    without = tmp_path / "without_openvino"  # a machine where the [deploy] extra is not installed
    without.mkdir()
    (without / "sitecustomize.py").write_text("import sys\nsys.modules['openvino'] = None\n")
    for args, says in [(["--formats=openvino"], "--formats=openvino needs openvino: pip install -e '.[deploy]'"),
                       (["--quantize=int8"], "--quantize=int8 needs openvino: pip install -e '.[deploy]'")]:
        proc = cli("training.export", f"--model_dir={model_dir}", f"--export_dir={tmp_path}", *args,
                   PYTHONPATH=str(without))
        assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == f"export: error: {says}", args


def test_metadata_describes_either_kind_of_preprocessing_layer():
    from training import exporter

    inputs = keras.Input((32, 32, 3))
    keras_style = keras.Model(inputs, reszoo.layers.ImagePreprocess("caffe", name="preprocess")(inputs))
    assert "mode 'caffe'" in exporter._preprocessing(keras_style)["kind"]
    norm = keras.layers.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 9.0, 16.0], name="preprocess")
    standardised = exporter._preprocessing(keras.Model(inputs, norm(inputs)))
    assert standardised["mean"] == [1.0, 2.0, 3.0] and standardised["std"] == [2.0, 3.0, 4.0]


def test_two_exports_at_once_the_later_rename_says_the_version_appeared(run, tmp_path, monkeypatch):
    """Linux refuses to rename a folder onto a non-empty one with ENOTEMPTY (not EEXIST)."""
    from training import exporter

    _, model_dir, _, _ = run
    real_rename = os.rename

    def rival_first(src, dst):
        os.makedirs(dst)
        (pathlib.Path(dst) / "saved_model.pb").write_bytes(b"the rival's export")
        real_rename(src, dst)

    monkeypatch.setattr(exporter.os, "rename", rival_first)
    with pytest.raises(exporter.ExportError, match="appeared during the export; not overwritten") as info:
        exporter.export(str(model_dir), str(tmp_path))
    assert info.value.code == 2
    assert os.listdir(tmp_path / "resnet20_digits") == ["1"]
    assert (tmp_path / "resnet20_digits" / "1" / "saved_model.pb").read_bytes() == b"the rival's export"


def test_checkpoint_best_of_a_run_that_never_validated_exports_its_final_model(run, tmp_path):
    import shutil

    _, model_dir, _, _ = run
    never = tmp_path / "never_validated"
    shutil.copytree(model_dir, never)
    (never / "best.keras").unlink(missing_ok=True)
    proc = cli("training.export", f"--model_dir={never}", "--checkpoint=best", f"--export_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"export: note: {never} has no best.keras" in proc.stderr and "last.keras" in proc.stderr
    assert (tmp_path / "out" / "resnet20_digits" / "1" / "saved_model.pb").exists()


def test_predict_without_saved_model_says_the_flag_is_required(tmp_path):
    proc = cli("training.predict", tmp_path / "digit.png")
    assert proc.returncode == 2
    assert "--saved_model is required" in _one_error_line(proc, "predict")
