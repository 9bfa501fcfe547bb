"""The training run of ``reszoo-train`` (``training.train`` parses its flags, then runs ``main``
here): the model (new, or fine-tuned from ``--init_from``), the data, the loop or Keras' fit
under a tf.distribute strategy, checkpoints that survive a kill, and the export at the end.
The flags are read once, by ``main``; ``run(options)`` is the same from Python:

    from training import fit, flags
    fit.run(flags.options())   # after absl has parsed the command line (training.train defines the flags)
"""

import math
import os
import signal
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import reszoo
from reszoo import diagnostics, naming, optim, transfer
from reszoo.layers import ResidualAdapter
from training import augment, callbacks, data as data_lib, exporter, loop, recipes, run_folder, strategy as strategies
from training import flags as run_flags
from training.common import files, sources
from training.common.command import KERAS_APPLICATIONS_PREFIX, CommandError, os_error_message


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM (what a preempted machine gets first): stop cleanly, resumable."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


def check_options(opts):
    """Usage errors between flags, before anything is loaded."""
    if opts.init_from is None and (opts.freeze != "none" or opts.backbone_lr_multiplier != 1.0):
        raise CommandError("--freeze and --backbone_lr_multiplier need --init_from", 2)
    if opts.weights_path and not (opts.init_from or "").startswith(KERAS_APPLICATIONS_PREFIX):
        raise CommandError("--weights_path needs --init_from=keras_applications:NAME", 2)
    if opts.adapters != "none" and opts.init_from is None:
        raise CommandError("--adapters needs --init_from (the backbone they adapt)", 2)
    if opts.adapters != "none" and opts.freeze != "none":
        raise CommandError("--freeze goes without --adapters: with adapters the backbone is frozen and "
                           "only adapters, BatchNorm and the classifier train", 2)
    if opts.bce_target_threshold and opts.loss != "bce":
        raise CommandError("--bce_target_threshold needs --loss=bce", 2)
    if opts.diagnostics and opts.distribution_strategy == "multi_worker_mirrored":
        raise CommandError("--diagnostics runs with model.fit, not with --distribution_strategy=multi_worker_mirrored", 2)
    if opts.cutmix_alpha > 1:
        raise CommandError(f"--cutmix_alpha={opts.cutmix_alpha:g}: Keras' CutMix takes alpha in (0, 1]", 2)


def check_run_length(opts, steps_per_epoch, epochs):
    """What the run's length makes pointless: diagnostics measured less often than the run has
    steps (a usage error), a warm-up as long as the run (a warning: the rate never peaks)."""
    steps = steps_per_epoch * epochs
    if opts.diagnostics > steps:
        raise CommandError(f"--diagnostics={opts.diagnostics} measures every {opts.diagnostics} steps, and this run has "
                           f"{steps} ({epochs} epoch(s) of {steps_per_epoch}): give --diagnostics=N with N at most "
                           f"{steps}", 2)
    if opts.warmup_epochs and opts.warmup_epochs >= epochs:
        recipe = f", set by --recipe={opts.recipe}" if run_flags.set_by_recipe(opts, "warmup_epochs") else ""
        print(f"train: warning: the warm-up ({opts.warmup_epochs:g} epochs{recipe}) is as long as the run ({epochs} "
              f"epoch(s)): the learning rate never reaches its peak; give --warmup_epochs below {epochs}",
              file=sys.stderr, flush=True)


def new_model(opts, data):
    """Raw pixels in: per-channel standardisation with the training set's statistics is the
    model's first layer, so saved and exported models take images as they are."""
    overrides = run_flags.model_args(opts.model_args)
    overrides.setdefault("preprocessing", {"mean": data.mean.tolist(), "std": data.std.tolist()})
    if opts.optimizer == "sgd" and opts.weight_decay:
        overrides.setdefault("kernel_regularizer", keras.regularizers.L2(opts.weight_decay / 2))
    try:
        return reszoo.create_model(opts.model, input_shape=data.image_shape, num_classes=data.num_classes,
                                   **overrides)
    except (ValueError, TypeError) as err:
        raise CommandError(str(err), 2) from None


