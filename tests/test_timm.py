"""Pretrained weights by name, checked against timm itself: timm builds each architecture with
random weights in a process of its own (PyTorch beside TensorFlow crashes), writes them into a
Hugging Face cache laid out as the hub lays it out, and reszoo loads them through the same
``weights="timm/..."`` call users make, offline, on the TensorFlow and JAX backends; logits and
pyramid features must equal timm's within 1e-4 (relative), at an even and an odd input size."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

TABLE = json.loads((ROOT / "reszoo" / "data" / "timm_weights.json").read_text())["weights"]
# One architecture per code path of the builder (basic, bottleneck, deep stem + average-pool
# shortcuts, groups, width, squeeze-excitation, pre-activation, DenseNet): compared value by value.
NUMERIC = ["resnet18", "resnet50", "resnet18d", "resnet50d", "resnext50_32x4d", "wide_resnet50_2", "seresnet50",
           "resnetv2_50", "densenet121"]
# Their deeper siblings: every timm tensor must map onto reszoo's layers with its shape.
SHAPES = sorted({entry["architecture"] for entry in TABLE.values()} - set(NUMERIC))
SIZES = (64, 75)
TOLERANCE = 1e-4

pytestmark = pytest.mark.xdist_group("timm")


def _tags(arch):
    return sorted(tag.split(".", 1)[1] for tag, entry in TABLE.items() if entry["architecture"] == arch)


@pytest.fixture(scope="module")
def timm_side(tmp_path_factory):
    """The cache (every tag of the NUMERIC architectures), timm's outputs, state-dict shapes of
    the others and timm's config of every tag."""
    root = tmp_path_factory.mktemp("timm")
    specs = [f"{arch}:{','.join(_tags(arch))}" for arch in NUMERIC]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "timm_reference.py"), f"--cache={root / 'hub'}",
                           f"--out={root / 'out'}", f"--sizes={','.join(map(str, SIZES))}",
                           f"--shapes_only={','.join(SHAPES)}", f"--table={ROOT / 'reszoo' / 'data' / 'timm_weights.json'}",
                           *specs], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


RESZOO_SIDE = r'''
import json, os, sys
import numpy as np
import keras, reszoo
from reszoo import factory, hub, weights
root, numeric, shapes, sizes = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(","), [int(s) for s in sys.argv[4].split(",")]
rel = lambda a, b: float(np.linalg.norm(np.asarray(a, "float64") - b) / np.linalg.norm(b))
infer = lambda m, x: keras.tree.map_structure(keras.ops.convert_to_numpy, m(x, training=False))
result = {"backend": keras.backend.backend(), "numeric": {}, "tags": {}, "shapes": {}, "macs": {}}
for arch in numeric:
    ref = np.load(os.path.join(root, "out", arch + ".npz"))
    tags = [t for t in hub.table() if hub.table()[t]["architecture"] == arch]
    model = reszoo.create_model(arch, weights="timm/" + tags[0], input_shape=(None, None, 3))
    backbone = reszoo.create_model(arch, weights="timm/" + tags[0], features_only=True)
    for size in sizes:
        x = ref[f"pixels_{size}"]
        levels = infer(backbone, x)
        result["numeric"][f"{arch}@{size}"] = {
            "logits": rel(infer(model, x), ref[f"logits_{size}"]),
            "conditioning": float(ref[f"conditioning_{size}"]),
            "levels": {k: rel(v, ref[f"{k}_{size}"]) for k, v in levels.items()},
            "timm_levels": sorted(k.split("_")[0] for k in ref.files if k.startswith("P") and k.endswith(f"_{size}"))}
    if keras.backend.backend() == "tensorflow":  # every tag of the architecture, into one model at 224
        model = reszoo.create_model(arch, weights=tags[-1])  # the bare tag names the architecture too
        result["macs"][arch] = reszoo.model_card(model)["macs"]
        for tag in tags:
            report = weights.load_weights(model, "timm/" + tag)
            result["tags"][tag] = {"loaded": report.loaded, "replaced": list(report.replaced),
                                   "card": reszoo.model_card(model)["weights"]["tag"] if tag == tags[-1] else None}
if keras.backend.backend() == "tensorflow":
    timm_shapes = json.load(open(os.path.join(root, "out", "shapes.json")))
    for arch in shapes:
        state = {k: np.zeros(v, "float32") for k, v in timm_shapes[arch].items()}
        values, origin = hub.convert(state, arch)
        with factory.weights_to_come():  # every tensor is assigned next: no random kernels drawn
            model = reszoo.create_model(arch, padding="symmetric")
        result["macs"][arch] = reszoo.model_card(model)["macs"]
        result["shapes"][arch] = [weights.assign_values(model, values, arch, origin=origin).loaded,
                                  len([layer for layer in model.layers if layer.weights])]
print("RESULT" + json.dumps(result))
'''


