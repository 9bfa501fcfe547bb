"""The 2020s recipes' augmentations, on Keras' own layers, inside the tf.data pipeline:
RandAugment / TrivialAugment and random erasing per image, mixup / CutMix per batch.

Keras' random layers draw from a ``SeedGenerator`` whose state lives in a variable, which a
checkpoint does not hold and parallel map calls advance in any order. Here each call draws
instead from ``Seeds``: a generator whose every draw is a fixed function of one stateless seed
that the pipeline derives from (run seed, epoch, example or batch). So the same run sees the
same augmented batches, and a run resumed at epoch e sees exactly the batches an
uninterrupted one would (``training.data.train_pipeline``).
"""

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """The recipe augmentations of one run (``from_options``); all off by default."""

    auto_augment: str = "none"  # randaugment (Cubuk et al. 2020) or trivialaugment (Mueller & Hutter 2021)
    rand_augment_ops: int = 2
    rand_augment_magnitude: int = 9  # of 10, timm's m
    random_erasing: float = 0.0  # Zhong et al. 2020
    mixup_alpha: float = 0.0  # Zhang et al. 2018
    cutmix_alpha: float = 0.0  # Yun et al. 2019
    mixup_switch_prob: float = 0.5
    mixup_prob: float = 1.0
    repeats: int = 1  # repeated augmentation, Hoffer et al. 2020
    train_size: float = 0.0  # FixRes, Touvron et al. 2019: pixels, or a fraction (<= 1) of the test size

    @classmethod
    def from_options(cls, opts):
        return cls(opts.auto_augment, opts.rand_augment_ops, opts.rand_augment_magnitude, opts.random_erasing,
                   opts.mixup_alpha, opts.cutmix_alpha, opts.mixup_switch_prob, opts.mixup_prob,
                   opts.repeated_augmentation, opts.train_size)

    def train_side(self, test_side):
        """The side training images are resized to (FixRes), or ``test_side``."""
        if not self.train_size:
            return test_side
        side = self.train_size * test_side if self.train_size <= 1 else self.train_size
        return max(1, int(round(side)))

    @property
    def mixes(self):
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.mixup_prob > 0


def accept_any_size(model):
    """Let a fully convolutional ``model`` (up to its global pooling) take images of any side,
    as FixRes (Touvron et al. 2019) trains below and evaluates at or above its input size."""
    model.input_spec = keras.InputSpec(ndim=4, axes={-1: model.input_shape[-1]})


class Seeds(keras.random.SeedGenerator):
    """A seed generator without state: its n-th draw is ``seed`` folded with n, so the draws
    of one traced call are fixed functions of the stateless seed tensor ``seed`` ([2] ints)."""

    def __init__(self, seed):  # no state variable: what SeedGenerator.__init__ makes is not wanted
        self.name = "seeds"
        self.seed = tf.cast(seed, "int64")
        self.draws = 0

    def next(self, ordered=True):
        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self.draws)


def apply_layer(layer, images, seed, labels=None):
    """Keras augmentation ``layer`` on a batch ``images`` (and its one-hot ``labels``), every
    random draw from ``Seeds(seed)``: the layer's own generators (and those of the layers it is
    built of, as RandAugment) are set aside while it is traced."""
    seeds = Seeds(seed)
    owners = [layer, *layer._flatten_layers(include_self=False)]
    saved = {owner: owner.generator for owner in owners if hasattr(owner, "generator")}
    for owner in saved:
        owner.generator = seeds
    try:
        transformation = layer.get_random_transformation(images, training=True, seed=seeds)
        images = layer.transform_images(images, transformation, training=True)
        if labels is not None:
            labels = layer.transform_labels(labels, transformation, training=True)
    finally:
        for owner, generator in saved.items():
            owner.generator = generator
    return images, labels