def run_standardisation(model, data):
    """A run's model standardises pixels with its training set's statistics (``new_model``);
    fine-tuned on other data it takes that data's, so its frozen layers see what they were
    trained on: the digits' 4-bit pixels and a folder's 8-bit ones differ 16-fold. None when
    the model has no such layer or the statistics are already these."""
    layer = next((l for l in model.layers if l.name == naming.PREPROCESS), None)
    if not isinstance(layer, keras.layers.Normalization):
        return None
    mean = np.ravel(keras.ops.convert_to_numpy(layer.mean))
    std = np.sqrt(np.ravel(keras.ops.convert_to_numpy(layer.variance)))
    if np.allclose(mean, data.mean, rtol=1e-3) and np.allclose(std, data.std, rtol=1e-3):
        return None
    print(f"standardisation: this dataset's mean {_channels(data.mean)} and std {_channels(data.std)} replace "
          f"--init_from's ({_channels(mean)}, {_channels(std)})", flush=True)
    return data.mean, data.std


def _channels(values):
    return "/".join(f"{v:.3g}" for v in np.ravel(values))


def fine_tune_model(old, data, opts):
    """``old`` (the model of --init_from) with a new classifier for this dataset's classes,
    and residual adapters with --adapters."""
    source = opts.init_from
    # A .keras file or run folder; adapter tasks keep the backbone's (their own BN layers learn
    # the new data's scale, and the tasks of one backbone share its layers in the server).
    standardisation = run_standardisation(old, data) if old is not None and opts.adapters == "none" else None
    if old is None:
        old, source = sources.published_model(opts.init_from, opts.weights_path, data.image_shape)
    if naming.AVG_POOL not in [layer.name for layer in old.layers]:
        raise CommandError(f"--init_from: {source} has no {naming.AVG_POOL!r} + {naming.CLASSIFIER!r} head to "
                           "replace (layers end with "
                           f"{[layer.name for layer in old.layers][-3:]})", 2)
    old = sources.resized(old, data.image_shape, source, standardisation)
    try:
        if opts.adapters != "none":
            model = transfer.add_adapters(old, opts.adapters, num_classes=data.num_classes)
        else:
            model = transfer.replace_classifier(old, data.num_classes)
    except ValueError as err:
        raise CommandError(f"--init_from: {source}: {err}", 2) from None
    set_l2(model, opts.weight_decay / 2 if opts.optimizer == "sgd" else 0.0)
    return model


def set_l2(model, factor):
    """SGD's weight decay is L2 on every kernel (He et al. 2015); a loaded model gets this
    run's --weight_decay, not the one it was trained with (AdamW decays in the optimizer)."""
    regularizer = keras.regularizers.L2(factor) if factor else None
    for layer in model.layers:
        layer = layer.adapter if isinstance(layer, ResidualAdapter) else layer
        if getattr(layer, "kernel", None) is not None and hasattr(layer, "kernel_regularizer"):
            layer.kernel_regularizer = regularizer
            layer.kernel.regularizer = regularizer


def freeze(model, up_to):
    """--freeze, by reszoo.transfer.freeze."""
    try:
        transfer.freeze(model, up_to)
    except ValueError as err:
        raise CommandError(f"--{err}", 2) from None


def learning_rate(opts):
    """The peak learning rate at --batch_size, and a line saying how it was scaled (or None)."""
    lr = recipes.scaled_learning_rate(opts.learning_rate, opts.batch_size, opts.lr_batch_base, opts.lr_scaling)
    if not opts.lr_batch_base or opts.batch_size == opts.lr_batch_base:
        return lr, None
    ratio = f"{opts.batch_size}/{opts.lr_batch_base}"
    rule = ratio if opts.lr_scaling == "linear" else f"sqrt({ratio})"
    of = f" (--recipe={opts.recipe} sets {opts.learning_rate:g} for batch {opts.lr_batch_base})" if opts.recipe else ""
    return lr, f"learning rate {lr:.6g} = {opts.learning_rate:g} x {rule}, {opts.lr_scaling} scaling{of}"


