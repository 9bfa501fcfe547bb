"""Datasets for training: the embedded digits, tfds by name, or a folder of images; and the
tf.data pipelines (stateless augmentation, so a resumed run sees the same batches)."""

import dataclasses
import os
import sys

import numpy as np
import tensorflow as tf

import reszoo.datasets
from reszoo.datasets import channel_stats
from training import augment as augment_lib
from training.common.command import error_reason
from training.common.images import decode_image

_STATS_SAMPLE = 10_000
_IN_MEMORY_BYTES = 2 * 2**30


class DataError(Exception):
    """A dataset that cannot be found or read; the message says what to do."""


@dataclasses.dataclass
class Data:
    """Train and test data in raw pixel units. ``train`` is numpy arrays ``(x, y)`` when it
    fits in memory (exact resume), else an unbatched ``tf.data.Dataset`` (streamed)."""

    name: str
    train: object
    test: tf.data.Dataset  # unbatched (float32 image, int32 label)
    num_train: int
    num_test: int
    class_names: list
    image_shape: tuple
    mean: np.ndarray  # per channel: travels with the model as its first layer
    std: np.ndarray
    default_augment: str
    max_value: float = 255.0  # pixel values lie in [0, max_value]

    @property
    def num_classes(self):
        return len(self.class_names)


def load(dataset, data_dir=None, image_size=None, validation_split=0.2, seed=0, channels=None, say=None):
    """``dataset`` ("digits", "folder" or a tfds name) as ``Data``. ``channels`` (1 or 3)
    converts a folder's images (default: grey when every image is grey, else RGB); ``say``
    takes the one-line warnings about skipped files (default: standard error)."""
    if dataset == "digits":
        return _digits()
    if dataset == "folder":
        return _folder(data_dir, image_size or 64, validation_split, seed, channels, say)
    return _tfds(dataset, data_dir, image_size)


def in_memory(data, limit=None):
    """``(x, y, x_test, y_test)`` of ``data`` as numpy arrays in raw pixel units (the first
    ``limit`` of each split), for code that trains on arrays (the lab); a ``DataError`` for a
    dataset that is streamed because it does not fit in memory."""
    if not isinstance(data.train, tuple):
        raise DataError(f"{data.name} does not fit in memory; the lab trains on in-memory data")
    (x, y), pairs = data.train, list(data.test.take(limit or -1).as_numpy_iterator())
    x_test, y_test = np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], "int32")
    return x[:limit], y[:limit], x_test, y_test


def _sample_stats(ds):
    images = np.stack([x for x, _ in ds.take(_STATS_SAMPLE).as_numpy_iterator()])
    return channel_stats(images)


def _arrays(ds):
    """An unbatched (image, label) dataset of 8-bit pixels as uint8/int32 numpy arrays."""
    images, labels = [], []
    for x, y in ds.as_numpy_iterator():
        images.append(np.clip(np.round(x), 0, 255).astype("uint8"))
        labels.append(y)
    return np.stack(images), np.asarray(labels, "int32")


def _as_dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y.astype("int32"))).map(
        lambda a, b: (tf.cast(a, "float32"), b))


def _digits():
    (x_train, y_train), (x_test, y_test), names = reszoo.datasets.load_digits()
    mean, std = channel_stats(x_train)
    return Data("digits", (x_train, y_train.astype("int32")), _as_dataset(x_test, y_test),
                len(y_train), len(y_test), names, x_train.shape[1:], mean, std, "crop",
                float(reszoo.datasets.DIGITS_MAX))


def dataset_name(dataset, data_dir=None):
    """The name a dataset goes by in run folders and exports: a folder's base name, else
    ``dataset``."""
    if dataset == "folder" and data_dir:
        return os.path.basename(os.path.normpath(data_dir))
    return dataset


def _decode_error(path):
    """Why ``path`` is not an image TensorFlow can decode, in a few words."""
    if os.path.islink(path) and not os.path.exists(path):
        return "a dangling symbolic link"
    try:
        if os.path.getsize(path) == 0:
            return "an empty file"
        decode_image(tf.io.read_file(path), 3)
    except (tf.errors.OpError, OSError) as err:
        return error_reason(err)
    return "unreadable"


