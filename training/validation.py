"""What ``reszoo-validate`` measures (``training.validate`` parses the flags, then runs ``main``
here): a model's source loaded (a run, a ``.keras`` file, an export in any runtime, published
weights), the eval transform applied, top-1, top-5, the loss and per-class accuracy, the CSV row
and the confusion matrix. ``load_source`` and ``run`` are the same from Python.
"""

import copy
import csv
import io
import json
import math
import os
import sys
import warnings

import numpy as np
import tensorflow as tf
from absl import flags, logging

import reszoo
from reszoo import hub, transfer, weights as reszoo_weights
from reszoo.weights import WeightsError
from training import augment, data as data_lib, run_folder
from training.common import engines, files, layout, runtimes
from training.common.command import MAX_IMAGE_SIZE, CommandError
from training.common.layout import FLAGS_FILE, METADATA
from training.common.runtimes import RUNTIMES

FLAGS = flags.FLAGS
COLUMNS = ("model", "source", "dataset", "split", "images", "top1", "top1_err", "top5", "top5_err", "loss",
           "param_count", "img_size", "crop_pct", "interpolation")


class Source:
    """What is measured: ``predict(images) -> logits`` (float32 NumPy), its input side, the
    name and parameter count for the CSV, the run's flags (for the default dataset), the
    weights' eval transform (crop_pct, interpolation), and whether it takes other sizes."""

    def __init__(self, name, predict, side, channels, params, run_flags=None, crop_pct=1.0,
                 interpolation="bilinear", resizable=False, where=None, levels=(), published=False, model=None,
                 pool_above=None):
        self.name, self.predict, self.side, self.channels, self.params = name, predict, side, channels, params
        self.run_flags = run_flags or {}
        self.crop_pct, self.interpolation, self.resizable, self.where = crop_pct, interpolation, resizable, where
        self.levels = levels  # reszoo.model.features(model): (channels, stride) of each stage's output
        self.published = published  # ImageNet weights by name, which take colour images
        self.model = model  # the Keras model, where there is one
        self.pool_above = pool_above or side  # test-time pooling applies to larger images (timm's rule)

    def floats_per_image(self, side):
        """The largest tensor the model holds per image at ``side``: its input, or the widest
        stage output (a conv net's memory is a few of these at a time)."""
        return max([side * side * self.channels] + [math.ceil(side / stride) ** 2 * channels
                                                    for channels, stride in self.levels])


def keras_source(model, name, run_flags=None, where=None, **eval_transform):
    """A Keras model as a ``Source``: it takes any image side (a fully convolutional net up to its
    pooling), so --test_size may differ from its input."""
    augment.accept_any_size(model)
    levels = tuple((level["channels"], level["stride"]) for level in reszoo.features(model))
    return Source(name, lambda x: np.asarray(model.predict_on_batch(x), "float32"), model.input_shape[1],
                  model.input_shape[-1], reszoo.count_params(model), run_flags, resizable=True, where=where,
                  levels=levels, model=model, **eval_transform)


def test_pooled(source, side, say=print):
    """``source`` with timm's test-time pooling head (``reszoo.transfer.test_time_pool``) when
    ``side`` is above ``source.pool_above``, with windows of the map its training size gives;
    else ``source``, with a line saying why (as timm's validate.py goes on without it)."""
    if source.model is None:
        raise CommandError("--test_pool needs a Keras model (a run folder, a .keras file or --weights), not a "
                           "SavedModel", 2)
    if side <= source.pool_above:
        say(f"validate: --test_pool: {side}x{side} is not above the {source.pool_above}x{source.pool_above} the "
            "weights are tested at, so no test-time pooling")
        return source, False
    stride = source.levels[-1][1] if source.levels else 32
    cells = math.ceil(source.side / stride)
    try:
        model = transfer.test_time_pool(source.model, cells)
    except ValueError as err:
        raise CommandError(f"--test_pool: {err}", 2) from None
    augment.accept_any_size(model)
    pooled = copy.copy(source)
    pooled.predict = lambda x: np.asarray(model.predict_on_batch(x), "float32")
    pooled.model = model
    say(f"validate: test-time pooling: the classifier on every {cells}x{cells} window of the feature map "
        f"({source.side}x{source.side} images), logits' mean of average and maximum")
    return pooled, True


