"""Small helpers the tests share."""

import keras


def infer(model, x):
    """``model(x)`` in inference mode as numpy (a dict of numpy for a pyramid). The same numbers
    as ``model.predict`` without tracing a graph for one call, which costs seconds on a deep net."""
    out = model(x, training=False)
    if isinstance(out, dict):
        return {k: keras.ops.convert_to_numpy(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(v) for v in out]
    return keras.ops.convert_to_numpy(out)