def _reszoo_side(timm_side, backend, numeric, shapes, sizes=SIZES):
    env = {**os.environ, "KERAS_BACKEND": backend, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(timm_side / "hub"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", RESZOO_SIDE, str(timm_side), ",".join(numeric), ",".join(shapes),
                           ",".join(map(str, sizes))], capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])


@pytest.fixture(scope="module")
def tensorflow_side(timm_side):
    return _reszoo_side(timm_side, "tensorflow", NUMERIC, SHAPES)


@pytest.mark.parametrize("arch", NUMERIC)
def test_timm_weights_give_timm_s_logits_and_features_on_tensorflow(tensorflow_side, arch):
    for size in SIZES:
        found = tensorflow_side["numeric"][f"{arch}@{size}"]
        assert found["conditioning"] < 1e-5  # float32 itself is far finer than the tolerance on this net
        assert found["logits"] < TOLERANCE, (size, found)
        assert sorted(found["levels"]) == found["timm_levels"]
        assert max(found["levels"].values()) < TOLERANCE, (size, found["levels"])


def test_timm_weights_give_timm_s_logits_and_features_on_jax(timm_side):
    """The converted weights on JAX, at the odd size: the deep stem with average-pool shortcuts
    and the pre-activation layout. (DenseNet on JAX equals DenseNet on TensorFlow in
    test_serialization; op by op, JAX compiles each of its concatenations, about a minute.)"""
    jax_side = _reszoo_side(timm_side, "jax", ["resnet50d", "resnetv2_50"], [], sizes=SIZES[1:])
    assert jax_side["backend"] == "jax" and len(jax_side["numeric"]) == 2
    for key, found in jax_side["numeric"].items():
        assert found["logits"] < TOLERANCE and max(found["levels"].values()) < TOLERANCE, (key, found)


def test_every_tag_of_the_compared_architectures_loads_offline(tensorflow_side):
    tags = {tag for tag, entry in TABLE.items() if entry["architecture"] in NUMERIC}
    assert set(tensorflow_side["tags"]) == tags
    for tag, found in tensorflow_side["tags"].items():
        classes = TABLE[tag].get("num_classes", 1000)
        assert found["loaded"] > 20 and (found["replaced"] == [] or classes != 1000), (tag, found)
    assert {found["card"] for found in tensorflow_side["tags"].values()} - {None} == {
        "timm/" + max(t for t in tags if TABLE[t]["architecture"] == arch) for arch in NUMERIC}


@pytest.mark.parametrize("arch", SHAPES)
def test_every_tensor_of_the_deeper_architectures_maps_onto_reszoo_s_layers(tensorflow_side, arch):
    loaded, weighted = tensorflow_side["shapes"][arch]
    assert loaded == weighted > 50


def test_multiply_accumulates_equal_timm_s_for_every_architecture(timm_side, tensorflow_side):
    timm_macs = json.loads((timm_side / "out" / "macs.json").read_text())
    assert set(timm_macs) == set(NUMERIC) | set(SHAPES)
    assert tensorflow_side["macs"] == timm_macs


def test_the_table_holds_every_tag_timm_publishes_with_timm_s_own_config(timm_side):
    import reszoo

    cfgs = json.loads((timm_side / "out" / "cfgs.json").read_text())
    assert set(cfgs) == set(TABLE) and len(TABLE) >= 91
    for tag, entry in TABLE.items():
        assert entry["architecture"] in reszoo.list_models()
        for key in ("hf_hub_id", "mean", "std", "crop_pct", "interpolation", "input_size", "license"):
            if key in cfgs[tag]:
                assert entry[key] == cfgs[tag][key], (tag, key)
    assert TABLE["resnet50.a1h_in1k"]["imagenet"]["top1"] == pytest.approx(80.654)
    assert len(reszoo.list_weights("resnet50.*")) == 19 and "keras/resnet50" in reszoo.list_weights("resnet50")


