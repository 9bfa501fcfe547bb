"""reszoo.weights: keras.applications weights into reszoo's variant="keras" models."""

import json
import os

import h5py
import keras
import numpy as np
import pytest

import reszoo
from helpers import infer
from reszoo import weights

SHAPE = (64, 64, 3)
PREPROCESS = {"caffe": keras.applications.resnet.preprocess_input,
              "tf": keras.applications.resnet_v2.preprocess_input,
              "torch": keras.applications.densenet.preprocess_input}


def _randomize(model, seed=0):
    """Random weights with well-scaled activations: He-scaled kernels, BN statistics away
    from their initial values (so a BN mapped to the wrong place shows)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith("kernel"):
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[:-1])), shape)
        elif v.path.endswith(("gamma", "moving_variance")):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0, 0.1, shape)
        v.assign(value.astype("float32"))


def _save_like_the_downloads(model, path):
    """keras.applications' published files are Keras 2 style HDF5 weights."""
    from keras.src.legacy.saving import legacy_h5_format
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(a)))


@pytest.mark.xdist_group("keras_applications")
@pytest.mark.parametrize("architecture", list(weights.KERAS_APPLICATIONS))
def test_keras_applications_weights_give_the_same_outputs(architecture, tmp_path):
    source = getattr(keras.applications, architecture)(weights=None, input_shape=SHAPE, classifier_activation=None)
    _randomize(source)
    path = tmp_path / f"{architecture}.h5"
    _save_like_the_downloads(source, path)
    model = weights.keras_applications_model(architecture, str(path), input_shape=SHAPE)
    assert model.count_params() == source.count_params()
    assert weights.architecture_of(model) == architecture
    x = np.random.default_rng(1).uniform(0, 255, (2, *SHAPE)).astype("float32")
    mode = weights.KERAS_APPLICATIONS[architecture][1]
    expected = infer(source, PREPROCESS[mode](x.copy()))
    got = infer(model, x)  # raw pixels: the preprocessing is the model's first layer
    assert _relative_error(expected, got) < 1e-5


def test_notop_files_model_objects_and_keras3_weight_files_load(tmp_path):
    source = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=SHAPE)
    _randomize(source, seed=2)
    _save_like_the_downloads(source, tmp_path / "notop.h5")
    source.save_weights(tmp_path / "notop.weights.h5")
    x = np.random.default_rng(3).uniform(0, 255, (2, *SHAPE)).astype("float32")
    expected = infer(source, PREPROCESS["torch"](x.copy()))
    for given in (str(tmp_path / "notop.h5"), str(tmp_path / "notop.weights.h5"), source):
        model = weights.keras_applications_model("DenseNet121", given, input_shape=SHAPE, include_top=False)
        assert _relative_error(expected, infer(model, x)) < 1e-5
    # A file without a head fills everything but the classifier, which stays new (timm's way).
    model = reszoo.create_model("densenet121", input_shape=SHAPE, num_classes=7, variant="keras")
    report = weights.load_weights(model, str(tmp_path / "notop.h5"))
    assert report.replaced == ("fc: 7 classes",) and report.loaded == len(source.layers) - sum(
        not l.weights for l in source.layers)
    np.testing.assert_array_equal(model.get_layer("conv5_block16_2_conv").get_weights()[0],
                                  source.get_layer("conv5_block16_2_conv").get_weights()[0])