def load_source(model_dir, checkpoint, weights, average=0, save_average=None, runtime="saved_model"):
    """The ``Source`` of --model_dir or --weights (a run's ``average`` last checkpoints
    averaged; an export's file for ``runtime``), or a ``CommandError``."""
    if average and not (model_dir and os.path.isfile(os.path.join(os.path.expanduser(model_dir), FLAGS_FILE))):
        raise CommandError(f"--average={average} averages a run's checkpoints: give --model_dir=RUN_FOLDER", 2)
    if save_average and not average:
        raise CommandError("--save_average writes the model --average=N makes: give --average too", 2)
    if runtime != "saved_model" and (weights or not model_dir or os.path.isfile(model_dir)
                                     or os.path.isfile(os.path.join(model_dir, FLAGS_FILE))):
        raise CommandError(f"--runtime={runtime} measures a file of an export: give --model_dir=EXPORT_VERSION", 2)
    if weights:
        return _weights_source(weights)
    if not model_dir:
        raise CommandError("give --model_dir (a run folder, .keras file or SavedModel) or --weights=timm/ARCH.TAG", 2)
    path = os.path.normpath(os.path.expanduser(model_dir))
    if not os.path.exists(path):
        raise CommandError(f"--model_dir={model_dir}: no such file or folder", 2)
    if os.path.isfile(path):
        return keras_source(files.load_model(path, "--model_dir"), os.path.basename(path))
    if os.path.isfile(os.path.join(path, FLAGS_FILE)):
        run = files.read_json(os.path.join(path, FLAGS_FILE))
        if average:
            model, epochs = average_checkpoints(path, average, save_average)
            where = f"{path} (average of {epochs})"
        else:
            model, where = files.load_model(os.path.join(path, f"{checkpoint}.keras"), "--model_dir"), path
        return keras_source(model, run.get("model") or os.path.basename(path), run, where=where)
    return _saved_model_source(path, runtime)


def average_checkpoints(path, count, save_to=None):
    """The model of the run ``path`` with the mean weights of its newest ``count`` checkpoint
    generations, as timm's avg_checkpoints.py averages state dicts (every float variable, the
    BatchNorm statistics too, summed in float64), and which epochs they end ("epochs 8-10");
    ``save_to``: also written there (a new .keras file). Works while the run trains."""
    if save_to:
        if os.path.exists(save_to):
            raise CommandError(f"--save_average={save_to} exists; give a new file", 2)
        if not save_to.endswith(".keras"):
            raise CommandError(f"--save_average={save_to}: give a .keras file name", 2)
    found = run_folder.Checkpoints(os.path.join(path, run_folder.BACKUP)).generations()
    if len(found) < count:
        kept = ", ".join(str(epoch) for epoch, _ in reversed(found)) or "none"
        raise CommandError(f"--average={count}: {path} keeps {len(found)} checkpoint generation(s) (after epochs "
                           f"{kept}); train it with --checkpoint_hist={count} or more to keep as many", 2)
    chosen = found[:count]
    model = files.load_model(os.path.join(chosen[0][1], run_folder.CHECKPOINT), "--average")
    sums = None
    for epoch, generation in chosen:
        checkpoint = os.path.join(generation, run_folder.CHECKPOINT)
        problem = files.keras_file_problem(checkpoint)
        try:
            if problem:
                raise ValueError(problem)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the optimizer's state, which is not averaged
                model.load_weights(checkpoint)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CommandError(f"--average: {checkpoint} cannot be loaded into the newest checkpoint's model "
                               f"({files.first_line(err)})", 1) from None
        values = model.get_weights()
        sums = [v.astype("float64") for v in values] if sums is None else [t + v for t, v in zip(sums, values)]
    model.set_weights([(t / count).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
                       for t, v in zip(sums, values)])
    if save_to:
        files.save_model(model, save_to)
    epochs = sorted(epoch for epoch, _ in chosen)
    return model, (f"epochs {epochs[0]}-{epochs[-1]}" if count > 1 else f"epoch {epochs[0]}")