BAD_INPUT = r'''
import json, os, shutil, sys
import numpy as np
import reszoo
from reszoo import weights
said = {}
def error(call):
    try:
        call()
    except weights.WeightsError as err:
        return str(err)
    return None
said["unknown"] = error(lambda: reszoo.create_model("resnet50", weights="timm/resnet50.a1hh_in1k"))
said["other_arch"] = error(lambda: reszoo.create_model("resnet50", weights="timm/resnet50d.ra2_in1k"))
said["not_cached"] = error(lambda: reszoo.create_model("resnet50", weights="timm/resnet50.a2_in1k"))
blob = sys.argv[1]
said["truncated"] = error(lambda: reszoo.create_model("resnet18", weights="timm/resnet18.gluon_in1k"))
said["truncated_gone"] = not os.path.exists(blob)
model = reszoo.create_model("resnet18", padding="symmetric")
before = [w.copy() for w in model.get_weights()]
said["misfit"] = error(lambda: weights.load_weights(model, "timm/resnet18.a1_in1k"))
said["untouched"] = all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
said["linked"] = error(lambda: reszoo.create_model("resnet18", weights="timm/resnet18.tv_in1k"))
said["bare_typo"] = error(lambda: reszoo.create_model("resnet50", weights="a1_in1kk"))
said["bare_typo_alone"] = error(lambda: reszoo.create_model(weights="a1h_in1kk"))
said["empty"] = error(lambda: reszoo.create_model("resnet18", weights=""))
said["number"] = error(lambda: reszoo.create_model("resnet18", weights=123))
said["state_dict"] = error(lambda: reszoo.create_model(weights=sys.argv[2]))
said["state_dict_named"] = error(lambda: reszoo.create_model("resnet18", weights=sys.argv[2]))
try:
    reszoo.list_weights(5)
except TypeError as err:
    said["list_weights"] = str(err)
print("RESULT" + json.dumps(said))
'''


