"""A model that remembers how it was built: the registry name and the arguments given to
``reszoo.create_model``, in memory and in the ``.keras`` files it is saved to, so a model
loaded from disk can be described (``model_card``) and built again; and what any model
reports of itself: trainable parameters and pyramid levels."""

import dataclasses

import keras

from reszoo import naming


@dataclasses.dataclass(frozen=True)
class BuildSpec:
    """``reszoo.create_model(name, **overrides)`` as data. ``overrides`` hold JSON values and
    serialised Keras objects (a regularizer, say); ``arguments()`` gives them back as the
    builder takes them."""

    name: str
    overrides: dict = dataclasses.field(default_factory=dict)
    adapters: str | None = None  # "parallel" or "series": residual adapters added (reszoo.transfer)
    weights: str | None = None  # the published weights it was built with ("timm/...", "imagenet")

    @classmethod
    def of(cls, name, overrides):
        """The spec of ``create_model(name, **overrides)``. An ``input_tensor`` is recorded as
        its shape: the layers before it are not part of the build."""
        overrides = dict(overrides)
        tensor = overrides.pop("input_tensor", None)
        if tensor is not None:
            overrides["input_shape"] = tuple(tensor.shape[1:])
        return cls(name, {k: _encode(v) for k, v in sorted(overrides.items())})

    def arguments(self):
        return {k: _decode(v) for k, v in self.overrides.items()}

    def to_json(self):
        value = {"name": self.name, "overrides": dict(self.overrides)}
        if self.adapters is not None:
            value["adapters"] = self.adapters
        if self.weights is not None:
            value["weights"] = self.weights
        return value

    @classmethod
    def from_json(cls, value):
        return cls(value["name"], dict(value.get("overrides", {})), value.get("adapters"), value.get("weights"))


def _encode(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return {"keras_object": keras.saving.serialize_keras_object(value)}


def _decode(value):
    if isinstance(value, dict):
        if set(value) == {"keras_object"}:
            return keras.saving.deserialize_keras_object(value["keras_object"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@keras.saving.register_keras_serializable(package="reszoo")
class ZooModel(keras.Model):
    """A Keras functional model with a ``build_spec`` (``BuildSpec`` or None), saved with
    its config. Every reszoo builder returns one."""

    def __init__(self, *args, build_spec=None, **kwargs):
        super().__init__(*args, **kwargs)
        if isinstance(build_spec, dict):
            build_spec = BuildSpec.from_json(build_spec)
        self.build_spec = build_spec

    @property
    def pyramid_outputs(self):
        """The stage outputs by level, ``{"P2": tensor, ...}`` (``reszoo.skeleton.Pyramid``):
        keras-hub's backbone interface, which its DeepLabV3 and RetinaNet read."""
        return {f["level"]: self.get_layer(f["layer"]).output for f in features(self)}

    def get_config(self):
        config = super().get_config()
        if self.build_spec is not None:
            config["build_spec"] = self.build_spec.to_json()
        return config


def build_spec(model):
    """How ``model`` was built (a ``BuildSpec``), or None for a model reszoo did not build."""
    return getattr(model, "build_spec", None)


def features(model):
    """Each pyramid level of ``model`` (timm's ``feature_info``): level "Pk", the stage, the
    layer (``reszoo.naming.stage_end``), channels and stride, measured on the model's input
    size (on a 256 x 256 probe where the size is free)."""
    ends = [layer for layer in model.layers if naming.end_stage(layer.name) is not None]
    if not ends:
        return []
    height, width, channels = model.input_shape[1:]
    probe = (256, 256) if height is None or width is None else (height, width)
    shapes = keras.Model(model.inputs, [layer.output for layer in ends]).compute_output_shape(
        (1, *probe, channels))
    levels = {}
    for layer, shape in zip(ends, shapes):
        stride = probe[0] // shape[1]
        level = f"P{stride.bit_length() - 1}"
        levels[level] = {"level": level, "stage": naming.end_stage(layer.name), "layer": layer.name,
                         "channels": int(shape[-1]), "stride": stride}
    return list(levels.values())


def count_params(model):
    """Trainable parameters (weights, biases, BN gamma/beta; not BN moving statistics)."""
    total = 0
    for weight in model.trainable_weights:
        size = 1
        for dim in weight.shape:
            size *= int(dim)
        total += size
    return total
