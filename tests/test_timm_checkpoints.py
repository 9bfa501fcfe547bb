"""Your own timm checkpoints in: a fine-tuned timm model's ``model.safetensors`` (timm's hub
layout, its ``config.json`` beside it), a folder, a ``.pth`` training checkpoint wrapped as
training scripts save it, and ``hf-hub:USER/REPO`` from an offline cache, each giving timm's
own logits (timm in its own process), and timm's test-time pooling head on them; bad
checkpoints are one line."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

TIMM_SIDE = r'''
import os, sys
import numpy as np, torch, timm
sys.path.insert(0, os.path.join(sys.argv[2], "tests"))
from timm_reference import randomize
out = sys.argv[1]
model = timm.create_model("resnet18", num_classes=7)  # a 7-class fine-tune
randomize(model, 0)
model.eval()
timm.models._hub.save_for_hf(model, os.path.join(out, "mine"), safe_serialization=True,
                             model_config={"pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
with torch.no_grad():
    logits = model(torch.from_numpy(((x / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy())).numpy()
from timm.layers import TestTimePoolHead
import copy
larger = np.random.default_rng(1).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
pooled = TestTimePoolHead(copy.deepcopy(model), original_pool=2).eval()  # a 64 px model at 96 px
with torch.no_grad():
    test_pool = pooled(torch.from_numpy(((larger / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy())).numpy()
np.savez(os.path.join(out, "reference.npz"), x=x, logits=logits, larger=larger, test_pool=test_pool)
state = model.state_dict()
torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, os.path.join(out, "train.pth"))
class Args:
    pass
torch.save({"state_dict": state, "args": Args()}, os.path.join(out, "pickled.pth"))
'''

RESZOO_SIDE = r'''
import json, sys
import numpy as np
import reszoo
from reszoo import transfer, weights
out = sys.argv[1]
ref = np.load(out + "/reference.npz")
said = {}
def logits(weights_, *name, **kw):
    model = reszoo.create_model(*name, weights=weights_, input_shape=(None, None, 3), **kw)
    return [float(np.abs(np.asarray(model(ref["x"], training=False)) - ref["logits"]).max()), model.output_shape[-1],
            reszoo.model_card(model)["weights"]["tag"]]
said["safetensors"] = logits(out + "/mine/model.safetensors")
said["folder"] = logits(out + "/mine")
said["pth"] = logits(out + "/train.pth", "resnet18", preprocessing="tf")
said["hf_hub"] = logits("hf-hub:me/my-resnet")
pooled = transfer.test_time_pool(reszoo.create_model(weights=out + "/mine", input_shape=(None, None, 3)), 2)
said["test_pool"] = float(np.abs(np.asarray(pooled(ref["larger"], training=False)) - ref["test_pool"]).max())
def error(*name, **kw):
    try:
        reszoo.create_model(*name, **kw)
    except weights.WeightsError as err:
        return str(err)
said["pickled"] = error("resnet18", weights=out + "/pickled.pth")
said["no_config"] = error(weights=out + "/train.pth")
said["other_name"] = error("resnet50", weights=out + "/mine/model.safetensors")
said["misfit"] = error("resnet34", weights=out + "/train.pth")
said["unknown"] = error(weights=out + "/unknown/model.safetensors")
said["not_cached"] = error(weights="hf-hub:me/other")
print("RESULT" + json.dumps(said))
'''


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpoints")
    proc = subprocess.run([sys.executable, "-c", TIMM_SIDE, str(out), str(ROOT)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    snapshot = out / "hub" / "models--me--my-resnet" / "snapshots" / ("0" * 40)
    shutil.copytree(out / "mine", snapshot)
    (out / "hub" / "models--me--my-resnet" / "refs").mkdir()
    (out / "hub" / "models--me--my-resnet" / "refs" / "main").write_text("0" * 40)
    (out / "unknown").mkdir()
    shutil.copy(out / "mine" / "model.safetensors", out / "unknown")
    config = json.loads((out / "mine" / "config.json").read_text())
    (out / "unknown" / "config.json").write_text(json.dumps({**config, "architecture": "resnet19"}))
    return out


def test_your_own_timm_checkpoints_give_timm_s_logits_with_their_classes(checkpoints):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(checkpoints / "hub"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", RESZOO_SIDE, str(checkpoints)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    for key, source in [("safetensors", f"{checkpoints}/mine/model.safetensors"), ("folder", f"{checkpoints}/mine"),
                        ("pth", f"{checkpoints}/train.pth"), ("hf_hub", "hf-hub:me/my-resnet")]:
        difference, classes, tag = said[key]
        assert difference < 1e-4 and classes == 7 and tag == source, (key, said[key])
    assert said["test_pool"] < 1e-4  # timm's TestTimePoolHead, as its validate.py --test-pool applies it
    assert said["pickled"] == (f"{checkpoints}/pickled.pth: torch.load(weights_only=True) refuses "
                               f"{checkpoints}/pickled.pth (it holds pickled objects besides tensors); save its state "
                               "dict alone (torch.save(model.state_dict(), ...)) or as model.safetensors")
    assert said["no_config"].startswith(f"{checkpoints}/train.pth: no config.json beside it says its architecture")
    assert said["other_name"].startswith(f"{checkpoints}/mine/model.safetensors holds resnet18 weights")
    assert said["misfit"] == f"{checkpoints}/train.pth has no weights for layer 'conv2_block3_1_conv' of resnet34"
    assert said["unknown"].startswith(f"{checkpoints}/unknown/config.json: architecture 'resnet19' has no reszoo "
                                      "counterpart; the closest: resnet18, ")
    assert said["not_cached"].startswith("hf-hub:me/other: HF_HUB_OFFLINE is set and the Hugging Face cache has no "
                                         f"copy: put model.safetensors in {checkpoints}/hub/models--me--other/")
    assert all("\n" not in line for line in said.values() if isinstance(line, str))


def test_train_fine_tunes_from_an_hf_hub_checkpoint(checkpoints, tmp_path, train, image_folder):
    folder = image_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=6, mode="RGB")
    proc = train("--dataset=folder", f"--data_dir={folder}", "--image_size=32", "--init_from=hf-hub:me/my-resnet",
                 "--epochs=1", "--batch_size=8", "--validation_split=0.3", f"--model_dir={tmp_path / 'run'}",
                 HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(checkpoints / "hub"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    import keras

    import reszoo  # noqa: F401  (registers reszoo's layers)

    model = keras.saving.load_model(tmp_path / "run" / "last.keras", compile=False)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 3)
    assert model.build_spec.weights == "hf-hub:me/my-resnet"
