"""How the commands write and read files: whole or not at all, and one clear line when they
cannot.

Every file is written under a temporary name beside its final one, flushed to disk (fsync)
and renamed into place, then its folder is flushed, so a kill, Ctrl-C or full disk at any
instant leaves either the old file or the new one, never a part. Keras itself writes
``.weights.h5`` and ``.keras`` files in place, and an interrupted h5py write leaves a file h5py
cannot open; a full disk inside h5py's C writer can even crash the process. ``save_model``
therefore goes through ``model.save(".keras")``, which assembles the weights in memory and
writes them with Python's file object, so a full disk is an ``OSError`` like any other.
"""

import contextlib
import errno
import json
import os
import zipfile

TMP_PREFIX = ".tmp-"
PAUSE_ENV = "RESZOO_TEST_PAUSE"  # see pause_point


class CommandError(Exception):
    """A problem the user can act on: the command prints it as one line and exits with
    ``code`` (2 for a usage error)."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def os_error_message(err, path):
    """One line for an ``OSError`` met while writing ``path``."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device of {path}"
    if err.errno == errno.EROFS:
        return f"{path} is on a read-only file system"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write {path}"
    return f"cannot write {path}: {err.strerror or err}"


def tmp_name(path):
    """The temporary name of ``path`` while it is written: hidden, beside it, with this
    process's id, ending as ``path`` does (Keras checks the extension)."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{name}")


def is_tmp(name):
    return name.startswith(TMP_PREFIX)


def pid_of_tmp(name):
    """The process id in a temporary name, or None if it has none."""
    try:
        return int(name[len(TMP_PREFIX):].split("-", 1)[0])
    except ValueError:
        return None


def remove_stale_tmp(folder, only_dead=True):
    """Delete temporary files and folders in ``folder`` left by processes that died (every
    one, with ``only_dead=False``, for a caller that holds the folder's lock)."""
    import shutil

    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid = pid_of_tmp(name) if is_tmp(name) else None
        if pid is None or (only_dead and (pid == os.getpid() or _alive(pid))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(folder):
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path):
    """Flush a file's data to disk, whoever wrote it (fsync works per file, on any descriptor)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder):
    for root, _, names in os.walk(folder):
        for name in names:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


def pause_point(path, when):
    """Where tests fault a write: with ``RESZOO_TEST_PAUSE`` set to ``when:name`` (``when``
    "write": before the new version of file ``name`` is written; "rename": when it is
    complete under its temporary name and the old one is still in place), the first such
    write of the process creates ``<tmp>.paused`` and waits until that file is deleted
    (the test filled the disk, say), or for the kill the test sends."""
    if os.environ.get(PAUSE_ENV) != f"{when}:{os.path.basename(path)}" or path in _paused:
        return
    import time

    _paused.add(path)
    marker = tmp_name(path) + ".paused"
    with open(marker, "w"):
        pass
    deadline = time.monotonic() + 600
    while os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.02)


_paused = set()


def atomic_write(path, write):
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file (or folder)
    beside it, which is flushed and renamed into place. Raises ``CommandError`` with one
    line when the disk is full or the folder not writable; the old ``path`` is untouched."""
    tmp = tmp_name(path)
    pause_point(path, "write")
    try:
        write(tmp)
        if os.path.isdir(tmp):
            fsync_tree(tmp)
        else:
            fsync_file(tmp)
        pause_point(path, "rename")
        if os.path.isdir(tmp) and os.path.isdir(path):
            _replace_folder(tmp, path)
        else:
            os.replace(tmp, path)
        fsync_dir(os.path.dirname(path))
    except OSError as err:
        _discard(tmp)
        raise CommandError(os_error_message(err, path)) from None
    except BaseException:
        _discard(tmp)
        raise
    return path


def _replace_folder(new, old):
    """Folders cannot be renamed over a non-empty one: move the old aside, then delete it."""
    import shutil

    trash = tmp_name(old) + ".old"
    os.replace(old, trash)
    os.replace(new, old)
    shutil.rmtree(trash, ignore_errors=True)


def _discard(tmp):
    import shutil

    if os.path.isdir(tmp) and not os.path.islink(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(tmp)


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


def keras_file_problem(path):
    """Why ``path`` cannot be a ``.keras`` file, or None if it looks whole: Keras reports a
    truncated zip as "File not found" and a foreign file as a zip error."""
    if not os.path.exists(path):
        return "no such file"
    if os.path.isdir(path):
        return "is a folder, not a .keras file"
    if not zipfile.is_zipfile(path):
        size = os.path.getsize(path)
        return "is empty" if size == 0 else f"is not a .keras file, or is truncated ({size:,} bytes, no zip directory)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"is corrupt ({err})"
    if bad is not None:
        return f"is corrupt (its member {bad} fails its checksum)"
    if "config.json" not in names:
        return "is a zip file but not a Keras model (no config.json)"
    return None


def load_model(path, what):
    """``keras.saving.load_model(path)`` with reszoo's layers registered, or a
    ``CommandError`` that says what is wrong with the file; ``what`` names it (a flag)."""
    import keras

    import reszoo  # noqa: F401  (registers reszoo's layers for deserialization)

    problem = keras_file_problem(path)
    if problem:
        raise CommandError(f"{what}: {path} {problem}", 2 if problem == "no such file" else 1)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # keras raises many kinds for a foreign or damaged file
        raise CommandError(f"{what}: cannot load {path}: {type(err).__name__}: "
                           f"{first_line(err)}") from None


def first_line(err):
    lines = [l for l in str(err).splitlines() if l.strip()]
    return lines[0] if lines else type(err).__name__
