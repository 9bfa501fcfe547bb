"""Download-free load time of published weights: from the Hugging Face cache to a model ready
to predict, for ResNet-50 (timm/resnet50.a1_in1k), reszoo beside timm's and keras-hub's own
loading of the same cached files, each in a process of its own (PyTorch beside TensorFlow
crashes), in one run.

    python -m benchmarks.load_time [--repeats=3]

The cache is made first, offline: timm builds the net with random weights and writes its
``model.safetensors`` and ``config.json`` as the hub holds them. Each contender imports its
libraries untimed, then times its own loading call (build + read + convert + assign) and one
prediction on a 224 x 224 image, ``--repeats`` times; the first (which also starts the
framework's runtime: TensorFlow's first eager op costs about 0.3 s here), the best and the
median are printed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

TAG = "resnet50.a1_in1k"

PREPARE = r'''
import sys, timm
from timm.models._hub import save_for_hf
model = timm.create_model("resnet50", pretrained=False)
save_for_hf(model, sys.argv[1], model_config={"pretrained_cfg": timm.models.get_pretrained_cfg(sys.argv[2]).to_dict()},
            safe_serialization=True)
'''

CONTENDERS = {
    "reszoo (Keras 3, TensorFlow)": ("import numpy as np, reszoo", "reszoo",
        "m = reszoo.create_model('resnet50', weights='timm/{tag}'); m.predict(np.zeros((1, 224, 224, 3), 'float32'), verbose=0)"),
    "keras-hub (Keras 3, TensorFlow)": ("import numpy as np, keras_hub", "keras-hub",
        "m = keras_hub.models.ImageClassifier.from_preset('hf://timm/{tag}'); m.predict(np.zeros((1, 224, 224, 3), 'float32'), verbose=0)"),
    "timm (PyTorch)": ("import torch, timm", "timm",
        "m = timm.create_model('{tag}', pretrained=True).eval()\nwith torch.no_grad(): m(torch.zeros(1, 3, 224, 224))"),
}

TIMER = r'''
import json, statistics, sys, time
{imports}
times = []
for _ in range({repeats}):
    start = time.perf_counter()
{body}
    times.append(time.perf_counter() - start)
print("RESULT" + json.dumps({{"first": times[0], "best": min(times), "median": statistics.median(times)}}))
'''


def cache_for(tag, hub_cache):
    """``tag``'s files in a Hugging Face cache (refs/main -> snapshots/REV/...)."""
    snapshot = os.path.join(hub_cache, f"models--timm--{tag}", "snapshots", "0" * 40)
    os.makedirs(os.path.join(hub_cache, f"models--timm--{tag}", "refs"), exist_ok=True)
    with open(os.path.join(hub_cache, f"models--timm--{tag}", "refs", "main"), "w") as f:
        f.write("0" * 40)
    subprocess.run([sys.executable, "-c", PREPARE, snapshot, tag], check=True, capture_output=True)


def time_contender(name, repeats, env):
    imports, _, body = CONTENDERS[name]
    body = "\n".join("    " + line for line in body.format(tag=TAG).splitlines())
    code = TIMER.format(imports=imports, repeats=repeats, body=body)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    if not found:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(found[-1][len("RESULT"):])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    from benchmarks.common import machine

    with tempfile.TemporaryDirectory() as tmp:
        cache_for(TAG, tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": tmp, "TF_CPP_MIN_LOG_LEVEL": "3"}
        print(f"| loader, ResNet-50 from the cache to a first prediction ({machine()}) | first | best | median |")
        print("|---|---:|---:|---:|")
        for name in CONTENDERS:
            found = time_contender(name, args.repeats, env)
            if "error" in found:
                print(f"| {name} | not measured: {found['error']} | | |")
            else:
                print(f"| {name} | {found['first']:.2f} s | {found['best']:.2f} s | {found['median']:.2f} s |",
                      flush=True)


if __name__ == "__main__":
    main()
