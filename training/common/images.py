"""Encoded images as a model's pixels, one way for every command: training folders, the
export's ``serving_bytes`` signature, ``reszoo-predict`` and ``reszoo-serve`` decode through
``decode_image`` and ``serving_image`` (TensorFlow's decoders)."""

import dataclasses

import tensorflow as tf


def decode_image(data, channels):
    """Encoded bytes (JPEG, CMYK JPEG included, PNG, GIF, BMP, WebP) as a uint8 image of
    ``channels`` (1 or 3). The file is decoded in its own colour space and then converted
    (alpha dropped, grey <-> RGB), because TensorFlow's decoders refuse some conversions
    themselves (a CMYK JPEG or a WebP to grey). Training folders and the exported
    ``serving_bytes`` signature both decode through this function."""
    return to_channels(tf.io.decode_image(data, channels=0, expand_animations=False), channels)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """How an encoded image becomes the model's input. By default (``crop_pct`` None) it is
    resized to the model's size (bilinear), as training loads images; published weights bring
    timm's eval transform: the shorter side resized to ``floor(size / crop_pct)`` with their
    ``interpolation`` (antialiased, as PIL resizes), then the central crop."""

    crop_pct: float = None
    interpolation: str = "bilinear"

    def to_json(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value):
        return cls(**value) if value else cls()


def serving_image(data, image_shape, transform=EvalTransform()):
    """One encoded image as float32 pixels of ``image_shape`` (H, W, C) through ``transform``:
    the exported ``serving_bytes`` signature and ``reszoo-serve`` decode through this function."""
    height, width, channels = image_shape
    image = tf.cast(decode_image(data, channels), tf.float32)
    if transform.crop_pct is None:
        same = tf.reduce_all(tf.shape(image)[:2] == [height, width])
        image = tf.cond(same, lambda: image, lambda: tf.image.resize(image, (height, width)))
        return tf.ensure_shape(image, image_shape)
    scale = float(int(max(height, width) / transform.crop_pct))
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    shorter = tf.reduce_min(size)
    resized = tf.cast(tf.math.floor(size * scale / shorter), tf.int32)
    resized = tf.where(size == shorter, tf.cast(scale, tf.int32), resized)  # the shorter side exactly, as torchvision
    image = tf.image.resize(image, resized, method=transform.interpolation, antialias=True)
    top = tf.cast(tf.round(tf.cast(resized[0] - height, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(resized[1] - width, tf.float32) / 2), tf.int32)
    image = tf.image.crop_to_bounding_box(image, top, left, height, width)
    return tf.ensure_shape(image, image_shape)


def to_channels(image, channels):
    """A uint8 image of 1-4 channels (grey, grey + alpha, RGB, RGBA) as ``channels``."""
    native = tf.shape(image)[-1]
    if channels == 3:
        out = tf.cond(native >= 3, lambda: image[..., :3], lambda: tf.image.grayscale_to_rgb(image[..., :1]))
    else:
        out = tf.cond(native >= 3, lambda: tf.image.rgb_to_grayscale(image[..., :3]), lambda: image[..., :1])
    return tf.ensure_shape(out, [None, None, channels])
