"""One training run's folder (``--model_dir``): its layout, its lock, and checkpoints that
survive a kill at any instant.

    model_dir/
      flags.json               the flags that define the run (written when it starts)
      .lock                    held by the training that uses the folder (flock)
      backup/epoch-000012/     a checkpoint generation, renamed into place whole:
        checkpoint.keras         the model and its optimizer's state
        state.json               epochs done, the history, the best score and its epoch
      best.keras               the model of the best validation accuracy so far
      last.keras               the finished model
      task.npz                 with --adapters: the task alone (reszoo.transfer.load_task)
      history.csv              one row per epoch, rewritten from the checkpoint's history
      results.json             the final evaluation
      batch.png                with --show_batch: the first training batch, augmented
      diagnostics.jsonl        with --diagnostics: reszoo.diagnostics' measurements
      logs/                    TensorBoard

At the end of every good epoch the run writes, in this order: ``best.keras`` (when the score
improved), a new checkpoint generation (which records that score), ``history.csv``. Each is
written whole and renamed into place (``training.common.files``), and the two newest generations
are kept (more with ``--checkpoint_hist``, for ``validate --average``), so whenever the process dies the folder holds a complete checkpoint to resume from,
the best score travels with it, and ``best.keras`` is never worse than the score it records.
"""

import contextlib
import csv
import dataclasses
import errno
import io
import json
import math
import os
import re
import shutil
import sys
import warnings

from reszoo.diagnostics import DIAGNOSTICS_FILE
from reszoo.weights import RUN_MODELS
from training.common import files
from training.common.layout import (BACKUP, BATCH, CHECKPOINT, FLAGS_FILE, HISTORY, LOCK_FILE, LOGS,  # noqa: F401
                                    RESULTS, STATE, TASK)
from training.common.files import CommandError

LAST, BEST = RUN_MODELS  # what reszoo.create_model(weights=model_dir) loads, in this order
KEEP = 2  # checkpoint generations kept by default (--checkpoint_hist): the newest, and the one before in case it
# is damaged
MONITOR = "val_accuracy"
_GENERATION = re.compile(r"epoch-(\d{6,})")


def generation_name(epochs_done):
    return f"epoch-{epochs_done:06d}"


@dataclasses.dataclass(frozen=True)
class State:
    """What a checkpoint records beside the weights: epochs done, their logs, the best
    ``MONITOR`` score so far and the epoch (0-based) that reached it."""

    epoch: int = 0
    history: tuple = ()
    best: float = None
    best_epoch: int = None

    def to_json(self):
        return {"epoch": self.epoch, "history": list(self.history), "best": self.best,
                "best_epoch": self.best_epoch}

    @classmethod
    def from_json(cls, value):
        return cls(int(value["epoch"]), tuple(value["history"]), value["best"], value["best_epoch"])


