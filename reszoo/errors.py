"""Errors the library raises for a user to act on."""


class WeightsError(ValueError):
    """Weights that cannot be loaded; the message names the layer, tensor or file."""
