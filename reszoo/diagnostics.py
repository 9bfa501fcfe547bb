"""Residual diagnostics for any functional Keras model while it trains: the lab's
measurements (``reszoo.lab``) as one callback, ``Diagnostics``, for reszoo's nets,
keras.applications' and keras-hub's.

What is measured, on a fixed probe batch, every ``every_n_steps`` steps:

- gradient norm per stage (the RMS of each conv kernel's ||dL/dW||) and the first residual
  stage's over the last's: the gradient highway (He et al. 2016, Eq. 5; the lab's experiment 1);
- per block, the variance of the residual branch over that of the skip it is added to, and its
  growth with depth (the lab's experiment 2; Veit et al. 2016);
- drift of the BatchNorm running statistics per stage since the last measurement;
and every ``lesion_every_n_epochs`` epochs, the probe batch's error with each residual block
deleted (its merge returns the skip alone), and the effective depth: how many blocks matter
(Veit et al. 2016, the lab's experiment 5).

Residual blocks are found in the graph: every ``Add`` (or DenseNet's ``Concatenate``) of two
tensors, its branch being the input with the longer path from the model's input; stages are
runs of blocks at one spatial size (layer names by ``reszoo.naming`` where they follow it).
"""

import dataclasses
import json
import os
import weakref

import keras
import numpy as np

from reszoo import io as rio, layout, naming

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
LESION_TOLERANCE = 0.02  # a block "matters" when deleting it raises the probe error by more
DIAGNOSTICS_FILE = "diagnostics.jsonl"


@dataclasses.dataclass(frozen=True)
class Block:
    """A residual block: its merge layer, the skip and branch tensors it merges, its stage."""

    name: str
    stage: int
    skip: object
    branch: object
    layer: object
    skip_index: int


@dataclasses.dataclass(frozen=True)
class Structure:
    """Blocks in depth order, each conv kernel's stage (0: the stem), BatchNorm layers per stage."""

    blocks: tuple
    kernels: tuple  # (stage, variable)
    norms: tuple  # (stage, layer)
    stages: tuple  # stage indices, in order


def _producer(tensor):
    return tensor._keras_history[0], tensor._keras_history[1]


def _path_lengths(model):
    """Longest path (in layers) from the model's inputs to each tensor, by id."""
    lengths = {id(t): 0 for t in model.inputs}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            inputs = [t for t in node.input_tensors if id(t) in lengths]
            if not inputs and node.input_tensors:
                continue
            depth = 1 + max((lengths[id(t)] for t in inputs), default=0)
            for t in node.output_tensors:
                lengths[id(t)] = max(lengths.get(id(t), 0), depth)
    return lengths


def _spatial(tensor, data_format):
    shape = tuple(tensor.shape)
    return layout.spatial(shape, data_format) if len(shape) == 4 else None


def structure(model):
    """The residual structure of a functional ``model``: a ``Structure``. A model without
    merges (a plain net) has no blocks; its stages come from the naming rule."""
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError("reszoo.diagnostics needs a functional Keras model (built from keras.Input)")
    lengths = _path_lengths(model)
    merges = [layer for layer in model.layers if isinstance(layer, (keras.layers.Add, keras.layers.Concatenate))
              and isinstance(layer.input, (list, tuple)) and len(layer.input) == 2]
    blocks, sizes = [], []
    data_format = layout.of(model)
    for layer in merges:
        inputs = list(layer.input)
        depths = [lengths.get(id(t), 0) for t in inputs]
        skip_index = int(np.argmin(depths))
        size = _spatial(layer.output, data_format)
        if size not in sizes:
            sizes.append(size)
        blocks.append(Block(layer.name, sizes.index(size) + 1, inputs[skip_index], inputs[1 - skip_index], layer,
                            skip_index))
    stage_of = _layer_stages(model, blocks)
    kernels = tuple((stage_of[layer.name], layer.kernel) for layer in model.layers
                    if isinstance(layer, keras.layers.Conv2D) and layer.name in stage_of
                    and not naming.is_shortcut(layer.name))
    norms = tuple((stage_of[layer.name], layer) for layer in model.layers
                  if hasattr(layer, "moving_mean") and layer.name in stage_of)
    stages = tuple(sorted({s for s, _ in kernels}))
    return Structure(tuple(blocks), kernels, norms, stages)


def _layer_stages(model, blocks):
    """Each layer's stage, up to the last block (the head has none): by ``reszoo.naming``
    (``convN_``: N - 1, the stem 0) where every conv follows it, else by position between
    the stages' last merges (the layers up to the first block's skip are the stem)."""
    layers = model.layers
    convs = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    if convs and all(naming.stage(layer.name) is not None for layer in convs):
        return {layer.name: naming.stage(layer.name) - naming.STEM for layer in layers
                if naming.stage(layer.name) is not None and not naming.is_head(layer.name)}
    if not blocks:
        return {layer.name: 1 for layer in layers}
    index = {layer.name: i for i, layer in enumerate(layers)}
    stem_end = index[_producer(blocks[0].skip)[0].name]
    ends = {}
    for block in blocks:
        ends[block.stage] = index[block.name]
    stages = {}
    for i, layer in enumerate(layers):
        if i <= stem_end:
            stages[layer.name] = 0
            continue
        for stage in sorted(ends):
            if i <= ends[stage]:
                stages[layer.name] = stage
                break
    return stages


