"""Data for the lab's training experiments: the embedded UCI digits, or a prepared tfds
dataset such as cifar10 (read by ``training.data``, which says how to prepare it), as numpy
arrays standardised per channel with the training split's statistics."""

import numpy as np

from reszoo.datasets import channel_stats


def load(dataset="digits", data_dir=None, limit=None):
    """``(x, y, x_test, y_test, num_classes)``; ``limit`` keeps the first N of each split."""
    if dataset == "digits":
        from reszoo.datasets import load_digits

        (x, y), (x_test, y_test), names = load_digits()
    else:
        from training import data as data_lib

        data = data_lib.load(dataset, data_dir)
        if not isinstance(data.train, tuple):
            raise data_lib.DataError(f"{dataset} does not fit in memory; the lab trains on in-memory data")
        (x, y), names = data.train, data.class_names
        pairs = list(data.test.take(limit or -1).as_numpy_iterator())
        x_test, y_test = np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    x, y, x_test, y_test = x[:limit], y[:limit], x_test[:limit], y_test[:limit]
    mean, std = channel_stats(x)
    scale = lambda a: ((a - mean) / std).astype("float32")
    return scale(x), y.astype("int32"), scale(x_test), y_test.astype("int32"), len(names)


TITLES = {"digits": "UCI digits", "cifar10": "CIFAR-10"}


def title(dataset):
    return TITLES.get(dataset, dataset)
