import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
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