def _saved_model_source(path, runtime="saved_model"):
    try:
        version = layout.version_folder(path)
    except ValueError:
        raise CommandError(f"--model_dir={path} is neither a run folder (flags.json), a .keras file, nor a "
                           "SavedModel", 2) from None

    problem = runtimes.missing_package(runtime, "deploy")
    absent = runtimes.missing_file(runtime, version)
    problem = problem or (absent and f"--runtime={runtime}: {version} {absent}")
    if problem:
        raise CommandError(problem, 2)

    serve = engines.saved_model(version, "serving_default")
    try:
        with open(os.path.join(version, METADATA)) as f:
            metadata = json.load(f)
    except (OSError, ValueError):
        metadata = {}
    shape = serve.structured_input_signature[1]["images"].shape
    run = metadata.get("source", {}).get("flags") or {}
    predict_logits = lambda x: np.asarray(serve(images=tf.constant(x, tf.float32))["logits"])  # noqa: E731
    if runtime != "saved_model":
        try:
            predict_logits = engines.open_runtime(runtime, version)
        except Exception as err:  # ONNX Runtime and OpenVINO raise many kinds for damaged files
            raise CommandError(f"--runtime={runtime}: {version}/{RUNTIMES[runtime].file} cannot be loaded "
                               f"({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]})") from None
    return Source(metadata.get("model") or os.path.basename(os.path.dirname(version)),
                  lambda x: np.asarray(predict_logits(np.asarray(x, "float32")), "float32"), int(shape[1]),
                  int(shape[-1]), metadata.get("params", 0), run,
                  where=version if runtime == "saved_model" else f"{version} ({runtime})")


def _weights_source(weights):
    try:
        tag = hub.resolve(None, weights)  # timm's tags only, resolved once and handed down
        model = reszoo.create_model(weights=reszoo_weights.Source("timm", weights, tag=tag))
    except WeightsError as err:
        raise CommandError(f"--weights: {err}", 2) from None
    entry = hub.card(tag)
    source = keras_source(model, tag, crop_pct=entry.get("crop_pct", 1.0),
                          interpolation=entry.get("interpolation", "bilinear"), published=True)
    source.pool_above = entry.get("test_input_size", [0, source.side])[-1]
    return source


def check_outputs(results_csv, confusion):
    """A one-line ``CommandError`` for an output path that cannot be written, before anything
    is measured: a folder, a missing or read-only folder, a CSV of other columns."""
    for flag, path in (("results_csv", results_csv), ("confusion_png", confusion)):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise CommandError(f"--{flag}={path} is a folder; give a file path", 2)
        if not os.path.isdir(folder):
            raise CommandError(f"--{flag}={path}: its folder {folder} does not exist", 2)
        if not os.access(folder, os.W_OK):
            raise CommandError(f"--{flag}={path}: its folder {folder} is not writable", 2)
    if results_csv:
        csv_header(results_csv)


def csv_header(path):
    """The columns of the CSV at ``path`` (``COLUMNS`` for a new or empty one); a
    ``CommandError`` where they are others."""
    try:
        with open(path, newline="") as f:
            first = f.readline()
    except FileNotFoundError:
        return COLUMNS
    except (OSError, UnicodeDecodeError) as err:
        raise CommandError(f"--results_csv={path} cannot be read ({err})", 2) from None
    header = first.strip().split(",") if first.strip() else list(COLUMNS)
    if header != list(COLUMNS):
        raise CommandError(f"--results_csv={path} has other columns ({','.join(header)[:80]}); use another file", 2)
    return COLUMNS