_COMPILED = weakref.WeakKeyDictionary()  # model -> {(loss, variables): TensorFlow function}


def gradients(model, loss, x, y, variables, compiled=False):
    """dL/dv for each of ``variables`` (trainable variables of ``model``), the loss on
    ``(x, y)`` in training mode, as NumPy arrays. Nothing is updated: BatchNorm's moving
    statistics and random states go through ``stateless_call`` and are dropped.
    ``compiled``: on TensorFlow, trace the computation once per model (for repeated calls)."""
    loss = keras.losses.get(loss) if isinstance(loss, str) else loss
    trainable = model.trainable_variables
    index = {id(v): i for i, v in enumerate(trainable)}
    wanted = [index[id(v)] for v in variables]
    backend = keras.backend.backend()

    def value(params, fixed, x, y):
        logits, _ = model.stateless_call(params, fixed, x, training=True)
        return loss(y, keras.ops.cast(logits, "float32"))

    fixed = [v.value for v in model.non_trainable_variables]
    if backend == "tensorflow":
        import tensorflow as tf

        def tf_gradients(params, fixed, x, y):
            with tf.GradientTape() as tape:
                tape.watch(params)
                total = value(params, fixed, x, y)
            return tape.gradient(total, [params[i] for i in wanted])

        if compiled:
            functions = _COMPILED.setdefault(model, {})
            tf_gradients = functions.setdefault((id(loss), tuple(wanted)), tf.function(tf_gradients))
        grads = tf_gradients([v.value for v in trainable], fixed, tf.convert_to_tensor(x), tf.convert_to_tensor(y))
    elif backend == "jax":
        import jax

        grads = jax.grad(value)([v.value for v in trainable], fixed, x, y)
        grads = [grads[i] for i in wanted]
    elif backend == "torch":
        import torch

        params = [v.value.detach().requires_grad_(True) for v in trainable]
        grads = torch.autograd.grad(value(params, fixed, x, y), [params[i] for i in wanted])
        grads = [g.detach().cpu() for g in grads]
    else:
        raise NotImplementedError(f"reszoo.diagnostics supports tensorflow, jax and torch, not {backend}")
    return [np.asarray(g, "float64") for g in grads]


def stage_gradients(model, found, loss, x, y, compiled=False):
    """{stage: RMS over the stage's conv kernels of ||dL/dW||_F}, and the per-kernel norms."""
    kernels = [v for _, v in found.kernels]
    norms = np.array([float(np.linalg.norm(g)) for g in gradients(model, loss, x, y, kernels, compiled)])
    per_stage = {}
    for stage in found.stages:
        values = norms[[i for i, (s, _) in enumerate(found.kernels) if s == stage]]
        per_stage[stage] = float(np.sqrt(np.mean(np.square(values))))
    return per_stage, norms


def gradient_ratio(per_stage):
    """The first residual stage's gradient norm over the last's (the stem left out)."""
    stages = [s for s in sorted(per_stage) if s > 0] or sorted(per_stage)
    return per_stage[stages[0]] / max(per_stage[stages[-1]], 1e-30)


def branch_ratios(model, found, x, probe=None):
    """Per block, Var(branch) / Var(skip) on ``x`` (inference mode); ``probe`` is the model of
    the merges' inputs (``branch_probe``), built once and reused."""
    if not found.blocks:
        return np.zeros(0)
    probe = probe or branch_probe(model, found)
    outputs = probe.predict_on_batch(x)
    ratios = []
    for skip, branch in zip(outputs[0::2], outputs[1::2]):
        ratios.append(float(np.var(np.asarray(branch, "float64")) / max(np.var(np.asarray(skip, "float64")), 1e-30)))
    return np.array(ratios)


def branch_probe(model, found):
    return keras.Model(model.inputs, [t for block in found.blocks for t in (block.skip, block.branch)])


def growth(ratios):
    """The branch ratio's growth per block: exp of the least-squares slope of log(ratio)."""
    if len(ratios) < 2:
        return 1.0
    logs = np.log(np.maximum(ratios, 1e-30))
    return float(np.exp(np.polyfit(np.arange(len(ratios)), logs, 1)[0]))


def bn_statistics(found):
    """{stage: (moving means, moving stds)} of the BatchNorm layers, concatenated, as NumPy."""
    stats = {}
    for stage, layer in found.norms:
        mean, var = np.asarray(layer.moving_mean, "float64"), np.asarray(layer.moving_variance, "float64")
        means, stds = stats.get(stage, ([], []))
        stats[stage] = (means + [mean], stds + [np.sqrt(var + 1e-5)])
    return {s: (np.concatenate(m), np.concatenate(d)) for s, (m, d) in stats.items()}


