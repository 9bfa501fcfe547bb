import functools
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import reszoo  # noqa: E402


@functools.lru_cache(maxsize=None)
def _registered(name):
    return reszoo.create_model(name)


@pytest.fixture(scope="session")
def registered():
    """Each registered model in its default config, built once per test session."""
    return _registered


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


DEEPEST = ("resnet1202", "preact_resnet1001", "deepest")


def pytest_collection_modifyitems(items):
    """Tests on the ~4,000-layer nets share one xdist worker, so each is built once."""
    for item in items:
        if any(name in item.nodeid for name in DEEPEST):
            item.add_marker(pytest.mark.xdist_group("deepest"))


ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_command(module, *args, cwd=ROOT, timeout=600, **env):
    """``python -m MODULE ARGS`` as a user runs it, output captured."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


@pytest.fixture(scope="session")
def train():
    """``train(*args, timeout=600, **env)``: ``python -m training.train ARGS`` in a subprocess."""
    return functools.partial(run_command, "training.train")


def _digit_folder(root, digits):
    from PIL import Image

    from reszoo.datasets import load_digits

    (x, y), _, _ = load_digits()
    for d in digits:
        os.makedirs(root / f"digit{d}")
        for i, image in enumerate(x[y == d]):
            Image.fromarray((image[..., 0] * 15).astype("uint8")).save(root / f"digit{d}" / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def digit_folder():
    """``digit_folder(root, digits)``: a folder of class sub-folders of grey digit PNGs (8x8)."""
    return _digit_folder


def _image(value, mode="L", size=12):
    from PIL import Image

    rng = np.random.default_rng(value)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype("uint8")).convert(mode)


def make_image_folder(root, classes=("a", "b"), per_class=4, mode="L", ext="png"):
    """A folder of class sub-folders of random images (grey PNGs by default)."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _image(10 * c + i, mode).save(root / name / f"{i}.{ext}")
    return root


@pytest.fixture(scope="session")
def image_folder():
    """``image_folder(root, classes, per_class, mode, ext)``: see ``make_image_folder``."""
    return make_image_folder


@pytest.fixture(scope="session")
def random_image():
    """``random_image(seed, mode="L", size=12)``: a PIL image of random pixels."""
    return _image