def available_memory():
    """Bytes this machine can still allocate (Linux' MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_sizes(source, side, crop_pct, batch_size):
    """The side images are loaded at (``side / crop_pct``), after refusing in one line what
    cannot fit: a resize past ``MAX_IMAGE_SIZE``, or one batch (its resized images and the
    model's largest tensors) larger than half the memory available."""
    load_size = int(math.floor(side / crop_pct)) if crop_pct < 1 else side
    if load_size > MAX_IMAGE_SIZE:
        raise CommandError(f"--test_size={side} with --crop_pct={crop_pct:g} resizes images to {load_size}x{load_size} "
                           f"before the crop, over the {MAX_IMAGE_SIZE} limit: raise --crop_pct or lower "
                           "--test_size", 2)
    need = 4 * batch_size * (load_size * load_size * source.channels + 3 * source.floats_per_image(side))
    free = available_memory()
    if free is not None and need > free / 2:
        raise CommandError(f"--test_size={side}: a batch of {batch_size} images at {load_size}x{load_size} needs about "
                           f"{need / 2 ** 30:.1f} GiB, and {free / 2 ** 30:.1f} GiB of memory is available: lower "
                           "--batch_size or --test_size", 2)
    return load_size


def eval_images(images, side, crop_pct, interpolation):
    """A batch of images as the model sees them: resized to ``side / crop_pct`` and centrally
    cropped to ``side`` (timm's and keras-hub's eval transform; squares, as training loads)."""
    scale = int(math.floor(side / crop_pct)) if crop_pct < 1 else side
    images = tf.cast(images, tf.float32)
    if images.shape[1] != scale or images.shape[2] != scale:
        images = tf.image.resize(images, (scale, scale), method=interpolation)
    offset = (scale - side) // 2
    return images[:, offset:offset + side, offset:offset + side, :]


def measure(source, dataset, num_classes, side, crop_pct, interpolation, batch_size):
    """Logits of the whole ``dataset`` (unbatched (image, label)) and its labels."""
    logits, labels = [], []
    for images, y in dataset.batch(batch_size):
        logits.append(source.predict(eval_images(images, side, crop_pct, interpolation).numpy()))
        labels.append(y.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels).astype("int64")
    if logits.shape[-1] != num_classes:
        raise CommandError(f"the model has {logits.shape[-1]} classes, the dataset {num_classes}", 2)
    return logits, labels


def metrics(logits, labels, num_classes):
    """top-1, top-5 (percent), mean softmax cross-entropy, per-class accuracy and the confusion
    matrix (rows: true class)."""
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean())
    k = min(5, num_classes)
    top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    predicted = top5[:, 0]
    confusion = np.zeros((num_classes, num_classes), "int64")
    np.add.at(confusion, (labels, predicted), 1)
    per_class = np.diag(confusion) / np.maximum(confusion.sum(1), 1)
    return {"top1": 100 * float(np.mean(predicted == labels)),
            "top5": 100 * float(np.mean((top5 == labels[:, None]).any(-1))),
            "loss": loss, "per_class": per_class, "confusion": confusion}


def append_row(path, row):
    """Add ``row`` to the CSV at ``path`` (header first when new), written whole and renamed
    into place, under the folder's lock so that runs appending at once each keep their row; a
    CSV of other columns is left alone and refused."""
    out = io.StringIO()
    csv.DictWriter(out, COLUMNS, lineterminator="\n").writerow(row)
    with files.folder_lock(os.path.dirname(path)):
        csv_header(path)
        old = ""
        if os.path.exists(path):
            with open(path, newline="") as f:
                old = f.read()
        if not old.strip():
            old = ",".join(COLUMNS) + "\n"
        files.write_text(path, (old if old.endswith("\n") else old + "\n") + out.getvalue())