def _memory_budget():
    """Half the machine's memory: what a folder's decoded images may take."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return _IN_MEMORY_BYTES


def _index_folder(data_dir):
    """``(class names, [(path, label)], loose files)`` of a folder of class sub-folders
    (searched recursively; hidden folders such as .ipynb_checkpoints are no classes)."""
    entries = sorted(os.listdir(data_dir))
    names = [d for d in entries if os.path.isdir(os.path.join(data_dir, d)) and not d.startswith(".")]
    loose = [f for f in entries if os.path.isfile(os.path.join(data_dir, f)) and not f.startswith(".")]
    examples = []
    for label, name in enumerate(names):
        for root, dirs, files in os.walk(os.path.join(data_dir, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            examples += [(os.path.join(root, f), label) for f in sorted(files)]
    return names, examples, loose


def _folder(data_dir, image_size, validation_split, seed, channels=None, say=None):
    """A folder of class sub-folders of images, decoded and resized into memory. Files that
    cannot be decoded are skipped and counted (the first few named); a class left empty,
    or images outside class sub-folders with no class sub-folder, are errors."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    if not data_dir:
        raise DataError("--dataset=folder needs --data_dir=FOLDER, a folder of class sub-folders of images")
    if not os.path.isdir(data_dir):
        raise DataError(f"--dataset=folder needs --data_dir pointing at a folder of class "
                        f"sub-folders; {data_dir!r} is not a folder")
    if not 0 < validation_split < 1:
        raise DataError(f"--validation_split must be in (0, 1) for a folder, got {validation_split}")
    names, examples, loose = _index_folder(data_dir)
    if not names:
        found = f"{len(loose)} file(s) directly in it (e.g. {loose[0]})" if loose else "nothing"
        raise DataError(f"{data_dir} has no class sub-folders ({found}): put each class's images in a "
                        f"sub-folder named after the class, e.g. {os.path.join(data_dir, 'cat', '1.jpg')}")
    if len(names) < 2:
        raise DataError(f"{data_dir} needs at least two class sub-folders, found {names}")
    if loose:
        say(f"train: warning: ignored {len(loose)} file(s) outside the class sub-folders of {data_dir} "
            f"(e.g. {loose[0]})")
    need = len(examples) * image_size * image_size * 3
    if need > _memory_budget():
        raise DataError(f"--image_size={image_size}: the {len(examples):,} images of {data_dir} would take "
                        f"{need / 2**30:,.1f} GiB in memory, more than half of this machine's; use a smaller "
                        "--image_size")

    paths = [p for p, _ in examples]

    def load(i, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
        native = tf.shape(image)[-1]
        image = tf.cond(native >= 3, lambda: image[..., :3], lambda: tf.concat([image[..., :1]] * 3, -1))
        image = tf.image.resize(image, (image_size, image_size))
        return i, tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), native < 3

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths)), paths))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()
    decoded = {int(i): (x, bool(grey)) for i, x, grey in without_autotune(ds).as_numpy_iterator()}
    skipped = [p for i, p in enumerate(paths) if i not in decoded]
    if skipped:
        shown = "; ".join(f"{os.path.relpath(p, data_dir)} ({_decode_error(p)})" for p in skipped[:3])
        say(f"train: warning: skipped {len(skipped)} of {len(paths)} files in {data_dir} that are not images "
            f"TensorFlow can decode: {shown}{'; ...' if len(skipped) > 3 else ''}")
    labels = np.array([label for _, label in examples], "int32")
    kept = np.array(sorted(decoded), "int64")
    for label, name in enumerate(names):
        if not np.any(labels[kept] == label):
            total = int(np.sum(labels == label))
            raise DataError(f"class {name!r} ({os.path.join(data_dir, name)}) has no readable image "
                            f"({total} file(s), all skipped)" if total else
                            f"class folder {os.path.join(data_dir, name)} is empty: remove it or add images")
    if channels is None:
        channels = 1 if all(decoded[i][1] for i in kept) else 3
    if channels == 1:  # grey files were widened to R = G = B: take one channel back
        images = np.stack([x[..., :1] if grey else np.asarray(tf.image.rgb_to_grayscale(x))
                           for x, grey in (decoded[i] for i in kept)])
    else:
        images = np.stack([decoded[i][0] for i in kept])
    labels = labels[kept]
    train, test = _split(labels, validation_split, seed)
    x_train, y_train = images[train], labels[train]
    mean, std = channel_stats(x_train)
    return Data(dataset_name("folder", data_dir), (x_train, y_train), _as_dataset(images[test], labels[test]),
                len(train), len(test), names, (image_size, image_size, channels), mean, std, "crop_flip")


