"""The measurements on a probe batch: gradient norms per stage (He et al. 2016, Eq. 5),
Var(branch) / Var(skip) per block and its growth with depth, BatchNorm drift, and the error with
each block deleted (Veit et al. 2016); on the TensorFlow, JAX and PyTorch backends."""

import contextlib
import weakref

import keras
import numpy as np

LESION_TOLERANCE = 0.02  # a block "matters" when deleting it raises the probe error by more


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
            tf_gradients = functions.setdefault((id(loss), tuple(wanted)), tf.function(tf_gradients, autograph=False))
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
    """Per block, Var(branch) / Var(skip) on ``x`` (inference mode); ``probe`` is the
    ``Probe`` of the model, made once and reused."""
    if not found.blocks:
        return np.zeros(0)
    outputs = (probe or Probe(model, found)).merge_inputs(x)
    ratios = []
    for skip, branch in zip(outputs[0::2], outputs[1::2]):
        ratios.append(float(np.var(np.asarray(branch, "float64")) / max(np.var(np.asarray(skip, "float64")), 1e-30)))
    return np.array(ratios)


def branch_probe(model, found):
    """A model of the merges' inputs, each block's skip then its branch."""
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


class Probe:
    """The model in inference mode with any one residual block deleted, and the inputs of its
    merges, from one function: on TensorFlow, each merge is traced once with its branch scaled
    by 0 where a variable names its block (-1: none; an ``Add`` then returns the skip alone, a
    ``Concatenate`` zeros in place of the new features) and hands out its inputs, so a lesion
    or the branch ratios are a graph call, and one trace serves both; other backends call the
    model eagerly."""

    def __init__(self, model, found):
        self.model, self.found = model, found
        self.compiled = keras.backend.backend() == "tensorflow"
        self._branches = None
        if self.compiled:
            import tensorflow as tf

            self.deleted = tf.Variable(-1, dtype="int32", trainable=False)
            seen = {}

            def merge(i, inputs, call):
                seen[i] = inputs
                skip = found.blocks[i].skip_index
                kept = tf.cast(tf.not_equal(self.deleted, i), inputs[1 - skip].dtype)
                return call([t if j == skip else t * kept for j, t in enumerate(inputs)])

            def forward(x):
                seen.clear()
                logits = model(x, training=False)
                merged = [t for i, block in enumerate(found.blocks)
                          for t in (seen[i][block.skip_index], seen[i][1 - block.skip_index])]
                return logits, merged

            self._merge = merge
            self._forward = tf.function(forward, autograph=False)

    def _run(self, x):
        with _patched(self.found.blocks, self._merge):  # seen only while the function is traced
            return self._forward(x)

    def merge_inputs(self, x):
        """Each block's skip and branch on ``x``, as NumPy arrays, in block order."""
        if not self.compiled:
            self._branches = self._branches or branch_probe(self.model, self.found)
            return [np.asarray(t) for t in self._branches(x, training=False)]
        self.deleted.assign(-1)
        return [t.numpy() for t in self._run(x)[1]]

    def errors(self, x, y):
        """``{"none": error, block name: error}``, as ``lesion_errors``."""
        if not self.compiled:
            return lesion_errors(self.model, self.found, x, y)
        labels = _labels(y)
        result = {}
        for i, name in [(-1, "none"), *enumerate(b.name for b in self.found.blocks)]:
            self.deleted.assign(i)
            result[name] = float(np.mean(np.asarray(self._run(x)[0]).argmax(-1) != labels))
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