class Augmenter:
    """The Keras layers of an ``Augmentation`` for images of ``image_shape`` with pixel values
    in ``[0, max_value]``: ``image`` per example, ``batch`` per batch."""

    def __init__(self, augmentation, image_shape, max_value):
        self.augmentation = a = augmentation
        self.channels = image_shape[-1]
        value_range = (0, max_value)
        self.auto = None
        if a.auto_augment == "randaugment":
            self.auto = keras.layers.RandAugment(value_range, num_ops=a.rand_augment_ops,
                                                 factor=a.rand_augment_magnitude / 10)
        elif a.auto_augment == "trivialaugment":  # one operation, magnitude uniform over the whole range
            self.auto = keras.layers.RandAugment(value_range, num_ops=1, factor=1.0)
        self.erasing = (keras.layers.RandomErasing(factor=(a.random_erasing, a.random_erasing), value_range=value_range)
                        if a.random_erasing else None)
        self.mixup = keras.layers.MixUp(alpha=a.mixup_alpha) if a.mixup_alpha else None
        self.cutmix = keras.layers.CutMix(factor=(a.cutmix_alpha, a.cutmix_alpha)) if a.cutmix_alpha else None
        self.train_side = (a.train_side(image_shape[0]), a.train_side(image_shape[1]))
        self.resize = tuple(self.train_side) != tuple(image_shape[:2])

    @property
    def per_image(self):
        return self.auto is not None or self.erasing is not None or self.resize

    def image(self, image, seed):
        """One float image (H, W, C), augmented with stateless ``seed`` and resized to the
        training side. Grey images go through the colour operations as R = G = B."""
        seeds = tf.random.experimental.stateless_split(seed, 2)
        batch = image[None]
        if self.channels == 1 and self.auto is not None:
            batch = tf.image.grayscale_to_rgb(batch)
        if self.auto is not None:
            batch = apply_layer(self.auto, batch, seeds[0])[0]
        if self.channels == 1 and self.auto is not None:
            batch = tf.reduce_mean(batch, axis=-1, keepdims=True)
        if self.erasing is not None:
            batch = apply_layer(self.erasing, batch, seeds[1])[0]
        if self.resize:
            batch = tf.image.resize(batch, self.train_side)
        return tf.ensure_shape(batch[0], (*self.train_side, self.channels))

    def batch(self, images, labels, seed):
        """mixup or CutMix of a batch (one of the two, CutMix with ``mixup_switch_prob`` when
        both are on; the batch is mixed with ``mixup_prob``), labels mixed alike."""
        a = self.augmentation
        if not a.mixes:
            return images, labels
        seeds = tf.random.experimental.stateless_split(seed, 3)
        mix = lambda layer: lambda: apply_layer(layer, images, seeds[2], labels)  # noqa: E731
        if self.mixup is not None and self.cutmix is not None:
            cut = tf.random.stateless_uniform([], seeds[1]) < a.mixup_switch_prob
            mixed = tf.cond(cut, mix(self.cutmix), mix(self.mixup))
        else:
            mixed = mix(self.mixup or self.cutmix)()
        if a.mixup_prob >= 1:
            return mixed
        keep = tf.random.stateless_uniform([], seeds[0]) >= a.mixup_prob
        return tf.cond(keep, lambda: (images, labels), lambda: mixed)


def grid_png(images, max_value, columns=8):
    """A batch of images (N, H, W, C) in ``[0, max_value]`` as one PNG (bytes), a grid of
    ``columns`` images a row, each scaled up to at least 64 pixels a side."""
    images = tf.convert_to_tensor(images, tf.float32)
    n, height, width, channels = images.shape
    scale = max(1, -(-64 // max(height, width)))
    images = tf.image.resize(images, (height * scale, width * scale), method="nearest")
    rows = -(-n // columns)
    pad = rows * columns - n
    images = tf.concat([images, tf.zeros([pad, *images.shape[1:]])], 0)
    images = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=max_value)
    _, h, w, _ = images.shape
    grid = tf.reshape(tf.transpose(tf.reshape(images, [rows, columns, h, w, channels]), [0, 2, 1, 3, 4]),
                      [rows * h, columns * w, channels])
    pixels = tf.cast(tf.clip_by_value(tf.round(grid * (255.0 / max_value)), 0, 255), tf.uint8)
    return tf.io.encode_png(pixels).numpy()