def test_a_top_file_loads_into_other_classes_and_any_input_size(tmp_path):
    """It used to fail with "does not hold ResNet50 weights", which was untrue. The build skips
    drawing the kernels it is about to overwrite (``factory.weights_to_come``), yet its config
    keeps He-normal and the new 7-class classifier is drawn as usual."""
    source = keras.applications.ResNet50(weights=None, classifier_activation=None)
    _randomize(source, seed=5)
    _save_like_the_downloads(source, tmp_path / "resnet50.h5")
    model = reszoo.create_model("resnet50", weights=str(tmp_path / "resnet50.h5"), num_classes=7,
                                input_shape=(None, None, 3))
    assert model.get_layer("preprocess").mode == "caffe"  # the file chose the keras variant
    assert model.output_shape == (None, 7)
    assert model.get_layer("conv1_conv").get_config()["kernel_initializer"]["class_name"] == "HeNormal"
    classifier = model.get_layer("fc").get_weights()[0]
    assert 0.01 < classifier.std() < 0.1  # Glorot-uniform for 2048 -> 7
    for name in ("conv1_conv", "conv5_block3_3_conv", "conv5_block3_3_bn"):
        for a, b in zip(model.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(6).uniform(0, 255, (2, *SHAPE)).astype("float32")
    features = infer(keras.Model(model.inputs, model.get_layer("avg_pool").output), x)
    at_size = keras.applications.ResNet50(weights=None, input_shape=SHAPE, include_top=False, pooling="avg")
    for layer in at_size.layers[1:]:
        layer.set_weights(source.get_layer(layer.name).get_weights())
    assert _relative_error(infer(at_size, PREPROCESS["caffe"](x.copy())), features) < 1e-5
    same = reszoo.create_model("resnet50", weights=str(tmp_path / "resnet50.h5"))
    np.testing.assert_array_equal(same.get_layer("fc").get_weights()[0], source.get_layer("predictions").get_weights()[0])


def test_wrong_files_and_models_give_one_clear_error(tmp_path):
    resnet = keras.applications.ResNet50(weights=None, input_shape=SHAPE)
    _save_like_the_downloads(resnet, tmp_path / "resnet50.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    cases = [
        (lambda: weights.keras_applications_model("DenseNet121", str(tmp_path / "resnet50.h5"), input_shape=SHAPE),
         "does not hold DenseNet121 weights"),
        (lambda: weights.keras_applications_model("ResNet50", str(tmp_path / "junk.h5"), input_shape=SHAPE),
         "does not hold ResNet50 weights"),
        (lambda: weights.keras_applications_model("ResNet50", str(tmp_path / "missing.h5")), "no such weights file"),
        (lambda: weights.keras_applications_model("ResNet18", None), "unknown keras.applications model"),
        # The paper variant has no conv biases: the first mismatch is named.
        (lambda: weights.load_keras_applications(reszoo.create_model("resnet50", input_shape=SHAPE), resnet),
         "conv1_conv"),
        # DenseNet's paper variant has the same shapes but pads its stem differently.
        (lambda: weights.load_keras_applications(
            reszoo.create_model("densenet121", input_shape=SHAPE),
            keras.applications.DenseNet121(weights=None, input_shape=SHAPE)), "padding"),
        (lambda: weights.load_keras_applications(reszoo.create_model("resnet20"), resnet), "no keras.applications counterpart"),
    ]
    for call, message in cases:
        with pytest.raises(weights.WeightsError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocess_layer_equals_keras_preprocess_input(mode):
    x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    layer = reszoo.layers.ImagePreprocess(mode)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), PREPROCESS[mode](x.copy()), rtol=1e-6, atol=1e-5)
    restored = reszoo.layers.ImagePreprocess.from_config(layer.get_config())
    assert restored.mode == mode


def test_keras_variant_only_changes_what_keras_applications_changes():
    paper, mirror = reszoo.create_model("resnet50"), reszoo.create_model("resnet50", variant="keras")
    assert reszoo.count_params(paper) == 25_557_032  # He et al. 2015 / torchvision
    assert reszoo.count_params(mirror) == 25_583_592  # + conv biases (keras.applications ResNet50)
    assert mirror.get_layer("conv2_block1_1_conv").strides == (1, 1)
    assert mirror.get_layer("conv3_block1_1_conv").strides == (2, 2)  # v1: stride on the first 1x1
    assert paper.get_layer("conv3_block1_2_conv").strides == (2, 2)   # v1.5: stride on the 3x3
    assert mirror.get_layer("conv1_bn").epsilon == pytest.approx(1.001e-5)
    assert mirror.layers[1].name == "preprocess" and mirror.layers[1].mode == "caffe"
    assert "preprocess" not in [l.name for l in paper.layers]
    with pytest.raises(ValueError, match="variant='keras' needs stem='imagenet'"):
        reszoo.create_model("resnet56", variant="keras")