def fixres(model, image_shape, augmentation):
    """With --train_size (FixRes, Touvron et al. 2019), ``model`` takes images of any side: it
    trains on smaller ones and is tested and saved at ``image_shape``."""
    side = augmentation.train_side(image_shape[0])
    if side != image_shape[0]:
        smallest = max((level["stride"] for level in reszoo.features(model)), default=1)
        if min(side, augmentation.train_side(image_shape[1])) < smallest:
            raise CommandError(f"--train_size={augmentation.train_size:g}: images of {side}x{side} are too small for "
                               f"this net: it takes at least {smallest}x{smallest} (its total stride)", 2)
        augment.accept_any_size(model)
        print(f"FixRes: training on {side}x{augmentation.train_side(image_shape[1])} images, testing on "
              f"{image_shape[0]}x{image_shape[1]}", flush=True)


def compile_model(model, opts, steps_per_epoch, epochs):
    lr, scaled = learning_rate(opts)
    if scaled:
        print(scaled, flush=True)
    schedule = optim.Schedule(
        lr, total_steps=steps_per_epoch * epochs, kind=opts.lr_schedule,
        boundaries=[int(e) * steps_per_epoch for e in opts.lr_decay_epochs],
        decay_rate=opts.lr_decay_rate, warmup_steps=round(opts.warmup_epochs * steps_per_epoch),
        warmup=opts.warmup)
    optimizer = optim.make_optimizer(
        opts.optimizer, schedule, momentum=opts.momentum, nesterov=opts.nesterov,
        weight_decay=opts.weight_decay, model=model,
        lr_multipliers=transfer.lr_multipliers(model, backbone=opts.backbone_lr_multiplier), ema_decay=opts.ema_decay)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if model.output_shape[-1] > 10:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    model.compile(
        optimizer=optimizer,
        loss=optim.make_loss(opts.loss, opts.label_smoothing, opts.bce_target_threshold),
        metrics=metrics, jit_compile=opts.jit_compile, steps_per_execution=opts.steps_per_execution)


def default_model_dir(opts):
    return os.path.join("runs", f"{opts.model}-{data_lib.dataset_name(opts.dataset, opts.data_dir)}")


def run(opts):
    """Train (or fine-tune) as ``opts`` (``training.flags.options()``) says; returns the
    results written to model_dir/results.json. Raises ``CommandError`` with one line. Models
    are built channels_last whatever Keras' image_data_format: the data pipeline is NHWC, as
    TensorFlow's CPU kernels are."""
    keras.config.set_image_data_format("channels_last")
    check_options(opts)
    strategy = strategies.make(opts.distribution_strategy, opts.tpu, opts.worker_timeout)  # before other ops
    chief = strategies.is_chief(strategy)
    folder = run_folder.RunFolder(opts.model_dir or default_model_dir(opts))
    record = run_flags.record(opts)
    plan_args = dict(overwrite=opts.overwrite, allow_changes=opts.allow_flag_changes,
                     ignored=run_flags.NOT_RUN_DEFINING, changeable=run_flags.CHANGEABLE)
    if chief:
        folder.check_writable()
    folder.plan(record, **plan_args)  # a usage error now, before the slow parts; nothing written
    keras.utils.set_random_seed(opts.seed)
    if opts.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.config.set_dtype_policy(opts.dtype)

    init = sources.load_init_model(opts.init_from) if opts.init_from else None
    channels = init.input_shape[-1] if init is not None else None  # keras.applications weights take any
    try:
        data = data_lib.load(opts.dataset, opts.data_dir, opts.image_size or None, opts.validation_split,
                             opts.seed, channels=channels)
    except data_lib.DataError as err:
        raise CommandError(str(err), 2) from None
    steps_per_epoch = data.num_train // opts.batch_size
    if steps_per_epoch == 0:
        recipe = (f" (--recipe={opts.recipe} sets it for its paper's data: give a smaller --batch_size, and the "
                  "learning rate is scaled to it)" if run_flags.set_by_recipe(opts, "batch_size") else "")
        raise CommandError(f"--batch_size={opts.batch_size} is larger than the {data.num_train} training "
                           f"images{recipe}", 2)
    if opts.batch_size % strategy.num_replicas_in_sync:
        raise CommandError(f"--batch_size={opts.batch_size} must be a multiple of the "
                           f"{strategy.num_replicas_in_sync} replicas", 2)
    epochs = math.ceil(opts.train_steps / steps_per_epoch) if opts.train_steps else opts.epochs
    check_run_length(opts, steps_per_epoch, epochs)

    augmentation = augment.Augmentation.from_options(opts)
    if augmentation.train_side(min(data.image_shape[:2])) > min(data.image_shape[:2]):
        raise CommandError(f"--train_size={opts.train_size:g} is larger than the test images "
                           f"({data.image_shape[0]}x{data.image_shape[1]}): FixRes trains on smaller ones", 2)
    with strategy.scope():
        model = fine_tune_model(init, data, opts) if opts.init_from else new_model(opts, data)
        freeze(model, opts.freeze)
        fixres(model, data.image_shape, augmentation)
        compile_model(model, opts, steps_per_epoch, epochs)

    # The run can start: take the folder, record the flags, resume from its checkpoint.
    if chief:
        folder.lock()
    plan = folder.plan(record, **plan_args)
    if chief:
        folder.start(record, plan)
    checkpoints = run_folder.Checkpoints(folder.backup, keep=opts.checkpoint_hist)
    with strategy.scope():
        state = run_folder.State() if plan == "overwrite" else checkpoints.restore(model)
    if state.epoch:
        print(f"resuming {folder.path} from epoch {state.epoch}", flush=True)
    recorder = run_folder.Recorder(folder, checkpoints, state, write=chief)
    try:
        return _train(strategy, model, data, opts, epochs, steps_per_epoch, folder, recorder, chief)
    except Interrupted as err:
        raise CommandError(f"stopped by {err}; {_kept(recorder, folder)}: re-run the same command to resume",
                           128 + err.signum) from None


