"""Write reszoo's table of timm weights (``reszoo/data/timm_weights.json``): every tag timm
publishes for an architecture reszoo builds, with its pretrained config (hub id, classes, mean
and std, crop, interpolation, input and test sizes, licence, paper) and its published ImageNet
accuracy from timm's ``results/results-imagenet.csv`` (the repository's, not the wheel's).

    python scripts/timm_weights.py --results=results-imagenet.csv

Needs timm (``pip install -e ".[torch]"``); run it again when timm publishes new tags.
"""

import argparse
import csv
import json
import os
import sys

# reszoo's registry name for each timm architecture it builds (the same name everywhere).
ARCHITECTURES = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnet18d", "resnet34d", "resnet50d", "resnet101d", "resnet152d",
    "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2", "seresnet50",
    "resnetv2_50", "resnetv2_101", "densenet121", "densenet161", "densenet169", "densenet201",
)
KEPT = ("hf_hub_id", "num_classes", "mean", "std", "crop_pct", "test_crop_pct", "crop_mode", "interpolation",
        "input_size", "test_input_size", "license", "paper_ids", "paper_name", "origin_url", "notes")


def accuracy(path):
    """``{tag: [(img_size, top1, top5, crop_pct, interpolation)]}`` from timm's results CSV."""
    found = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            found.setdefault(row["model"], []).append(
                dict(img_size=int(row["img_size"]), top1=float(row["top1"]), top5=float(row["top5"]),
                     crop_pct=float(row["crop_pct"]), interpolation=row["interpolation"]))
    return found


def table(results):
    import timm

    rows = {}
    for arch in ARCHITECTURES:
        for tag in timm.list_pretrained(f"{arch}.*"):
            if tag.split(".")[0] != arch:
                continue
            cfg = timm.models.get_pretrained_cfg(tag).to_dict()
            entry = {key: list(value) if isinstance(value, tuple) else value
                     for key, value in cfg.items() if key in KEPT and value not in (None, "")}
            entry["architecture"] = arch
            published = results.get(tag, [])
            if published:
                entry["imagenet"] = max(published, key=lambda r: r["top1"])
            rows[tag] = entry
    return {"source": f"timm {timm.__version__} pretrained configs; accuracy from timm's results-imagenet.csv",
            "weights": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="timm's results/results-imagenet.csv")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "reszoo", "data",
                                                      "timm_weights.json"))
    args = parser.parse_args()
    if not os.path.isfile(args.results):
        parser.error(f"--results: no such file {args.results}")
    value = table(accuracy(args.results))
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, args.out)
    print(f"{len(value['weights'])} tags -> {os.path.normpath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
