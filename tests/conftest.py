import functools
import gc
import json
import os
import pathlib
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Two xdist workers share the cores (CI has 2): each TensorFlow, PyTorch and BLAS, the worker's
# own and those of the commands it starts (they inherit the environment), computes on one thread,
# where two a process would contend (the lab's digits test, two at once: 63-69 s against 51-53 s).
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

gc.disable()  # TensorFlow's modules imported out of the collector's way, as the commands import them
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import reszoo  # noqa: E402
from benchmarks.digits import digit_folder as digit_folder_of  # noqa: E402
from reszoo import factory  # noqa: E402

gc.freeze()
gc.enable()


@functools.lru_cache(maxsize=None)
def _registered(name):
    with factory.weights_to_come():  # zero convolution kernels: no He-normal draws for 100 nets
        return reszoo.create_model(name)


@pytest.fixture(scope="session")
def registered():
    """Each registered model in its default config, built once per test session, for tests of
    its structure (shapes, counts, cards, saving): its convolutions hold zeros, not random
    weights (their initializers are the default config's)."""
    return _registered


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups into the node ids
def pytest_collection_modifyitems(items):
    """Tests of full-size registered models share one xdist worker, so each model is built
    once per session (building the whole zoo takes about 3 minutes here). Tests marked ``slow``
    go first: xdist hands out its groups, then single tests in this order, so a slow one last
    in line would keep one worker busy while the other waits."""
    for item in items:
        if "registered" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("zoo"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


ROOT = pathlib.Path(__file__).resolve().parents[1]


def free_port():
    """A TCP port free on this machine now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_command(module, *args, cwd=ROOT, timeout=600, **env):
    """``python -m MODULE ARGS`` as a user runs it, output captured."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env})


USAGE_DRIVER = r"""
import contextlib, importlib, io, json, os, sys
from training import flags as run_flags
from training.common.command import import_body, parser
command = importlib.import_module(sys.argv[2])
if command.__name__ == "training.train":
    parse = parser(run_flags, command.__doc__, run_as=command.__name__, groups=run_flags.TRAIN_GROUPS,
                   aliases=run_flags.ALIASES)
else:
    command.define_flags()
    parse = parser(command, command.__doc__, run_as=command.__name__)
body = import_body(command.BODY)  # the command's heavy body, as command.run loads it
said = []
for args, env in json.loads(sys.argv[1]):
    saved = dict(os.environ)
    os.environ.update(env)
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            run_flags.FLAGS.unparse_flags()
            body.main(parse([command.__name__.rpartition(".")[2], *args]))
        except SystemExit as exit:
            code = exit.code
    os.environ.clear()
    os.environ.update(saved)
    said.append([code, err.getvalue()])
print("RESULT" + json.dumps(said))
"""


@pytest.fixture(scope="session")
def usage_errors():
    """``usage_errors([(args, env), ...], command="training.train")``: each ``COMMAND ARGS`` run
    through the command's own parser and main(), one after another in one fresh process
    (TensorFlow imported once, not once a case); for commands that stop before their work. A
    list of (exit code, stderr)."""

    def run(cases, command="training.train"):
        proc = subprocess.run([sys.executable, "-c", USAGE_DRIVER, json.dumps([[list(map(str, a)), e] for a, e in cases]),
                               command],
                              cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return [tuple(case) for case in json.loads(proc.stdout.split("RESULT", 1)[1])]

    return run


@pytest.fixture(scope="session")
def train():
    """``train(*args, timeout=600, **env)``: ``python -m training.train ARGS`` in a subprocess."""
    return functools.partial(run_command, "training.train")


@pytest.fixture(scope="session")
def digit_folder():
    """``digit_folder(root, digits)``: a folder of class sub-folders of grey digit PNGs (8x8)."""
    return digit_folder_of


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