class RunFolder:
    """The folder of one run. Nothing is written until ``start``."""

    def __init__(self, path):
        self.path = os.path.normpath(path)
        self._lock_fd = None

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def backup(self):
        return self.file(BACKUP)

    def check_writable(self):
        """A usage error, before anything is done, when the folder cannot hold a run."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise CommandError(f"--model_dir={self.path} is a file, not a folder", 2)
        existing = self.path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing) or "."
        if not os.path.isdir(existing):
            raise CommandError(f"--model_dir={self.path}: {existing} is a file, not a folder", 2)
        if not os.access(existing, os.W_OK | os.X_OK):
            why = "is on a read-only file system" if _read_only(existing) else "is not writable"
            raise CommandError(f"--model_dir={self.path}: {existing} {why}", 2)

    def previous_flags(self):
        """The flags of the run this folder holds, or None."""
        path = self.file(FLAGS_FILE)
        if not os.path.exists(path):
            return None
        try:
            value = files.read_json(path)
        except CommandError as err:
            raise CommandError(f"{err}; pass --overwrite to start a new run here, or use another --model_dir", 2) from None
        if not isinstance(value, dict):
            raise CommandError(f"{path} is corrupt (not a JSON object); pass --overwrite or use another --model_dir", 2)
        return value

    def plan(self, run_flags, *, overwrite, allow_changes, ignored, changeable):
        """How a run with ``run_flags`` uses this folder: "new", "resume", "change" (resume
        with flags in ``changeable`` changed) or "overwrite". Keys in ``ignored`` never
        count. Raises a usage error when the folder holds a run with other flags."""
        previous = self.previous_flags()
        if overwrite:
            return "overwrite" if previous is not None or os.path.isdir(self.backup) else "new"
        if previous is None:
            return "new"
        changed = sorted(k for k in set(previous) | set(run_flags)
                         if previous.get(k) != run_flags.get(k) and k not in ignored)
        if not changed:
            return "resume"
        fixed = [k for k in changed if k not in changeable]
        if allow_changes and not fixed:
            return "change"
        shown = ", ".join(f"--{k}" for k in changed)
        if allow_changes:
            raise CommandError(f"{self.path} holds a run with other {', '.join('--' + k for k in fixed)}, which "
                               "a resumed run cannot change; pass --overwrite to start again, or use another "
                               "--model_dir", 2)
        hint = " or --allow_flag_changes to continue it with the new values" if not fixed else ""
        raise CommandError(f"{self.path} holds a run with other flags ({shown}); use another --model_dir, "
                           f"pass --overwrite to start again{hint}", 2)

    def lock(self):
        """Take the folder for this process (released when it exits, even by SIGKILL)."""
        import fcntl

        try:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(self.file(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise CommandError(f"--model_dir: {files.os_error_message(err, self.path)}", 2) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = _read_pid(self.file(LOCK_FILE))
            raise CommandError(f"{self.path} is in use by another training{f' (pid {holder})' if holder else ''}; "
                               "wait for it to end, or use another --model_dir", 2) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for folder in (self.path, self.backup):
            files.remove_stale_tmp(folder, only_dead=False)

    def start(self, run_flags, plan):
        """Record the run's flags; with ``plan`` "overwrite", first delete the run the folder
        held (its checkpoints go first, so a kill meanwhile leaves no run to resume)."""
        if plan == "overwrite":
            trash = files.tmp_name(self.file("overwritten"))
            os.makedirs(trash, exist_ok=True)
            for name in (BACKUP, FLAGS_FILE, BEST, LAST, HISTORY, RESULTS, LOGS, BATCH, DIAGNOSTICS_FILE):
                if os.path.lexists(self.file(name)):
                    os.replace(self.file(name), os.path.join(trash, name))
            shutil.rmtree(trash, ignore_errors=True)
        if plan != "resume":
            files.write_json(self.file(FLAGS_FILE), run_flags, indent=2, sort_keys=True)


def _read_only(path):
    try:
        return os.statvfs(path).f_flag & os.ST_RDONLY != 0
    except OSError:
        return False


def _read_pid(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _signature(model):
    """What a checkpoint must match: the model's variables (path and shape) and the shapes
    of its optimizer's (Keras loads a mismatched optimizer with only a warning)."""
    optimizer = getattr(model, "optimizer", None)
    return {"variables": [[v.path, list(v.shape)] for v in model.variables],
            "optimizer": [list(v.shape) for v in optimizer.variables] if optimizer is not None else []}


def _difference(saved, current):
    """The first way a checkpoint's ``saved`` signature differs from ``current``, or None."""
    for (path, shape), (here, here_shape) in zip(saved["variables"], current["variables"]):
        if (path, shape) != (here, here_shape):
            return f"its variable {path} {tuple(shape)} is {here} {tuple(here_shape)} here"
    if len(saved["variables"]) != len(current["variables"]):
        return f"it has {len(saved['variables'])} model variables, this model {len(current['variables'])}"
    if saved["optimizer"] != current["optimizer"]:
        return (f"its optimizer state has {len(saved['optimizer'])} variables of other shapes than this "
                f"model's {len(current['optimizer'])}")
    return None