def test_bad_weights_get_one_clear_line_and_nothing_half_loaded(timm_side, tmp_path):
    """An unknown tag, a tag of another architecture, an empty cache offline, a truncated
    download (removed from the cache), a state dict that does not fit (the first tensor named)."""
    import shutil

    hub = tmp_path / "hub"
    shutil.copytree(timm_side / "hub", hub, symlinks=True, ignore=shutil.ignore_patterns("*.safetensors"))
    for tag, source in (("resnet18.gluon_in1k", "resnet18"), ("resnet18.a1_in1k", "resnet50")):
        snapshot = next((hub / f"models--timm--{tag}" / "snapshots").iterdir())
        data = (timm_side / "hub" / f"{source}.safetensors").read_bytes()
        (snapshot / "model.safetensors").write_bytes(data[: len(data) // 3] if tag.endswith("gluon_in1k") else data)
    shutil.rmtree(hub / "models--timm--resnet50.a2_in1k")
    truncated = next((hub / "models--timm--resnet18.gluon_in1k" / "snapshots").iterdir()) / "model.safetensors"
    # A cache entry linked to the user's own file outside the cache, which is damaged: the
    # loader must drop the link and leave the user's file as it is.
    mine = tmp_path / "mine" / "model.safetensors"
    mine.parent.mkdir()
    mine.write_bytes(b"my own half-copied file")
    linked = next((hub / "models--timm--resnet18.tv_in1k" / "snapshots").iterdir()) / "model.safetensors"
    linked.symlink_to(mine)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", BAD_INPUT, str(truncated), str(mine)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert "did you mean resnet50.a1h_in1k" in said["unknown"]
    assert said["other_arch"].startswith("timm/resnet50d.ra2_in1k are weights of resnet50d, not resnet50")
    assert "HF_HUB_OFFLINE is set" in said["not_cached"] and str(hub / "models--timm--resnet50.a2_in1k") in said["not_cached"]
    assert "is damaged" in said["truncated"] and said["truncated_gone"]
    # Offline, "call again" cannot work: the line says where the file goes.
    assert "call again" not in said["truncated"]
    assert f"put model.safetensors in {hub / 'models--timm--resnet18.gluon_in1k'}/snapshots/<revision>/" in \
        said["truncated"]
    assert mine.read_bytes() == b"my own half-copied file" and not linked.is_symlink()
    assert f"it links to {mine}, outside the cache, which was left as it is" in said["linked"]
    assert said["bare_typo"].startswith("weights='a1_in1kk' is no file or folder here, nor published weights")
    assert "did you mean resnet50.a1_in1k" in said["bare_typo"]
    assert "; did you mean " in said["bare_typo_alone"] and "resnet50.a1h_in1k, " in said["bare_typo_alone"]
    for key in ("empty", "number"):
        assert said[key].startswith(f"weights={'' if key == 'empty' else 123!r}: give published weights by name"), said
    # A state dict file of the user's own is read (tests/test_timm_checkpoints.py); a damaged one is refused
    # and kept.
    assert said["state_dict"].startswith(f"{mine}: no config.json beside it says its architecture")
    assert said["state_dict_named"].startswith(f"{mine}: {mine} is not a safetensors file, or is damaged")
    assert said["list_weights"] == ("list_weights(pattern): pattern is a shell-style string such as 'resnet50*', "
                                    "not 5")
    assert said["misfit"].startswith("layer 'conv1.weight' (conv1_conv): conv1_conv/kernel has shape (7, 7, 3, 64)") \
        or "has no counterpart" in said["misfit"], said["misfit"]
    assert said["untouched"]
    assert all("\n" not in line for line in said.values() if isinstance(line, str))


def test_train_fine_tunes_from_timm_weights_on_grey_images(timm_side, tmp_path, train, image_folder):
    """--init_from=timm/... from the command line: grey images through timm's RGB weights
    (the preprocessing widens them), a new head for the folder's classes."""
    folder = image_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=6, mode="L")
    proc = train("--dataset=folder", f"--data_dir={folder}", "--image_size=32", "--init_from=timm/resnet18.tv_in1k",
                 "--epochs=1", "--batch_size=8", "--validation_split=0.3", f"--model_dir={tmp_path / 'run'}",
                 HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(timm_side / "hub"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" in proc.stdout
    import keras

    import reszoo  # noqa: F401  (registers reszoo's layers)

    model = keras.saving.load_model(tmp_path / "run" / "last.keras", compile=False)
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 3)
    assert model.build_spec.weights == "timm/resnet18.tv_in1k"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["model"] == "resnet18"  # not --model's default
    wrong = train("--dataset=folder", f"--data_dir={folder}", "--image_size=32", "--init_from=timm/resnet18.nope",
                  f"--model_dir={tmp_path / 'run2'}", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(timm_side / "hub"))
    assert wrong.returncode == 2 and "unknown timm weights 'timm/resnet18.nope'" in wrong.stderr


VALIDATE_WEIGHTS = r'''
import json
import numpy as np
import reszoo
from training import validation
source = validation.load_source(None, "last", "timm/resnet18.a1_in1k")
x = np.random.default_rng(0).uniform(0, 255, (2, 300, 300, 3)).astype("float32")
images = validation.eval_images(x, source.side, source.crop_pct, source.interpolation).numpy()
model = reszoo.create_model(weights="timm/resnet18.a1_in1k")
same = float(np.abs(source.predict(images) - model.predict(images, verbose=0)).max())
try:  # the default dataset: 8x8 grey digits
    validation.run(source, results_csv=None, say=lambda line: None)
    digits = None
except validation.CommandError as err:
    digits = [err.code, str(err)]
print("RESULT" + json.dumps(dict(side=source.side, crop_pct=source.crop_pct, interpolation=source.interpolation,
                                 params=source.params, shape=list(images.shape), same=same, digits=digits)))
'''


def test_validate_takes_published_weights_with_their_own_eval_transform(timm_side):
    """reszoo-validate --weights=timm/...: the model from the offline cache, with the crop_pct
    and interpolation of the weights' card (timm's pretrained_cfg)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(timm_side / "hub"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", VALIDATE_WEIGHTS], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    from reszoo import hub

    card = hub.card("resnet18.a1_in1k")
    assert (said["crop_pct"], said["interpolation"]) == (card["crop_pct"], card["interpolation"]) == (0.95, "bicubic")
    assert said["side"] == 224 and said["shape"] == [2, 224, 224, 3]
    assert said["params"] == 11_689_512  # torchvision's and timm's ResNet-18
    assert said["same"] < 1e-4
    assert said["digits"] == [2, "resnet18.a1_in1k takes images of 3 channel(s), digits has 1; published ImageNet "
                                 "weights need colour images: give --dataset (a tfds name) or --dataset=folder with "
                                 "--data_dir=FOLDER"]