def _train(strategy, model, data, opts, epochs, steps_per_epoch, folder, recorder, chief):
    """Train from ``recorder.state`` to ``epochs``, evaluate, write the finished model and
    the results (the chief), and export if asked."""
    first_epoch = recorder.state.epoch
    test = data_lib.eval_pipeline(data, opts.batch_size)
    if opts.show_batch and chief:
        show_batch(data, opts, first_epoch, folder.file(run_folder.BATCH))
    fit = fit_custom if opts.distribution_strategy == "multi_worker_mirrored" else fit_keras
    start = time.perf_counter()
    bad_epoch, metrics = fit(strategy, model, data, test, opts, epochs, steps_per_epoch, recorder,
                             folder.file(run_folder.LOGS))
    fit_seconds = time.perf_counter() - start
    if bad_epoch is not None:
        raise CommandError(
            f"loss became NaN in epoch {bad_epoch + 1}; stopped. {_kept(recorder, folder)}. To continue with a "
            f"lower learning rate, re-run with "
            f"--learning_rate={run_flags.safer_learning_rate(opts.learning_rate, opts.recipe):g} (or "
            f"--warmup_epochs=1) and --allow_flag_changes")
    results = {"test_" + k: float(v) for k, v in metrics.items()}
    results.update(epochs=epochs, trained_epochs=recorder.state.epoch - first_epoch,
                   params=reszoo.count_params(model), class_names=data.class_names, dataset=data.name,
                   model=getattr(reszoo.build_spec(model), "name", None) or opts.model,  # --init_from's, if given
                   fit_seconds=round(fit_seconds, 3))  # this invocation's fit and final evaluation
    if chief:
        files.save_model(model, folder.file(run_folder.LAST))
        if opts.adapters != "none":
            try:
                results["task_bytes"] = transfer.save_task(model, folder.file(run_folder.TASK))
            except OSError as err:
                raise CommandError(os_error_message(err, folder.file(run_folder.TASK))) from None
        files.write_json(folder.file(run_folder.RESULTS), results, indent=2)
    print(f"test accuracy {results['test_accuracy']:.4f} ({data.num_test} images) -> {folder.path}")
    if opts.export and chief:
        print(f"exported {exporter.export(folder.path, opts.export_dir, formats=opts.export_formats)}")
    return results


