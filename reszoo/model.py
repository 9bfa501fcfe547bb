"""A model that remembers how it was built: the registry name and the arguments given to
``reszoo.create_model``, in memory and in the ``.keras`` files it is saved to, so a model
loaded from disk can be described (``model_card``) and built again; and what any model
reports of itself: trainable parameters and pyramid levels."""

import dataclasses
import weakref

import keras

from reszoo import layout, naming


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

    # timm's model API (``timm.models.ResNet``'s methods), on the functional graph.
    def forward_features(self, x):
        """The final feature map (before pooling), as timm's ``forward_features``."""
        return _part(self, "features")(x, training=False)

    def forward_head(self, features, pre_logits=False):
        """Pooling and classifier on ``forward_features``' map; ``pre_logits``: the pooled
        features, as timm's ``forward_head``."""
        return _part(self, "pre_logits" if pre_logits else "head")(features, training=False)

    def forward_intermediates(self, x, indices=None, stop_early=False, intermediates_only=False):
        """timm's ``forward_intermediates``: ``(final, intermediates)``, the outputs of the
        stages ``indices`` (of ``features(model)``: an int n is the last n, a list takes
        indices, negative from the end; None all) and the final feature map; ``stop_early``
        computes no stage after the last one asked for (it is then the final map);
        ``intermediates_only`` returns the list alone."""
        levels = [level["layer"] for level in features(self)]
        if indices is None:
            chosen = list(range(len(levels)))
        elif isinstance(indices, int):
            chosen = list(range(len(levels) - indices, len(levels)))
        else:
            chosen = [i % len(levels) if -len(levels) <= i < len(levels) else i for i in indices]
        if not chosen or any(not 0 <= i < len(levels) for i in chosen):
            raise ValueError(f"indices={indices!r}: {self.name} has {len(levels)} stage outputs, 0..{len(levels) - 1}")
        outputs = [self.get_layer(levels[i]).output for i in chosen]
        final = outputs[-1] if stop_early else feature_map(self)
        key = ("intermediates", tuple(chosen), stop_early or intermediates_only)
        part = _PARTS.setdefault(self, {}).get(key)
        if part is None:
            part = _PARTS[self][key] = keras.Model(_inputs(self), outputs if intermediates_only else [final, outputs])
        result = part(x, training=False)
        return list(result) if intermediates_only else (result[0], list(result[1]))

    def get_config(self):
        config = super().get_config()
        if self.build_spec is not None:
            config["build_spec"] = self.build_spec.to_json()
        return config


_PARTS = weakref.WeakKeyDictionary()  # model -> {part: the functional sub-model}, built once


def _inputs(model):
    return model.inputs[0] if len(model.inputs) == 1 else model.inputs


def feature_map(model):
    """The map ``model`` pools (the input of its first pooling layer), or its output."""
    pool = next((layer for layer in model.layers if layer.name in naming.POOLS), None)
    return pool.input if pool is not None else model.outputs[0]


def _part(model, kind):
    """The sub-model of ``model`` that ``forward_features`` ("features"), ``forward_head``
    ("head", "pre_logits") run, built once a model."""
    parts = _PARTS.setdefault(model, {})
    if kind not in parts:
        names = [layer.name for layer in model.layers]
        pooled = naming.pooled(names)
        if kind == "features":
            parts[kind] = keras.Model(_inputs(model), feature_map(model))
        elif pooled is None:
            raise ValueError(f"{model.name} has no pooling layer ({', '.join(naming.POOLS)}): build it with a head, "
                             "num_classes=0 or pooling")
        else:
            end = model.get_layer(pooled).output if kind == "pre_logits" else model.outputs[0]
            parts[kind] = keras.Model(feature_map(model), end)
    return parts[kind]


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
    data_format = layout.of(model)
    height, width = layout.spatial(model.input_shape, data_format)
    probe = (256, 256) if height is None or width is None else (height, width)
    shapes = keras.Model(model.inputs, [layer.output for layer in ends]).compute_output_shape(
        (1, *layout.image_shape(*probe, layout.channels(model.input_shape, data_format), data_format)))
    levels = {}
    for layer, shape in zip(ends, shapes):
        stride = probe[0] // layout.spatial(shape, data_format)[0]
        level = f"P{stride.bit_length() - 1}"
        levels[level] = {"level": level, "stage": naming.end_stage(layer.name), "layer": layer.name,
                         "channels": int(layout.channels(shape, data_format)), "stride": stride}
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
