"""Shared by the lab's commands: where results go, and writing a figure with its numbers."""

import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def save(name, figure, numbers, out_dir=RESULTS):
    """``out_dir/name.png`` and ``out_dir/name.json``, each written whole (``reszoo.io``);
    returns their paths."""
    from reszoo.io import atomic_write

    os.makedirs(out_dir, exist_ok=True)
    png, js = os.path.join(out_dir, f"{name}.png"), os.path.join(out_dir, f"{name}.json")
    figure.tight_layout()
    atomic_write(png, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    atomic_write(js, lambda tmp: _dump(numbers, tmp))
    print(f"wrote {png} and {js}")
    return png, js


def _dump(value, path):
    with open(path, "w") as f:
        json.dump(value, f, indent=1)


def parser(doc):
    """An argument parser described by the command's docstring, with ``--out_dir``."""
    import argparse

    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--out_dir", default=RESULTS, help="where the PNG and JSON go")
    return p


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def positive_int(text):
    """argparse type: an integer >= 1 (argparse turns the ValueError into exit status 2)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def cifar_depth(text):
    """argparse type: a CIFAR basic-block depth, 6n + 2 (8, 14, 20, ...)."""
    from reszoo.resnet import cifar_blocks

    value = positive_int(text)
    cifar_blocks(value)  # its ValueError is argparse's "invalid value"
    return value


def cifar_depths(text):
    """argparse type: comma-separated CIFAR depths, e.g. 20,56."""
    return [cifar_depth(t) for t in text.split(",")]


def floats(text):
    """argparse type: comma-separated numbers, e.g. 0.1,0.3."""
    return [float(t) for t in text.split(",")]


def data_parser(doc):
    """``parser`` plus the dataset flags of the training experiments."""
    p = parser(doc)
    p.add_argument("--dataset", default="digits", help="digits (embedded) or a prepared tfds name, e.g. cifar10")
    p.add_argument("--data_dir", default=None, help="tfds data directory")
    p.add_argument("--limit", type=positive_int, default=None, help="use the first N examples of each split")
    return p


def load_data(args, raw=False):
    """The data the flags name (``experiments.data.load``, or its ``arrays`` when ``raw``); a
    dataset that cannot be read ends the command with one line and exit status 2."""
    import sys

    from experiments import data

    if args.dataset == "digits":
        return data.arrays(limit=getattr(args, "limit", None)) if raw else data.load(limit=args.limit)
    from training.data import DataError

    try:
        if raw:
            return data.arrays(args.dataset, args.data_dir, args.image_size, getattr(args, "limit", None))
        return data.load(args.dataset, args.data_dir, args.limit)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
