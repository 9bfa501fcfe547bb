"""The model a run starts from, or an adapter task's backbone: ``--init_from`` as a run folder or
``.keras`` file (``load_init_model``), timm's published weights (``timm/ARCH.TAG`` or a state
dict) or keras.applications' (``keras_applications:NAME`` with a weights file), each through
``reszoo.create_model``, on the data's image shape (``resized``). ``reszoo-train`` fine-tunes
from it; ``reszoo-serve`` loads adapter tasks' backbones with ``backbone``."""

import dataclasses
import os

import keras
import numpy as np

import reszoo
from reszoo import hub, naming, weights
from training.common import files
from training.common.command import KERAS_APPLICATIONS_PREFIX, CommandError, first_line


def load_init_model(init_from):
    """The model of ``--init_from``: a ``.keras`` file or a run folder (its last.keras, else
    best.keras); None for published weights (timm/ARCH.TAG, checked here) and
    keras_applications:NAME, which are built once the data's image shape is known."""
    if init_from.startswith(hub.PREFIX) or hub.is_checkpoint(init_from):
        try:  # a usage error now, before the data is read
            hub.checkpoint(init_from) if hub.is_checkpoint(init_from) else hub.resolve(None, init_from)
        except weights.WeightsError as err:
            raise CommandError(f"--init_from: {err}", 2) from None
        return None
    if init_from.startswith(KERAS_APPLICATIONS_PREFIX):
        return None
    try:
        init_from = weights.run_model_file(init_from)
    except weights.WeightsError as err:
        raise CommandError(f"--init_from: {err}", 2) from None
    return files.load_model(init_from, "--init_from")


def timm_model(init_from, image_shape):
    """reszoo's model of timm's weights ``init_from`` ("timm/ARCH.TAG", or a timm state dict:
    ``reszoo.hub.Checkpoint``), with their
    preprocessing inside (raw pixels in), at the dataset's image size and channels, no head."""
    if min(image_shape[:2]) < 32:
        raise CommandError(f"--init_from={init_from}: ImageNet nets take images of at least 32x32, the dataset has "
                           f"{tuple(image_shape)}", 2)
    try:
        return reszoo.create_model(weights=init_from, input_shape=image_shape, include_top=False, pooling="avg")
    except weights.WeightsError as err:
        raise CommandError(f"--init_from: {err}", 2) from None


def keras_applications_model(init_from, weights_path, image_shape):
    """reszoo's mirror of a keras.applications model with its weights, its preprocessing
    inside (raw pixels in), at the dataset's image size and channels (grey images through the
    RGB preprocessing; more channels through an adapted first conv)."""
    architecture = init_from[len(KERAS_APPLICATIONS_PREFIX):]
    if architecture not in weights.KERAS_APPLICATIONS:
        raise CommandError(f"--init_from={init_from}: use keras_applications: with one of "
                           f"{', '.join(weights.KERAS_APPLICATIONS)}", 2)
    if not weights_path:
        raise CommandError(f"--init_from={init_from} needs --weights_path (e.g. ~/.keras/models/"
                           f"{architecture.lower()}_weights_tf_dim_ordering_tf_kernels_notop.h5)", 2)
    if min(image_shape[:2]) < 32:
        raise CommandError(f"--init_from={init_from}: keras.applications models take images of at least "
                           f"32x32, the dataset has {tuple(image_shape)}", 2)
    try:
        return reszoo.create_model(weights.KERAS_APPLICATIONS[architecture][0], variant="keras",
                                   weights=os.path.expanduser(weights_path), input_shape=image_shape,
                                   include_top=False, pooling="avg")
    except weights.WeightsError as err:
        raise CommandError(f"--weights_path: {err}", 2) from None


def resized(model, image_shape, source, standardisation=None):
    """``model``, or a copy of it (same weights) on an input of ``image_shape``, which a fully
    convolutional net up to its pooling allows; with ``standardisation`` (mean, std), its
    per-channel standardisation (a ``preprocess`` Normalization) takes those statistics."""
    expected = tuple(model.input_shape[1:])
    if expected[-1] != image_shape[-1]:
        raise CommandError(f"--init_from: {source} takes images of {expected[-1]} channel(s), the dataset has "
                           f"{image_shape[-1]}", 2)
    if expected == tuple(image_shape) and standardisation is None:
        return model

    def clone(layer):
        if standardisation is not None and layer.name == naming.PREPROCESS:
            mean, std = (np.asarray(v, "float64").tolist() for v in standardisation)
            return keras.layers.Normalization(axis=layer.axis, mean=mean, variance=[s * s for s in std],
                                              name=naming.PREPROCESS)
        return layer.__class__.from_config(layer.get_config())

    image = keras.Input(image_shape, name=model.inputs[0].name)
    try:
        copy = keras.models.clone_model(model, input_tensors=[image] if isinstance(model.input, list) else image,
                                        clone_function=clone)
    except Exception as err:  # a layer that needs its trained size (Flatten + Dense, ...)
        raise CommandError(f"--init_from: {source} takes images of {expected[:2]} and cannot take "
                           f"{tuple(image_shape[:2])} ({first_line(err)}); set --image_size={expected[0]}", 2) from None
    copy.set_weights(model.get_weights())
    copy.build_spec = getattr(model, "build_spec", None)
    if standardisation is not None and copy.build_spec is not None:  # what create_model(weights=run) rebuilds
        mean, std = (np.asarray(v, "float64").tolist() for v in standardisation)
        copy.build_spec = dataclasses.replace(copy.build_spec, overrides={
            **copy.build_spec.overrides, "preprocessing": {"mean": mean, "std": std}})
    return copy


def published_model(init_from, weights_path, image_shape):
    """The model of published weights ``init_from`` (timm's, or ``keras_applications:NAME``
    from ``weights_path``) at ``image_shape``, and the source to name in an error."""
    if init_from.startswith(KERAS_APPLICATIONS_PREFIX):
        return keras_applications_model(init_from, weights_path, image_shape), weights_path
    return timm_model(init_from, image_shape), init_from


def backbone(init_from, weights_path, image_shape):
    """The model of ``--init_from`` (any source) at ``image_shape``, as a run trained from it
    started (an adapter task's backbone)."""
    model, source = load_init_model(init_from), init_from
    if model is None:
        model, source = published_model(init_from, weights_path, image_shape)
    return resized(model, image_shape, source)
