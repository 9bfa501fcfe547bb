"""Multiply-accumulate count of a built model: the papers' "FLOPs" (He et al. 2015 quote
ResNet-50 at 3.8 x 10^9 multiply-adds; torchvision lists 4.09 GMACs with the 1x1 projections
and classifier counted), convolutions and dense layers only."""

import keras


def _calls(layer):
    """``(leaf layer, times it runs)`` under ``layer``: a shared layer or sub-model (weight-tied
    convs or stages, the inner graph of ``layers.Recompute``) counts once per call, each call
    on the shape of the first."""
    inner = getattr(layer, "inner", layer)
    if not isinstance(inner, keras.Model):
        yield layer, max(1, len(layer._inbound_nodes))
        return
    for sub in inner.layers:
        for leaf, times in _calls(sub):
            yield leaf, times * max(1, len(layer._inbound_nodes))


def count_macs(model):
    """Sum of conv and dense multiply-accumulates for one example; None if a spatial size is
    unknown (inputs built with ``None`` height or width)."""
    total = 0
    for sub in model.layers:
        for layer, times in _calls(sub):
            if isinstance(layer, keras.layers.Conv2D):
                out = layer.output.shape
                if None in out[1:3]:
                    return None
                kh, kw = layer.kernel_size
                in_channels = layer.input.shape[-1]
                total += times * out[1] * out[2] * out[3] * kh * kw * in_channels // layer.groups
            elif isinstance(layer, keras.layers.Dense):
                total += times * layer.input.shape[-1] * layer.units
    return int(total)
