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
