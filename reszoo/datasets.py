"""Small real data shipped with reszoo (numpy only, any backend): the digits, and the names of
ImageNet-1k's classes."""

import json
import os

import numpy as np

_DIGITS = os.path.join(os.path.dirname(__file__), "data", "digits.npz")
_IMAGENET = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.json")
DIGITS_MAX = 16  # the digits' intensities lie in 0..16


def load_digits():
    """The UCI handwritten digits (CC BY 4.0): ``(x_train, y_train), (x_test, y_test),
    class_names`` with uint8 images of shape [N, 8, 8, 1] holding intensities 0-``DIGITS_MAX``."""
    with np.load(_DIGITS) as data:
        return ((data["x_train"], data["y_train"]), (data["x_test"], data["y_test"]),
                [str(c) for c in data["class_names"]])


def channel_stats(images, floor=1e-3):
    """Per-channel mean and standard deviation of ``images`` [N, H, W, C] (float32 arrays),
    the std floored at ``floor`` so that a constant channel does not divide by zero: the
    normalisation a model built on this data takes as its first layer."""
    images = np.asarray(images, "float64")
    mean = images.mean(axis=(0, 1, 2))
    std = np.maximum(images.std(axis=(0, 1, 2)), floor)
    return mean.astype("float32"), std.astype("float32")


def imagenet_classes():
    """ImageNet-1k's 1,000 classes in the published classifiers' order: ``(synsets, names)``,
    the WordNet ids and a short name each ("tench", "goldfish", ...); see data/README.md."""
    with open(_IMAGENET) as f:
        found = json.load(f)
    return found["synsets"], found["names"]