def train_batches(data, opts, first_epoch, epochs):
    return data_lib.train_pipeline(data, opts.batch_size, opts.augment, opts.seed, first_epoch, epochs,
                                   augment.Augmentation.from_options(opts))


def show_batch(data, opts, first_epoch, path):
    """--show_batch: the first batch this run trains on, augmented, as a PNG grid at ``path``."""
    images, _ = next(iter(train_batches(data, opts, first_epoch, first_epoch + 1)))
    png = augment.grid_png(images[:64], data.max_value)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(png)

    files.atomic_write(path, write)
    print(f"augmented batch -> {path}", flush=True)


def _kept(recorder, folder):
    epoch = recorder.state.epoch
    if not epoch:
        return "no checkpoint was written yet"
    return f"the last good checkpoint (epoch {epoch}) is kept in {folder.backup}"


def fit_keras(strategy, model, data, test, opts, epochs, steps_per_epoch, recorder, log_dir):
    """``model.fit`` with Keras' callbacks (every strategy but multi-worker). Returns
    ``(bad_epoch, test metrics)``: the epoch whose loss went non-finite, or None and the
    final evaluation."""
    first_epoch = recorder.state.epoch
    record = callbacks.RecordEpochs(recorder)
    swap = [callbacks.SwapEMA(resumed=first_epoch > 0)] if opts.ema_decay else []
    if first_epoch < epochs:
        train = train_batches(data, opts, first_epoch, epochs)
        model.fit(train, epochs=epochs, initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch,
                  validation_data=test, validation_freq=opts.eval_every, shuffle=False,
                  verbose=1 if sys.stdout.isatty() else 2,
                  callbacks=[*swap, record, keras.callbacks.TensorBoard(log_dir, write_graph=False),
                             *diagnostics_callback(opts, test, log_dir)])
    if record.bad_epoch is not None:
        return record.bad_epoch, None
    return None, model.evaluate(test, verbose=0, return_dict=True)


def diagnostics_callback(opts, test, log_dir):
    """[reszoo.diagnostics.Diagnostics] with --diagnostics: measured on the first 64 held-out
    images, into the run folder's diagnostics.jsonl and logs/diagnostics; [] without."""
    if not opts.diagnostics:
        return []

    x, y = (np.concatenate(part)[:64] for part in zip(*((a.numpy(), b.numpy()) for a, b in test.take(2))))
    return [diagnostics.Diagnostics((x, y), log_dir=os.path.dirname(log_dir), every_n_steps=opts.diagnostics,
                                    tensorboard_dir=os.path.join(log_dir, "diagnostics"))]


def fit_custom(strategy, model, data, test, opts, epochs, steps_per_epoch, recorder, log_dir):
    """The strategy.run loop of training/loop.py (multi-worker: Keras' fit cannot run there);
    returns as ``fit_keras``, after checking that every replica holds the same weights."""
    first_epoch = recorder.state.epoch
    swap = callbacks.SwapEMA(resumed=first_epoch > 0) if opts.ema_decay else None
    custom = loop.CustomLoop(strategy, model, opts.batch_size, swap)
    train = train_batches(data, opts, first_epoch, epochs)
    bad_epoch = custom.fit(train, epochs, steps_per_epoch, first_epoch, test, opts.eval_every, recorder, log_dir)
    if bad_epoch is not None:
        return bad_epoch, None
    checksums = custom.replica_checksums()
    if len(set(checksums)) > 1:
        raise CommandError(f"the {len(checksums)} replicas ended with different weights (checksums {checksums})")
    print(f"{len(checksums)} replicas in sync (weights checksum {checksums[0]:.6f})")
    return None, custom.evaluate(test)


def main(argv):
    logging.set_verbosity(logging.ERROR)  # tfds and TF warn through absl; errors are ours
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        run(run_flags.options())
    except CommandError as err:
        sys.stderr.write(f"train: error: {err}\n")
        sys.exit(err.code)
    except Interrupted as err:
        sys.stderr.write(f"train: error: stopped by {err} before training started\n")
        sys.exit(128 + err.signum)

