"""Small real data shipped with reszoo (numpy only, any backend)."""

import os

import numpy as np

_DIGITS = os.path.join(os.path.dirname(__file__), "data", "digits.npz")


def load_digits():
    """The UCI handwritten digits (CC BY 4.0): ``(x_train, y_train), (x_test, y_test),
    class_names`` with uint8 images of shape [N, 8, 8, 1] holding intensities 0-16."""
    with np.load(_DIGITS) as data:
        return ((data["x_train"], data["y_train"]), (data["x_test"], data["y_test"]),
                [str(c) for c in data["class_names"]])