def confusion_png(path, confusion, class_names, title):
    """The confusion matrix as a PNG (row-normalised; names shown up to 30 classes)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CommandError("--confusion_png needs matplotlib (pip install 'reszoo[lab]'), or pass "
                           "--confusion_png=''", 2) from None
    n = len(class_names)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = min(4 + 0.35 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90 if max(map(len, class_names)) > 3 else 0)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()

    def write(tmp):
        fig.savefig(tmp, format="png", dpi=100)

    try:
        files.atomic_write(path, write)
    finally:
        plt.close(fig)


def run(source, dataset=None, data_dir=None, validation_split=None, seed=None, test_size=0, crop_pct=0.0,
        interpolation=None, batch_size=64, results_csv=None, confusion=None, say=print, test_pool=False):
    """Measure ``source`` (a ``Source``) as the flags say; returns the CSV row (with
    ``per_class``). Dataset arguments left None come from the run's flags. ``test_pool``:
    timm's test-time pooling above the tested size, at crop_pct 1 unless one is given."""
    check_outputs(results_csv, confusion)
    run = source.run_flags
    dataset = dataset or run.get("dataset") or "digits"
    data_dir = data_dir if data_dir is not None else (run.get("data_dir") if dataset == run.get("dataset") else None)
    validation_split = validation_split if validation_split is not None else run.get("validation_split", 0.2)
    seed = seed if seed is not None else run.get("seed", 0)
    side = test_size or source.side
    if side != source.side and not source.resizable:
        raise CommandError(f"--test_size={side}: the SavedModel takes {source.side}x{source.side} images only", 2)
    pooled = False
    if test_pool:
        source, pooled = test_pooled(source, side, say)
    crop_pct = crop_pct or (1.0 if pooled else source.crop_pct)
    interpolation = interpolation or source.interpolation
    load_size = check_sizes(source, side, crop_pct, batch_size)
    try:
        data = data_lib.load(dataset, data_dir, load_size, validation_split, seed, channels=source.channels)
    except data_lib.DataError as err:
        raise CommandError(str(err), 2) from None
    if data.image_shape[-1] != source.channels:
        hint = ("; published ImageNet weights need colour images: give --dataset (a tfds name) or --dataset=folder "
                "with --data_dir=FOLDER" if source.published else "")
        raise CommandError(f"{source.name} takes images of {source.channels} channel(s), {data.name} has "
                           f"{data.image_shape[-1]}{hint}", 2)
    split = "held-out" if dataset == "folder" else "test"
    logits, labels = measure(source, data.test, data.num_classes, side, crop_pct, interpolation, batch_size)
    m = metrics(logits, labels, data.num_classes)
    say(f"validate: {source.name} on {data.name} {split} ({len(labels)} images) at {side}x{side}, crop_pct "
        f"{crop_pct:g}, {interpolation}")
    say(f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}")
    order = sorted(range(data.num_classes), key=lambda c: m["per_class"][c])
    shown = order if data.num_classes <= 20 else order[:5]
    say(("per-class accuracy: " if data.num_classes <= 20 else "lowest per-class accuracy: ")
        + ", ".join(f"{data.class_names[c]} {100 * m['per_class'][c]:.1f}%" for c in shown))
    row = {"model": source.name, "source": source.where or source.name, "dataset": data.name, "split": split,
           "images": len(labels), "top1": f"{m['top1']:.3f}", "top1_err": f"{100 - m['top1']:.3f}",
           "top5": f"{m['top5']:.3f}", "top5_err": f"{100 - m['top5']:.3f}", "loss": f"{m['loss']:.4f}",
           "param_count": source.params, "img_size": side, "crop_pct": f"{crop_pct:g}",
           "interpolation": interpolation}
    if results_csv:
        append_row(results_csv, row)
        say(f"results -> {results_csv}")
    if confusion:
        confusion_png(confusion, m["confusion"], data.class_names,
                      f"{source.name} on {data.name}: top-1 {m['top1']:.2f}%")
        say(f"confusion matrix -> {confusion}")
    return {**row, "per_class": m["per_class"].tolist()}


def main(argv):
    logging.set_verbosity(logging.ERROR)

    try:
        if FLAGS.model_dir and FLAGS.weights:
            raise CommandError("give --model_dir or --weights, not both", 2)
        if FLAGS.average and FLAGS["checkpoint"].present:
            raise CommandError(f"--average={FLAGS.average} measures the run's last checkpoints averaged, "
                               f"--checkpoint={FLAGS.checkpoint} one model: give one", 2)
        source = load_source(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.weights, FLAGS.average, FLAGS.save_average,
                             FLAGS.runtime)
        folder = source.where if source.where and os.path.isfile(os.path.join(source.where, FLAGS_FILE)) else "."
        results_csv = FLAGS.results_csv if FLAGS.results_csv is not None else os.path.join(folder, "validate.csv")
        png = FLAGS.confusion_png
        if png is None:
            png = os.path.join(os.path.dirname(results_csv) or ".", "confusion.png") if results_csv else ""
        run(source, FLAGS.dataset, FLAGS.data_dir, FLAGS.validation_split, FLAGS.seed, FLAGS.test_size,
            FLAGS.crop_pct, FLAGS.interpolation, FLAGS.batch_size, results_csv, png, test_pool=FLAGS.test_pool)
    except CommandError as err:
        sys.stderr.write(f"validate: error: {err}\n")
        sys.exit(err.code)
    except ValueError as err:  # training.predict's one-line reasons for a SavedModel
        sys.stderr.write(f"validate: error: {err}\n")
        sys.exit(1)

