"""Data for the lab's training experiments: the embedded UCI digits, or a prepared tfds
dataset such as cifar10 or an image folder (read by ``training.data``, which says how to
prepare it), as numpy arrays: raw (``arrays``) or standardised per channel with the training
split's statistics (``load``)."""

import numpy as np

from reszoo.datasets import channel_stats, load_digits


def arrays(dataset="digits", data_dir=None, image_size=None, limit=None):
    """``(x, y, x_test, y_test, class_names)`` in raw pixel units; ``limit`` keeps the first N
    of each split. The digits need no TensorFlow; other datasets come through
    ``training.data`` (a ``DataError`` says what is wrong)."""
    if dataset == "digits":
        (x, y), (x_test, y_test), names = load_digits()
        return x[:limit], y[:limit].astype("int32"), x_test[:limit], y_test[:limit].astype("int32"), names
    from training import data as data_lib  # TensorFlow, for the datasets that need it

    data = data_lib.load(dataset, data_dir, image_size)
    return (*data_lib.in_memory(data, limit), data.class_names)


def load(dataset="digits", data_dir=None, limit=None):
    """``(x, y, x_test, y_test, num_classes)``, standardised with the training split's
    per-channel statistics."""
    x, y, x_test, y_test, names = arrays(dataset, data_dir, limit=limit)
    mean, std = channel_stats(x)
    scale = lambda a: ((a - mean) / std).astype("float32")
    return scale(x), y, scale(x_test), y_test, len(names)


TITLES = {"digits": "UCI digits", "cifar10": "CIFAR-10"}


def title(dataset):
    return TITLES.get(dataset, dataset)