class Checkpoints:
    """Checkpoint generations in ``backup/``: ``epoch-NNNNNN/`` folders holding the model
    with its optimizer state and the run's ``State``, each renamed into place whole."""

    def __init__(self, folder, say=None, keep=KEEP):
        self.folder, self.keep = folder, keep
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))

    def generations(self):
        """``[(epochs done, path)]``, newest first."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        found = [(int(m.group(1)), os.path.join(self.folder, n))
                 for n in names if (m := _GENERATION.fullmatch(n))]
        return sorted(found, reverse=True)

    def restore(self, model):
        """Load the newest generation that is whole and fits ``model`` (compiled) into it;
        returns its ``State``, or ``State()`` when there is none. A damaged generation is
        skipped with one line; when generations exist but none can be loaded, a
        ``CommandError`` says why."""
        found = self.generations()
        if not found:
            return State()
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        current = _signature(model)
        reasons = []
        for epoch, path in found:
            try:
                state, signature = self.read_state(path)
                difference = _difference(signature, current)
                if difference:
                    raise CommandError(f"it is a checkpoint of another model ({difference})")
                checkpoint = os.path.join(path, CHECKPOINT)
                problem = files.keras_file_problem(checkpoint)
                if problem:
                    raise CommandError(f"{CHECKPOINT} {problem}")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model.load_weights(checkpoint)
            except (CommandError, OSError, ValueError, KeyError, TypeError) as err:
                reasons.append(f"{path}: {files.first_line(err)}")
                self.say(f"train: warning: skipping checkpoint {path}: {files.first_line(err)}")
                continue
            return state
        raise CommandError(f"no checkpoint in {self.folder} can be resumed ({reasons[0]}); pass --overwrite to "
                           "start the run again, or use another --model_dir")

    @staticmethod
    def read_state(path):
        value = files.read_json(os.path.join(path, STATE))
        return State.from_json(value["state"]), value["signature"]

    def save(self, model, state):
        """Write generation ``state.epoch`` whole, then prune all but the newest ``keep``."""
        os.makedirs(self.folder, exist_ok=True)

        def write(tmp):
            os.makedirs(tmp)
            model.save(os.path.join(tmp, CHECKPOINT))
            with open(os.path.join(tmp, STATE), "w") as f:
                json.dump({"state": state.to_json(), "signature": _signature(model)}, f)

        files.atomic_write(os.path.join(self.folder, generation_name(state.epoch)), write)
        for epoch, path in self.generations()[self.keep:]:
            if epoch != state.epoch:
                shutil.rmtree(path, ignore_errors=True)


class Recorder:
    """What a run writes at the end of each good epoch (see the module docstring for the
    order); ``write=False`` (a worker that is not the chief) only keeps the state."""

    def __init__(self, folder, checkpoints, state, write=True):
        self.folder, self.checkpoints, self.state, self.write = folder, checkpoints, state, write

    def end_epoch(self, model, epoch, logs):
        logs = {k: float(v) for k, v in logs.items() if k != "epoch"}
        best, best_epoch = self.state.best, self.state.best_epoch
        score = logs.get(MONITOR)
        improved = score is not None and math.isfinite(score) and (best is None or score > best)
        if improved:
            best, best_epoch = score, epoch
        state = State(epoch + 1, self.state.history + ({"epoch": epoch, **logs},), best, best_epoch)
        if self.write:
            try:
                if improved:
                    files.save_model(model, self.folder.file(BEST))
                self.checkpoints.save(model, state)
                files.write_text(self.folder.file(HISTORY), history_csv(state.history))
            except CommandError as err:
                kept = (f"the last complete checkpoint (epoch {self.state.epoch}) is intact" if self.state.epoch
                        else "no checkpoint was written yet")
                raise CommandError(f"{err}, at the end of epoch {epoch + 1}; {kept}: make room and re-run the "
                                   "same command to resume") from None
        self.state = state


def history_csv(history):
    """Rows of per-epoch logs as CSV: ``epoch`` first, then every key in sorted order."""
    keys = sorted({k for row in history for k in row} - {"epoch"})
    out = io.StringIO()
    writer = csv.DictWriter(out, ["epoch", *keys], lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return out.getvalue()
