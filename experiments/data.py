"""The embedded UCI digits, standardised, for the lab's training experiments."""


def load():
    import numpy as np

    from reszoo.datasets import load_digits

    (x, y), (x_test, y_test), _ = load_digits()
    mean, std = x.mean(), x.std()
    scale = lambda a: ((a.astype("float32") - mean) / std).astype("float32")
    return scale(x), y, scale(x_test), y_test, np.unique(y).size
