"""``Diagnostics``, the measurements as a training callback: every ``every_n_steps`` steps
(and lesions every ``lesion_every_n_epochs`` epochs) a record into ``diagnostics.jsonl`` and
TensorBoard, alarms when a measurement leaves its healthy band, and a summary at the end."""

import json
import os

import keras
import numpy as np

from reszoo import io as rio
from reszoo.diagnostics.graph import structure
from reszoo.diagnostics.measures import (Probe, bn_drift, bn_statistics, branch_ratios,
                                         effective_depth, gradient_ratio, growth, stage_gradients)

# Healthy bands, from the lab's own measurements (docs/diagnostics.md), each applied to the
# median of the last WINDOW measurements (one probe batch is noisy). The first/last stage
# gradient ratio: 2.2 for ResNet-56 and 116 for plain-56 at initialisation; on the digits
# 0.22-0.82 (medians of 3) for ResNet-56 throughout training, 0.057 for plain-56 in its first
# epoch (experiment 1's per-layer ratios at initialisation: 1.5-14 for ResNets, 1,500 for
# plain-56). The median block's Var(branch) / Var(skip): 0.40-1.8 for ResNet-56 through
# training (1.7 at initialisation, 0.49 pre-activation), 0.64 without normalisation (experiment 2).
GRADIENT_BAND = (0.1, 10.0)
BRANCH_BAND = (0.0, 10.0)
WINDOW = 3
DIAGNOSTICS_FILE = "diagnostics.jsonl"


def alarms(records, window=WINDOW):
    """The lines (beginning ``diagnostics:``) for the last of ``records`` (measurements), when
    the median of the last ``window`` measurements leaves its healthy band."""
    measured = [r for r in records if "gradient_ratio" in r][-window:]
    if len(measured) < window:
        return []
    step = measured[-1]["step"]
    lines = []
    ratio = float(np.median([r["gradient_ratio"] for r in measured]))
    if not GRADIENT_BAND[0] <= ratio <= GRADIENT_BAND[1]:
        how = "vanishing" if ratio < GRADIENT_BAND[0] else "exploding"
        lines.append(f"diagnostics: step {step}: gradient {how} towards the first stage: its norm is {ratio:.3g}x "
                     f"the last stage's (median of {window} measurements; healthy {GRADIENT_BAND[0]:g}-"
                     f"{GRADIENT_BAND[1]:g})")
    if all(r.get("branch_ratio") for r in measured):
        branch = float(np.median([np.median(r["branch_ratio"]) for r in measured]))
        if branch > BRANCH_BAND[1]:
            lines.append(f"diagnostics: step {step}: exploding residual branches: the median block's branch carries "
                         f"{branch:.3g}x its skip's variance (healthy up to {BRANCH_BAND[1]:g})")
    return lines


