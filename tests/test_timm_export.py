"""Your Keras weights out, to timm: ``reszoo.hub.save_timm`` and ``reszoo-export --formats=timm``
write timm's hub layout, and timm itself (in its own process) loads it, from the file and as
``hf-hub:`` from a local cache, giving reszoo's logits: one architecture per code path of the
builder (basic, bottleneck, ResNet-D, ResNeXt, SE, ResNetV2, DenseNet)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

ARCHITECTURES = ["resnet18", "resnet50", "resnet50d", "resnext50_32x4d", "seresnet50", "resnetv2_50", "densenet121"]

RESZOO_SIDE = r'''
import json, os, sys
import numpy as np
import keras, reszoo
from reszoo import hub
from reszoo.errors import WeightsError
from training import exporter
from benchmarks.common import randomized as random_weights
out, archs = sys.argv[1], sys.argv[2].split(",")
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
np.save(os.path.join(out, "x.npy"), x)

def randomized(model):
    return random_weights(model, rng)

stats = {"mean": [120.0, 110.0, 100.0], "std": [60.0, 55.0, 50.0]}  # a run's own, in raw pixels
for arch in archs:
    model = randomized(reszoo.create_model(arch, padding="symmetric", input_shape=(64, 64, 3), num_classes=7,
                                           preprocessing=stats))
    hub.save_timm(model, os.path.join(out, arch), card={"metrics": {"top1": 12.5}, "datasets": ["digits"]})
    np.save(os.path.join(out, arch, "logits.npy"), np.asarray(model(x, training=False)))
said = {}
for key, build in [("cifar", lambda: reszoo.create_model("resnet20")),
                   ("same_padding", lambda: reszoo.create_model("resnet18", input_shape=(64, 64, 3)))]:
    try:
        hub.save_timm(build(), os.path.join(out, key))
    except WeightsError as err:
        said[key] = str(err)
said["left_nothing"] = sorted(os.listdir(out))
# reszoo-export --formats=timm on a run folder
run = os.path.join(out, "run")
os.makedirs(run)
model = randomized(reszoo.create_model("resnet18", padding="symmetric", input_shape=(32, 32, 3), num_classes=3,
                                       preprocessing=stats))
model.save(os.path.join(run, "last.keras"))
with open(os.path.join(run, "results.json"), "w") as f:
    json.dump({"class_names": ["a", "b", "c"], "test_accuracy": 0.875, "dataset": "shapes", "model": "resnet18"}, f)
version = exporter.export(run, os.path.join(out, "exports"), formats=["saved_model", "timm"])
np.save(os.path.join(version, "timm", "logits.npy"), np.asarray(model(x[:, :32, :32], training=False)))
said["version"] = version
print("RESULT" + json.dumps(said))
'''

TIMM_SIDE = r'''
import json, os, sys
import numpy as np, torch, timm
out, folders = sys.argv[1], sys.argv[2].split(",")
x = np.load(os.path.join(out, "x.npy"))
said = {}
for folder in folders:
    config = json.load(open(os.path.join(folder, "config.json")))
    cfg = config["pretrained_cfg"]
    size = cfg["input_size"][1]
    pixels = torch.from_numpy(x[:, :size, :size].transpose(0, 3, 1, 2).copy()) / 255  # timm's ToTensor
    pixels = (pixels - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[:, None, None]
    ref = np.load(os.path.join(folder, "logits.npy"))
    models = [timm.create_model(config["architecture"], pretrained=True, num_classes=config["num_classes"],
                                pretrained_cfg_overlay=dict(file=os.path.join(folder, "model.safetensors"),
                                                            num_classes=config["num_classes"]))]
    if os.path.basename(folder) == "resnet50d":  # the hub path: config.json read by timm itself
        models.append(timm.create_model("hf-hub:me/" + os.path.basename(folder), pretrained=True))
    errors = []
    for model in models:
        model.eval()
        with torch.no_grad():
            errors.append(float(np.abs(model(pixels).numpy() - ref).max() / np.abs(ref).max()))
    said[os.path.basename(folder)] = errors
print("RESULT" + json.dumps(said))
'''


def _result(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])


def test_timm_loads_reszoo_s_weights_and_gives_reszoo_s_logits(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    said = _result(subprocess.run([sys.executable, "-c", RESZOO_SIDE, str(out), ",".join(ARCHITECTURES)],
                                  capture_output=True, text=True, timeout=900, env=env, cwd=ROOT))
    assert said["cifar"].startswith("resnet20 has no timm counterpart")
    assert said["same_padding"].startswith("resnet18 was built with Keras' 'same' padding, and timm pads "
                                           "symmetrically")
    assert said["left_nothing"] == sorted(["x.npy", *ARCHITECTURES])  # the refused ones wrote nothing
    card = (out / "resnet18" / "README.md").read_text()
    assert card.startswith("---\ntags:\n- image-classification\n- timm\n") and "library_name: timm" in card
    assert "| top1 | 12.5 |" in card and "datasets:\n- digits" in card
    config = json.loads((out / "resnet18" / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 7
    assert config["pretrained_cfg"]["mean"] == pytest.approx([120 / 255, 110 / 255, 100 / 255])
    assert config["pretrained_cfg"]["std"] == pytest.approx([60 / 255, 55 / 255, 50 / 255])
    version = said["version"]
    assert sorted(os.listdir(os.path.join(version, "timm"))) == ["README.md", "config.json", "logits.npy",
                                                                 "model.safetensors"]
    assert json.loads(open(os.path.join(version, "metadata.json")).read())["formats"] == ["saved_model", "timm"]
    assert "| top1 | 87.5 |" in open(os.path.join(version, "timm", "README.md")).read()
    # As an upload would be: the folder in a Hugging Face cache, read by timm's hf-hub: offline.
    snapshot = tmp_path / "hub" / "models--me--resnet50d" / "snapshots" / ("0" * 40)
    shutil.copytree(out / "resnet50d", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    folders = [str(out / arch) for arch in ARCHITECTURES] + [os.path.join(version, "timm")]
    timm = _result(subprocess.run([sys.executable, "-c", TIMM_SIDE, str(out), ",".join(folders)], capture_output=True,
                                  text=True, timeout=900, env={**env, "HF_HUB_OFFLINE": "1",
                                                               "HF_HUB_CACHE": str(tmp_path / "hub")}))
    assert set(timm) == {*ARCHITECTURES, "timm"}
    assert len(timm["resnet50d"]) == 2
    for name, errors in timm.items():
        assert all(error < 1e-4 for error in errors), (name, errors)


def test_export_formats_timm_on_a_net_timm_lacks_is_a_usage_error(usage_errors, tmp_path):
    import reszoo

    run = tmp_path / "run"  # a finished run's folder, as export reads it
    run.mkdir()
    reszoo.create_model("resnet20", base_width=4, input_shape=(8, 8, 1)).save(run / "last.keras")
    (run / "results.json").write_text(json.dumps({"class_names": [str(i) for i in range(10)], "model": "resnet20"}))
    (code, stderr), = usage_errors([([f"--model_dir={run}", "--formats=timm", f"--export_dir={tmp_path / 'x'}"],
                                     {})], command="training.export")
    lines = [line for line in stderr.splitlines() if line.startswith("export:")]
    assert code == 2 and lines == ["export: error: --formats=timm: resnet20 has no timm counterpart: timm builds "
                                   "densenet121, densenet161, densenet169, densenet201, resnet101, resnet101d, "
                                   "resnet152, resnet152d, ... (reszoo's CIFAR ResNets, plain nets and adapter tasks "
                                   "are its own)"], stderr
    assert not (tmp_path / "x").exists()
