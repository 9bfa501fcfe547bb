"""Continual learning on a frozen residual backbone (Rebuffi, Bilen, Vedaldi 2017, "Learning
multiple visual domains with residual adapters"; 2018, parallel adapters).

A backbone is trained on the first task; each later task is then learned three ways, and
every task's test accuracy is measured after each step:

- ``head``: a new classifier on the frozen backbone;
- ``adapters``: residual adapters, the task's own BatchNorm and classifier, the backbone
  frozen (``reszoo.transfer.add_adapters``);
- ``full``: the whole network fine-tuned, one network shared by all tasks (each task keeps its
  classifier, but the features under it move: it forgets).

With a frozen backbone an earlier task's model does not change at all, so its accuracy stays
exactly what it was; ``full`` trains every weight of one network and forgets.
"""

import dataclasses

import keras
import numpy as np

from reszoo import naming, transfer
from reszoo.model import count_params

METHODS = ("head", "adapters", "full")


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: training and test images (raw pixels) with labels 0..n-1."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self):
        return int(max(self.y.max(), self.y_test.max())) + 1


def make_task(spec, x, y, x_test, y_test):
    """A task from the spec ``[transform:]classes``: classes "a-b" (relabelled 0..b-a) or
    "all"; transform "inverted" (max - x) or "rotated" (90 degrees)."""
    transform, _, classes = spec.rpartition(":")
    if transform not in ("", "inverted", "rotated"):
        raise ValueError(f"task {spec!r}: the transform must be inverted or rotated")
    if classes == "all":
        keep = np.unique(y)
    else:
        try:
            low, high = (int(v) for v in classes.split("-"))
        except ValueError:
            raise ValueError(f"task {spec!r}: classes are 'all' or a range such as 0-4") from None
        keep = np.arange(low, high + 1)
    if not np.isin(keep, y).all():
        raise ValueError(f"task {spec!r}: the data has classes {np.unique(y).tolist()}")
    top = float(max(x.max(), x_test.max()))

    def select(images, labels):
        mask = np.isin(labels, keep)
        images, labels = images[mask].astype("float32"), np.searchsorted(keep, labels[mask])
        if transform == "inverted":
            images = top - images
        elif transform == "rotated":
            images = np.rot90(images, 1, axes=(1, 2)).copy()
        return images, labels.astype("int32")

    return Task(spec, *select(x, y), *select(x_test, y_test))


def accuracy(model, task):
    return float(np.mean(np.argmax(model.predict(task.x_test, verbose=0), -1) == task.y_test))


def _train(model, task, epochs, learning_rate, batch_size, seed):
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(task.x, task.y, batch_size=batch_size, epochs=epochs, verbose=0)


def _copy(model):
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _stored(model, method):
    """Parameters a task needs stored of its own (BN moving statistics included)."""
    if method == "full":
        return int(model.count_params())
    layers = transfer.task_layers(model) if method == "adapters" else [model.get_layer(naming.CLASSIFIER)]
    owned = [layer.adapter if hasattr(layer, "adapter") else layer for layer in layers]
    return int(sum(np.prod(w.shape) for layer in owned for w in layer.weights))


def learn(build, tasks, epochs, learning_rate=0.05, batch_size=64, methods=METHODS, seed=0, say=print):
    """Train ``build(num_classes)`` on ``tasks[0]``, then each later task by each method.
    Returns ``{"tasks", "base_accuracy", method: {"accuracy": [[task j after step i]],
    "trained_params": [...], "stored_params": [...]}}``, with step 0 the backbone alone."""
    keras.utils.set_random_seed(seed)
    base = build(tasks[0].num_classes)
    _train(base, tasks[0], epochs, learning_rate, batch_size, seed)
    results = {"tasks": [t.name for t in tasks], "base_accuracy": accuracy(base, tasks[0])}
    say(f"backbone on {tasks[0].name}: test accuracy {results['base_accuracy']:.4f}")
    for method in methods:
        backbone = _copy(base)
        models = [backbone]
        trained, stored = [count_params(base)], [int(base.count_params())]
        curve = [[accuracy(backbone, tasks[0])]]
        for step, task in enumerate(tasks[1:], start=1):
            if method == "adapters":
                model = transfer.add_adapters(backbone, "parallel", num_classes=task.num_classes)
            else:
                model = transfer.replace_classifier(backbone, task.num_classes)
                if method == "head":
                    transfer.freeze(model, "backbone")
            _train(model, task, epochs, learning_rate, batch_size, seed + step)
            models.append(model)
            trained.append(count_params(model))
            stored.append(_stored(model, method))
            curve.append([accuracy(m, t) for m, t in zip(models, tasks)])
            say(f"{method}, after {task.name}: " + ", ".join(f"{t.name} {a:.4f}" for t, a in zip(tasks, curve[-1])))
        results[method] = {"accuracy": curve, "trained_params": trained, "stored_params": stored}
    return results
