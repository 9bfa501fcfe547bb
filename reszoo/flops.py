"""Multiply-accumulate count of a built model: the papers' "FLOPs" (He et al. 2015 quote
ResNet-50 at 3.8 x 10^9 multiply-adds; torchvision lists 4.09 GMACs with the 1x1 projections
and classifier counted), convolutions and dense layers only."""

import keras

from reszoo import layout


def _calls(model):
    """``(leaf layer, times it runs)`` for every layer under ``model``. A layer's calls in
    ``model``'s graph are its inbound nodes in the model's (public) config; a shared layer
    or sub-model (weight-tied convs or stages, the inner graph of ``layers.Recompute``) counts
    once per call, each call on the shape of the first."""
    calls = {entry["config"]["name"]: max(1, len(entry.get("inbound_nodes", [])))
             for entry in model.get_config()["layers"]}
    for layer in model.layers:
        times = calls.get(layer.name, 1)
        inner = getattr(layer, "inner", layer)
        if isinstance(inner, keras.Model):
            for leaf, count in _calls(inner):
                yield leaf, count * times
        else:
            yield layer, times


def count_macs(model):
    """Sum of conv and dense multiply-accumulates for one example; None if a spatial size is
    unknown (inputs built with ``None`` height or width)."""
    total = 0
    for layer, times in _calls(model):
        if isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            height, width = layout.spatial(out, layer.data_format)
            if height is None or width is None:
                return None
            kh, kw = layer.kernel_size
            in_channels = layout.channels(layer.input.shape, layer.data_format)
            total += times * height * width * layer.filters * kh * kw * in_channels // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += times * layer.input.shape[-1] * layer.units
    return int(total)