def bn_drift(before, after):
    """{stage: ||Δ mean|| / ||std||}: how far each stage's running means moved, in units of
    its running standard deviations."""
    return {s: float(np.linalg.norm(after[s][0] - before[s][0]) / max(np.linalg.norm(after[s][1]), 1e-30))
            for s in after if s in before}


def _lesioned(block):
    """A context in which ``block``'s merge returns its skip alone (concatenates zeros in place
    of a DenseNet block's new features)."""
    return _patched([block], lambda i, inputs, call: _skip_only(block, inputs, call))


def _skip_only(block, inputs, call):
    if isinstance(block.layer, keras.layers.Add):
        return inputs[block.skip_index]
    return call([t if i == block.skip_index else keras.ops.zeros_like(t) for i, t in enumerate(inputs)])


def _patched(blocks, merge):
    """A context in which each block's merge layer computes ``merge(i, inputs, original call)``."""
    import contextlib

    @contextlib.contextmanager
    def patched():
        saved = [block.layer.call for block in blocks]
        for i, (block, call) in enumerate(zip(blocks, saved)):
            block.layer.call = lambda inputs, *args, i=i, call=call, **kwargs: merge(i, inputs, call)
        try:
            yield
        finally:
            for block, call in zip(blocks, saved):
                block.layer.call = call

    return patched()


def _labels(y):
    """Class indices of integer or one-hot (or mixed) labels."""
    y = np.asarray(y)
    return y.argmax(-1) if y.ndim > 1 else y


def error(model, x, y, batch_size=256):
    """Top-1 error of ``model`` on ``(x, y)``, in inference mode, called eagerly in batches."""
    logits = [np.asarray(model(x[i:i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return float(np.mean(np.concatenate(logits).argmax(-1) != _labels(y)))


class LesionProbe:
    """The model's error with any one residual block deleted, from one compiled function: on
    TensorFlow, each merge is traced once with a switch on a variable that names the deleted
    block (-1: none), so each lesion is a graph call; other backends call the model eagerly."""

    def __init__(self, model, found):
        self.model, self.found = model, found
        self.compiled = keras.backend.backend() == "tensorflow"
        if self.compiled:
            import tensorflow as tf

            self.deleted = tf.Variable(-1, dtype="int32", trainable=False)

            def merge(i, inputs, call):
                return tf.cond(tf.equal(self.deleted, i), lambda: _skip_only(found.blocks[i], inputs, call),
                               lambda: call(inputs))

            self._merge = merge
            self._forward = tf.function(lambda x: model(x, training=False))

    def _logits(self, x):
        if not self.compiled:
            return np.asarray(self.model(x, training=False))
        with _patched(self.found.blocks, self._merge):  # seen only while the function is traced
            return np.asarray(self._forward(x))

    def errors(self, x, y):
        """``{"none": error, block name: error}``, as ``lesion_errors``."""
        labels = _labels(y)
        if not self.compiled:
            return lesion_errors(self.model, self.found, x, y)
        result = {}
        for i, name in [(-1, "none"), *enumerate(b.name for b in self.found.blocks)]:
            self.deleted.assign(i)
            result[name] = float(np.mean(self._logits(x).argmax(-1) != labels))
        self.deleted.assign(-1)
        return result


def lesion_errors(model, found, x, y):
    """The error on ``(x, y)`` with each residual block deleted in turn: ``{"none": error,
    block name: error}`` (Veit et al. 2016). The model is called eagerly, its weights untouched."""
    errors = {"none": error(model, x, y)}
    for block in found.blocks:
        with _lesioned(block):
            errors[block.name] = error(model, x, y)
    return errors


def effective_depth(errors, tolerance=LESION_TOLERANCE):
    """How many blocks matter: those whose deletion raises the error by more than ``tolerance``."""
    return sum(1 for name, e in errors.items() if name != "none" and e - errors["none"] > tolerance)


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
        self._found = self._probe = self._lesions = self._bn = self._writer = None
        self._step = 0
        self._epoch = 0

    @property
    def path(self):
        return os.path.join(self.log_dir, DIAGNOSTICS_FILE) if self.log_dir else None

    def on_train_begin(self, logs=None):
        if self.log_dir:
            os.makedirs(self.log_dir, exist_ok=True)
        self._found = structure(self.model)
        self._probe = branch_probe(self.model, self._found) if self._found.blocks else None
        self._lesions = LesionProbe(self.model, self._found) if self._found.blocks else None
        self._bn = bn_statistics(self._found)
        self.records = [r for r in read(self.path) if r["step"] <= self._initial_step()] if self.path else []
        self._step = self._initial_step()

    def _initial_step(self):
        iterations = getattr(self.model.optimizer, "iterations", None)
        return int(np.asarray(iterations)) if iterations is not None else 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self._step % self.every_n_steps == 0:
            self.measure()

    def on_epoch_end(self, epoch, logs=None):
        if self.lesion_every_n_epochs and (epoch + 1) % self.lesion_every_n_epochs == 0 and self._found.blocks:
            errors = self._lesions.errors(self.x, self.y)
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
