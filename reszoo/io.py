"""Files written whole or not at all, and what is wrong with a ``.keras`` file.

Every file goes to a temporary name beside its final one, is flushed to disk (fsync) and
renamed into place, then its folder is flushed: a kill, Ctrl-C or full disk at any instant
leaves the old file or the new one, never a part. Keras writes ``.weights.h5`` and ``.keras``
files in place, and an interrupted h5py write leaves a file h5py cannot open (a full disk
inside h5py's C writer can even crash the process), so models are written through
``model.save(".keras")``, which assembles the weights in memory and writes them with Python's
file object: a full disk is an ``OSError`` like any other.
"""

import contextlib
import os
import shutil
import zipfile

TMP_PREFIX = ".tmp-"
PAUSE_ENV = "RESZOO_TEST_PAUSE"  # see pause_point


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


def remove_stale_tmp(folder, only_dead=True, of=None):
    """Delete temporary files and folders in ``folder`` left by processes that died (every
    one, with ``only_dead=False``, for a caller that holds the folder's lock); with ``of``,
    only those of the file named ``of``."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if of is not None and name.partition("-")[2].partition("-")[2].removesuffix(".old") != of:
            continue
        pid = pid_of_tmp(name) if is_tmp(name) else None
        if pid is None or (only_dead and (pid == os.getpid() or _alive(pid))):
            continue
        _discard(os.path.join(folder, name))


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
    beside it, which is flushed and renamed into place. On any error or interruption the
    temporary copy is removed and the old ``path`` is untouched; ``OSError`` propagates.
    Temporary copies of ``path`` left by a process that was killed are removed first."""
    tmp = tmp_name(path)
    remove_stale_tmp(os.path.dirname(path) or ".", of=os.path.basename(path))
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
    except BaseException:
        _discard(tmp)
        raise
    return path


def _replace_folder(new, old):
    """Folders cannot be renamed over a non-empty one: move the old aside, then delete it."""
    trash = tmp_name(old) + ".old"
    os.replace(old, trash)
    os.replace(new, old)
    shutil.rmtree(trash, ignore_errors=True)


def _discard(tmp):
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(tmp)


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