def _split(labels, fraction, seed):
    """Train and held-out indices, ``fraction`` of each class held out (at least one where a
    class has two or more images), shuffled with ``seed``."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held = min(max(round(len(members) * fraction), 1 if len(members) > 1 else 0), len(members) - 1)
        test += list(members[:held])
        train += list(members[held:])
    return rng.permutation(train), np.array(sorted(test), "int64")


def _tfds(name, data_dir, image_size):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset {name!r}: use digits, folder, or a tfds name "
                        "(cifar10, cifar100, imagenet2012, imagenette, ...)") from None
    test_split = "validation" if "validation" in builder.info.splits else "test"
    try:
        (train, test), info = tfds.load(name, split=["train", test_split], data_dir=data_dir,
                                        as_supervised=True, with_info=True, download=False)
    except (AssertionError, FileNotFoundError, tf.errors.NotFoundError) as err:
        where = data_dir or "~/tensorflow_datasets"
        raise DataError(
            f"dataset {name} is not prepared in {where} ({type(err).__name__}); prepare it on a "
            f"machine with network access (`tfds build {name} --data_dir DIR`) and pass "
            "--data_dir=DIR") from None
    shape = info.features["image"].shape
    if None in shape[:2]:
        size = image_size or 224
        resize = lambda x, y: (tf.image.resize(tf.cast(x, "float32"), (size, size)), y)
        shape = (size, size, shape[2])
    else:
        resize = lambda x, y: (tf.cast(x, "float32"), y)
    cast = lambda x, y: (x, tf.cast(y, "int32"))
    train = train.map(resize, num_parallel_calls=tf.data.AUTOTUNE).map(cast)
    test = test.map(resize, num_parallel_calls=tf.data.AUTOTUNE).map(cast)
    num_train, num_test = _count(info, "train", train), _count(info, test_split, test)
    if num_train * np.prod(shape) <= _IN_MEMORY_BYTES:
        train = _arrays(train)
        mean, std = channel_stats(train[0])
        num_train = len(train[1])
        test = test.cache()
    else:
        mean, std = _sample_stats(train)
    augment = "inception" if shape[0] >= 128 else "crop_flip"
    return Data(name, train, test, num_train, num_test, info.features["label"].names,
                tuple(shape), mean, std, augment)


def _count(info, split, ds):
    """Examples in a split: from the dataset's metadata, or counted where it has none."""
    if split in info.splits:
        return info.splits[split].num_examples
    return int(ds.reduce(0, lambda count, _: count + 1))


def _augment(image, seed, kind, shape):
    """He et al. 2015 CIFAR augmentation (pad 1/8 of the side, random crop, flip) or the
    Inception-style random resized crop + flip, with stateless randomness."""
    height, width, channels = shape
    seeds = tf.random.experimental.stateless_split(seed, 3)
    if kind in ("crop", "crop_flip"):
        pad = max(1, height // 8)
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, shape, seed=seeds[0])
    elif kind == "inception":
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), tf.zeros([1, 0, 4]), seed=seeds[0], min_object_covered=0.08,
            aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
            use_image_if_no_bounding_boxes=True)
        image = tf.image.resize(tf.slice(image, begin, size), (height, width))
    if kind in ("crop_flip", "inception"):
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return tf.ensure_shape(image, shape)


