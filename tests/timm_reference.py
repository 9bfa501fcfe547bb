"""timm's side of tests/test_timm.py, in a process of its own (PyTorch beside TensorFlow
crashes): for each architecture, a timm model with random weights (BatchNorm statistics too),
saved as ``model.safetensors`` into a Hugging Face cache laid out as the hub lays it out (one
file per architecture, linked into the folder of every tag asked for), and its logits and
feature maps on random raw-pixel images at each size, for reszoo to match.

    python tests/timm_reference.py --cache DIR --out DIR --sizes 64,75 resnet50:a1h_in1k,tv_in1k ...

Also writes ``shapes.json`` (every architecture's state-dict shapes, for those asked with
``--shapes_only``), ``macs.json`` (every architecture's multiply-accumulates at 224 x 224, by
PyTorch's FlopCounterMode on the meta device) and ``cfgs.json`` (timm's pretrained config of every tag in
reszoo's table).
"""

import argparse
import hashlib
import json
import os

import numpy as np
import safetensors.torch
import timm
import torch
import torch.utils.flop_counter


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype != torch.float32:
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif name.endswith("weight") and tensor.ndim == 1:  # BN gamma: small, so deep nets stay well conditioned
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.4 + 0.2)
            else:
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / fan_in) ** 0.5)


def cache_tag(cache, tag, blob):
    """``blob`` as timm/TAG's model.safetensors in the hub's cache layout (refs/main -> a
    40-hex revision -> snapshots/REV/model.safetensors)."""
    repo = os.path.join(cache, f"models--timm--{tag}")
    revision = hashlib.sha1(tag.encode()).hexdigest()
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "snapshots", revision), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(revision)
    target = os.path.join(repo, "snapshots", revision, "model.safetensors")
    if os.path.exists(target):
        os.remove(target)
    os.link(blob, target)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", default="64,75")
    parser.add_argument("--shapes_only", default="", help="architectures whose state-dict shapes alone are written")
    parser.add_argument("--table", default=None, help="reszoo's timm_weights.json: write timm's cfg of each tag")
    parser.add_argument("specs", nargs="*", help="ARCH:TAG,TAG,...")
    args = parser.parse_args()
    torch.manual_seed(0)
    sizes = [int(s) for s in args.sizes.split(",")]
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.cache, exist_ok=True)
    for i, spec in enumerate(args.specs):
        arch, _, tags = spec.partition(":")
        model = timm.create_model(arch, pretrained=False).eval()
        randomize(model, i)
        blob = os.path.join(args.cache, f"{arch}.safetensors")
        safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, blob)
        for tag in tags.split(","):
            cache_tag(args.cache, f"{arch}.{tag}", blob)
        cfg = model.pretrained_cfg
        rng = np.random.default_rng(i)
        out = {}
        for size in sizes:
            pixels = rng.uniform(0, 255, (2, size, size, 3)).astype("float32")
            x = torch.from_numpy(pixels).permute(0, 3, 1, 2) / 255.0
            x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
            with torch.no_grad():
                out[f"pixels_{size}"] = pixels
                out[f"logits_{size}"] = model(x).numpy()
                fmaps = model.forward_intermediates(x, intermediates_only=True)  # timm's feature_info points
                for level, fmap in zip(model.feature_info, fmaps):
                    out[f"P{int(np.log2(level['reduction']))}_{size}"] = fmap.permute(0, 2, 3, 1).numpy()
                # float32's own error on this net: the comparison cannot be finer than this
                out[f"conditioning_{size}"] = np.linalg.norm(
                    model.double()(x.double()).float().numpy() - out[f"logits_{size}"]) / np.linalg.norm(
                    out[f"logits_{size}"])
                model.float()
        np.savez(os.path.join(args.out, f"{arch}.npz"), **out)
    shapes, macs = {}, {}
    archs = [spec.partition(":")[0] for spec in args.specs] + list(filter(None, args.shapes_only.split(",")))
    for arch in archs:
        with torch.device("meta"):  # shapes and counts only: no memory, no arithmetic
            model = timm.create_model(arch, pretrained=False).eval()
            if arch in args.shapes_only.split(","):
                shapes[arch] = {k: list(v.shape) for k, v in model.state_dict().items()}
            with torch.no_grad(), torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
                model(torch.zeros(1, 3, 224, 224))
        macs[arch] = counter.get_total_flops() // 2  # convolutions and linear layers, 2 FLOPs per MAC
    with open(os.path.join(args.out, "shapes.json"), "w") as f:
        json.dump(shapes, f)
    with open(os.path.join(args.out, "macs.json"), "w") as f:
        json.dump(macs, f)
    if args.table:
        with open(args.table) as f:
            tags = json.load(f)["weights"]
        cfgs = {tag: timm.models.get_pretrained_cfg(tag).to_dict() for tag in tags}
        with open(os.path.join(args.out, "cfgs.json"), "w") as f:
            json.dump(cfgs, f, default=list)
    print("ok")


if __name__ == "__main__":
    main()
