"""How the commands write and read files: whole or not at all (``reszoo.io``), and one
clear line when they cannot."""

import contextlib
import fcntl
import json
import os

import keras

from reszoo import io  # (importing reszoo registers its layers for deserialization)
from reszoo.io import fsync_dir, fsync_tree, keras_file_problem, remove_stale_tmp, tmp_name  # noqa: F401
from training.common.command import CommandError, first_line, os_error_message  # noqa: F401


def atomic_write(path, write):
    """``reszoo.io.atomic_write``, with a full disk or unwritable folder as a ``CommandError``
    (one line); the old ``path`` is untouched."""
    try:
        return io.atomic_write(path, write)
    except OSError as err:
        raise CommandError(os_error_message(err, path)) from None


@contextlib.contextmanager
def folder_lock(folder):
    """Hold ``folder``'s lock (``flock`` on the folder itself, so no file is left behind)
    while several processes read, change and replace one of its files: the next one waits."""
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_text(path, text):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def write_json(path, value, **dump_args):
    return write_text(path, json.dumps(value, **dump_args))


def save_model(model, path):
    """A whole ``.keras`` file (model, and the optimizer's state when compiled)."""
    return atomic_write(path, model.save)


def read_json(path):
    """The JSON in ``path``; ``CommandError`` naming the file when it is unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CommandError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandError(f"{path} is corrupt ({type(err).__name__}: {err})") from None


def load_model(path, what):
    """``keras.saving.load_model(path)`` with reszoo's layers registered, or a
    ``CommandError`` that says what is wrong with the file; ``what`` names it (a flag)."""
    problem = keras_file_problem(path)
    if problem:
        raise CommandError(f"{what}: {path} {problem}", 2 if problem == "no such file" else 1)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # keras raises many kinds for a foreign or damaged file
        raise CommandError(f"{what}: cannot load {path}: {type(err).__name__}: "
                           f"{first_line(err)}") from None
