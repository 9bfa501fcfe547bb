"""Where an image tensor keeps its channels: Keras' ``image_data_format`` ("channels_last",
NHWC, or "channels_first", NCHW). A model is built in the format set when it is built (its
layers record it); readers of a built model ask the model (``of``), not the setting."""

import keras

LAST, FIRST = "channels_last", "channels_first"


def current():
    return keras.config.image_data_format()


def standardize(data_format):
    """``data_format``, or the current one for None (what Keras' own layers do)."""
    data_format = data_format or current()
    if data_format not in (LAST, FIRST):
        raise ValueError(f"data_format must be {LAST!r} or {FIRST!r}, got {data_format!r}")
    return data_format


def channel_axis(data_format=None):
    return -1 if (data_format or current()) == LAST else 1


def channels(shape, data_format=None):
    """The channel count of a 4-D ``shape``."""
    return shape[channel_axis(data_format)]


def spatial(shape, data_format=None):
    """``(height, width)`` of a 4-D ``shape``."""
    return tuple(shape[1:3]) if (data_format or current()) == LAST else tuple(shape[2:4])


def image_shape(height, width, channels, data_format=None):
    """An image's shape (no batch) in ``data_format``."""
    return (height, width, channels) if (data_format or current()) == LAST else (channels, height, width)


def of(model):
    """The data format ``model`` was built in: that of its first layer that records one."""
    return next((layer.data_format for layer in model.layers if isinstance(getattr(layer, "data_format", None), str)),
                current())