@pytest.mark.slow
def test_train_fine_tunes_from_keras_applications_weights(tmp_path, train, digit_folder, usage_errors):
    folder = digit_folder(tmp_path / "digits", (3, 8))  # grey PNGs: a grey model with RGB weights
    source = keras.applications.DenseNet121(weights=None, include_top=False, input_shape=(32, 32, 3))
    _randomize(source, seed=4)
    _save_like_the_downloads(source, tmp_path / "densenet121_notop.h5")
    common = ["--dataset=folder", f"--data_dir={folder}", "--image_size=32", "--batch_size=16", "--epochs=1"]
    proc = train(*common, "--init_from=keras_applications:DenseNet121", "--freeze=backbone",
                 f"--weights_path={tmp_path / 'densenet121_notop.h5'}", f"--model_dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuned = keras.saving.load_model(tmp_path / "run" / "last.keras", compile=False)
    assert tuned.output_shape == (None, 2) and tuned.layers[1].mode == "torch" and tuned.input_shape[-1] == 1
    for name in ("conv1_conv", "conv5_block16_2_conv"):  # frozen: still the file's weights
        np.testing.assert_array_equal(tuned.get_layer(name).get_weights()[0], source.get_layer(name).get_weights()[0])
    np.testing.assert_array_equal(tuned.get_layer("post_bn").get_weights()[2], source.get_layer("bn").get_weights()[2])
    cases = [
        (["--init_from=keras_applications:VGG16", "--weights_path=x.h5"], "use keras_applications: with one of"),
        (["--init_from=keras_applications:ResNet50"], "needs --weights_path"),
        (["--init_from=keras_applications:ResNet50", f"--weights_path={tmp_path / 'densenet121_notop.h5'}"],
         "does not hold ResNet50 weights"),
    ]
    said = usage_errors([([*common, *args, f"--model_dir={tmp_path / 'bad'}", "--overwrite"], {}) for args, _ in cases]
                        + [(["--init_from=keras_applications:ResNet50", "--weights_path=x.h5",
                             f"--model_dir={tmp_path / 'g'}"], {})])
    for (code, err), message in zip(said, [message for _, message in cases] + ["images of at least 32x32"]):
        assert code == 2 and message in err, err[-1500:]


KERAS_SIDE = r'''
import json, sys
import numpy as np
import keras, reszoo
from reszoo import weights

table = weights.keras_weights_table()
table["weights"]["ResNet50"]["notop"]["md5"] = sys.argv[1]  # the test's file stands in for the download
weights.keras_weights_table = lambda: table
model = reszoo.create_model("resnet50", weights="imagenet", include_top=False, pooling="avg", input_shape=(64, 64, 3))
peer = keras.applications.ResNet50(weights=sys.argv[2], include_top=False, pooling="avg", input_shape=(64, 64, 3))
x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
infer = lambda m, x: keras.ops.convert_to_numpy(m(x, training=False))
ref = infer(peer, keras.applications.resnet.preprocess_input(x.copy()))
got = infer(model, x)
try:
    reszoo.create_model("resnet50", weights="imagenet")  # the top file is not in the cache, and no network
    missing = None
except weights.WeightsError as err:
    missing = str(err)
try:  # a damaged copy in the cache (a link to the user's own file): refused, and the user's file kept
    reszoo.create_model("densenet121", weights="imagenet", include_top=False)
    damaged = None
except weights.WeightsError as err:
    damaged = str(err)
print("RESULT" + json.dumps({"rel": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)), "missing": missing,
                             "card": reszoo.model_card(model)["weights"], "damaged": damaged}))
'''


def test_imagenet_weights_come_from_keras_own_cache_by_file_name_and_hash(tmp_path):
    """weights="imagenet" fetches as keras.applications does (keras.utils.get_file, its file
    name and md5, its cache): a file placed there is taken without a download."""
    import hashlib
    import subprocess
    import sys

    resnet = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for v in resnet.weights:
        v.assign(rng.normal(0, 0.05, tuple(v.shape)).astype("float32") + (1.0 if "variance" in v.path else 0.0))
    models = tmp_path / "keras_home" / "models"
    models.mkdir(parents=True)
    file = models / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _save_like_the_downloads(resnet, file)
    md5 = hashlib.md5(file.read_bytes()).hexdigest()
    mine = tmp_path / "my_densenet_notop.h5"
    mine.write_bytes(b"half a download")
    (models / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5").symlink_to(mine)
    proc = subprocess.run([sys.executable, "-c", KERAS_SIDE, md5, str(file)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "KERAS_HOME": str(tmp_path / "keras_home"),
                                            "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert said["rel"] < 1e-5
    assert said["card"]["source"] == "keras.applications ResNet50" and said["card"]["imagenet"]["top1"] == 74.9
    assert "cannot fetch https://storage.googleapis.com/tensorflow/keras-applications/resnet/" \
           "resnet50_weights_tf_dim_ordering_tf_kernels.h5" in said["missing"]
    assert str(models / "resnet50_weights_tf_dim_ordering_tf_kernels.h5") in said["missing"]
    assert said["damaged"].startswith("keras.applications DenseNet121 weights: the cached copy failed its md5 check "
                                      "and was removed, and cannot fetch")
    assert f"put the file at {models / 'densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5'}" in said["damaged"]
    assert mine.read_bytes() == b"half a download"


def test_a_timm_tag_is_resolved_once_and_loaded_once_down_the_floors():
    """``create_model(ARCH, weights="timm/TAG")`` resolves the tag once (``weights.resolve``)
    and hands the record down to one load; no call goes up a floor
    (``benchmarks.weights_walk``, on random weights in an offline cache made here)."""
    from benchmarks import weights_walk

    calls, resolves = weights_walk.walk("resnet18.a1_in1k")
    assert resolves == 1
    assert weights_walk.upward(calls) == []
    assert calls[0] == ("reszoo.api", "reszoo.weights", "resolve")
    assert [c for c in calls if c[:2] == ("reszoo.api", "reszoo.weights")] == [
        ("reszoo.api", "reszoo.weights", "resolve"), ("reszoo.api", "reszoo.weights", "load"),
        ("reszoo.api", "reszoo.weights", "name")]