class Diagnostics(keras.callbacks.Callback):
    """The lab's measurements of a residual net, while it trains: add it to ``model.fit``.

    ``data``: a probe batch ``(x, y)`` in the model's loss format (held-out images, say 64);
    ``log_dir``: where ``diagnostics.jsonl`` goes (one JSON record a measurement, the file
    written whole and renamed into place), and TensorBoard's scalars and histograms
    (``tensorboard_dir``, default ``log_dir/diagnostics``); ``every_n_steps``:
    how often to measure; ``lesion_every_n_epochs``: how often to delete blocks one by one.
    Lines beginning ``diagnostics:`` report measurements outside their healthy band; a short
    table sums the run up at its end.
    """

    def __init__(self, data, log_dir=None, every_n_steps=100, lesion_every_n_epochs=5, loss=None, say=print,
                 tensorboard_dir=None):
        super().__init__()
        self.x, self.y = data
        self.log_dir = log_dir
        self.tensorboard_dir = tensorboard_dir or (os.path.join(log_dir, "diagnostics") if log_dir else None)
        self.every_n_steps = int(every_n_steps)
        self.lesion_every_n_epochs = int(lesion_every_n_epochs)
        self.loss = loss
        self.say = say
        self.records = []
        self._found = self._probe = self._bn = self._writer = None
        self._step = 0
        self._epoch = 0
        self._measured = None

    @property
    def path(self):
        return os.path.join(self.log_dir, DIAGNOSTICS_FILE) if self.log_dir else None

    def on_train_begin(self, logs=None):
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        self._found = structure(self.model)
        self._probe = Probe(self.model, self._found) if self._found.blocks else None
        self._bn = bn_statistics(self._found)
        self.records = [r for r in read(self.path) if r["step"] <= self._initial_step()] if self.path else []
        self._step = self._initial_step()
        self._measured = self._step

    def _initial_step(self):
        iterations = getattr(self.model.optimizer, "iterations", None)
        return int(np.asarray(iterations)) if iterations is not None else 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        """A measurement due after the last step is taken before this one: a hook at the end of
        a batch would make Keras wait for each step's logs (no asynchronous dispatch), which
        costs 3-7% of a fit on its own."""
        self._measure_if_due()
        self._step += 1

    def _measure_if_due(self):
        if self._step and self._step % self.every_n_steps == 0 and self._measured != self._step:
            self._measured = self._step
            self.measure()

    def on_epoch_end(self, epoch, logs=None):
        self._measure_if_due()
        if self.lesion_every_n_epochs and (epoch + 1) % self.lesion_every_n_epochs == 0 and self._found.blocks:
            errors = self._probe.errors(self.x, self.y)
            self._record({"step": self._step, "epoch": epoch + 1, "lesion_errors": errors,
                          "effective_depth": effective_depth(errors), "blocks_total": len(self._found.blocks)})

    def measure(self):
        """One record of gradients, branch ratios and BN drift, now."""
        loss = self.loss or getattr(self.model, "loss", None) or keras.losses.SparseCategoricalCrossentropy(
            from_logits=True)
        per_stage, _ = stage_gradients(self.model, self._found, loss, self.x, self.y, compiled=True)
        record = {"step": self._step, "epoch": self._epoch + 1,
                  "gradient_norm": {str(s): v for s, v in per_stage.items()},
                  "gradient_ratio": gradient_ratio(per_stage)}
        if self._found.blocks:
            ratios = branch_ratios(self.model, self._found, self.x, self._probe)
            record.update(branch_ratio=ratios.tolist(), branch_growth=growth(ratios),
                          blocks=[b.name for b in self._found.blocks])
        now = bn_statistics(self._found)
        record["bn_drift"] = {str(s): v for s, v in bn_drift(self._bn, now).items()}
        self._bn = now
        self._record(record)
        for line in alarms(self.records):
            self.say(line)
        return record

    def _record(self, record):
        self.records.append(record)
        if not self.path:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records)
        rio.atomic_write(self.path, lambda tmp: _write_text(tmp, text))
        self._tensorboard(record)

    def _tensorboard(self, record):
        """Scalars and histograms in ``tensorboard_dir`` (TensorFlow's summary writer, where
        TensorFlow is installed)."""
        try:
            import tensorflow as tf
        except ImportError:
            return
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.tensorboard_dir)
        with self._writer.as_default(step=record["step"]):
            for key in ("gradient_ratio", "branch_growth", "effective_depth"):
                if key in record:
                    tf.summary.scalar(f"diagnostics/{key}", record[key])
            for key in ("gradient_norm", "bn_drift"):
                for stage, value in record.get(key, {}).items():
                    tf.summary.scalar(f"diagnostics/{key}/stage{stage}", value)
            if record.get("branch_ratio"):
                tf.summary.histogram("diagnostics/branch_ratio", np.array(record["branch_ratio"]))
        self._writer.flush()

    def on_train_end(self, logs=None):
        for line in summary(self.records):
            self.say(line)


def _write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def read(path):
    """The records of a ``diagnostics.jsonl`` ([] when there is none)."""
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summary(records):
    """A short table of the last measurements (lines)."""
    measured = [r for r in records if "gradient_norm" in r]
    if not measured:
        return []
    last = measured[-1]
    lines = [f"diagnostics summary ({len(measured)} measurements, last at step {last['step']}):",
             "  stage  gradient norm  BN drift"]
    for stage, value in last["gradient_norm"].items():
        drift = last["bn_drift"].get(stage)
        lines.append(f"  {stage:>5}  {value:13.4g}  {'' if drift is None else f'{drift:8.4f}'}")
    lines.append(f"  first/last stage gradient ratio {last['gradient_ratio']:.3g}"
                 + (f"; branch/skip variance median {np.median(last['branch_ratio']):.3g}, growth "
                    f"{last['branch_growth']:.3g}x a block" if last.get("branch_ratio") else ""))
    lesions = [r for r in records if "effective_depth" in r]
    if lesions:
        lines.append(f"  effective depth {lesions[-1]['effective_depth']} of {lesions[-1]['blocks_total']} blocks")
    alarmed = sum(len(alarms(measured[:i + 1])) for i in range(len(measured)))
    lines.append(f"  {alarmed} alarm(s)")
    return lines