def without_autotune(ds):
    """``ds`` with tf.data's autotuning off. With it on, destroying an iterator waits for the
    autotuner's next wake-up (10 ms x (2^k - 1) after the iterator started), so every Keras
    ``evaluate`` (each validation pass) and ``fit`` call of a few seconds was rounded up to
    1.27, 2.55, 5.11 or 10.23 s. Off, AUTOTUNE parallelism is the core count, which ran the
    CIFAR augmentation faster here (benchmarks/pipeline.py measures both)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def train_pipeline(data, batch_size, augment, seed, first_epoch, epochs, augmentation=None):
    """Batches for epochs ``first_epoch .. epochs - 1`` with one-hot labels, augmented by
    ``augment`` and the recipe's ``augmentation`` (``training.augment.Augmentation``). For
    in-memory data, epoch e's order and augmentation are stateless functions of (seed, e), so
    a run resumed at epoch e sees exactly the batches an uninterrupted run would."""
    kind = data.default_augment if augment == "auto" else augment
    shape, classes = data.image_shape, data.num_classes
    augmentation = augmentation or augment_lib.Augmentation()
    augmenter = augment_lib.Augmenter(augmentation, shape, data.max_value)
    repeats = augmentation.repeats

    def prepare(image, label, element_seed):
        image = tf.cast(image, "float32")
        if kind != "none":
            image = _augment(image, element_seed, kind, shape)
        if augmenter.per_image:
            image = augmenter.image(image, tf.random.experimental.stateless_fold_in(element_seed, 1))
        return image, tf.one_hot(label, classes)

    def mix(batches, seed_base):
        if not augmentation.mixes:
            return batches
        return batches.enumerate().map(
            lambda b, xy: augmenter.batch(*xy, tf.random.experimental.stateless_fold_in(
                tf.stack([seed_base, b]), 2)), num_parallel_calls=tf.data.AUTOTUNE)

    if isinstance(data.train, tf.data.Dataset):
        ds = data.train.shuffle(50_000, seed=seed + first_epoch)
        if repeats > 1:
            ds = ds.flat_map(lambda x, y: tf.data.Dataset.from_tensors((x, y)).repeat(repeats))
        ds = ds.repeat(epochs - first_epoch)
        ds = ds.enumerate().map(lambda i, xy: prepare(*xy, tf.stack([tf.cast(seed, tf.int64), i])),
                                num_parallel_calls=tf.data.AUTOTUNE)
        batches = mix(ds.batch(batch_size, drop_remainder=True), tf.cast(seed * 1_000_003 + first_epoch, tf.int64))
        return without_autotune(batches.prefetch(tf.data.AUTOTUNE))
    images, labels = (tf.constant(a) for a in data.train)
    n = data.num_train

    def epoch(e):
        # With repeated augmentation, each of n / repeats images comes ``repeats`` times in a
        # row, so its copies share a batch; the epoch keeps its n examples.
        order = tf.data.Dataset.range(n).map(lambda i: (i, tf.random.experimental.index_shuffle(
            i // repeats, tf.stack([tf.cast(seed, tf.int64), e]), n - 1)))
        examples = order.map(
            lambda i, j: prepare(tf.gather(images, j), tf.gather(labels, j),
                                 tf.stack([e * 1_000_003 + seed, i])),
            num_parallel_calls=tf.data.AUTOTUNE)
        return mix(examples.batch(batch_size, drop_remainder=True), e * 1_000_003 + seed)  # batches never span epochs

    return without_autotune(tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch).prefetch(tf.data.AUTOTUNE))


def eval_pipeline(data, batch_size, drop_remainder=False):
    classes = data.num_classes
    ds = data.test.map(lambda x, y: (x, tf.one_hot(y, classes)), num_parallel_calls=tf.data.AUTOTUNE)
    return without_autotune(ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE))
