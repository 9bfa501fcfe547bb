"""Train or fine-tune any reszoo model: ``python -m training.train --model=resnet56 --dataset=cifar10``.

With no flags it trains ResNet-20 on the embedded UCI digits and reports test accuracy.
Re-running the same command resumes from model_dir's last checkpoint.
"""

import json
import math
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, logging  # noqa: E402

from training import flags as run_flags  # noqa: E402

FLAGS = run_flags.FLAGS
run_flags.define()


class RunError(Exception):
    """A problem with the user's run; printed as one line. ``code`` 2 is a usage error."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def _strategy(tf):
    kind = FLAGS.distribution_strategy
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise RunError("--distribution_strategy=multi_worker_mirrored needs the TF_CONFIG "
                           "environment variable (cluster and this worker's task)", 2)
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise RunError(f"TF_CONFIG is not valid JSON: {err}", 2) from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=FLAGS.tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _check_model_dir(model_dir, run, write=True):
    """A model_dir holds one run: the same flags resume it; different flags are refused.
    Only the chief writes (``write``); other workers of a cluster only check."""
    path = os.path.join(model_dir, "flags.json")
    if os.path.exists(path):
        with open(path) as f:
            try:
                previous = json.load(f)
            except json.JSONDecodeError:
                raise RunError(f"{path} is corrupt; pass --overwrite or another --model_dir") from None
        changed = sorted(k for k in set(previous) | set(run)
                         if previous.get(k) != run.get(k) and k not in run_flags.NOT_RUN_DEFINING)
        if changed and not FLAGS.overwrite:
            raise RunError(f"{model_dir} holds a run with other flags ({', '.join(changed)}); "
                           "use another --model_dir or pass --overwrite", 2)
    if not write:
        return
    from training import loop

    os.makedirs(model_dir, exist_ok=True)
    loop.write_json(path, run, indent=2, sort_keys=True)


def _new_model(keras, reszoo, data):
    """Raw pixels in: per-channel normalisation with the training set's statistics is the
    model's first layer, so saved and exported models take images as they are."""
    inputs = keras.Input(data.image_shape, name="image")
    x = keras.layers.Normalization(mean=data.mean, variance=data.std**2, name="preprocess")(inputs)
    overrides = run_flags.model_args()
    if FLAGS.optimizer == "sgd" and FLAGS.weight_decay:
        overrides.setdefault("kernel_regularizer", keras.regularizers.L2(FLAGS.weight_decay / 2))
    try:
        return reszoo.create_model(FLAGS.model, input_tensor=x, num_classes=data.num_classes, **overrides)
    except ValueError as err:
        raise RunError(str(err), 2) from None


def _fine_tune_model(keras, data):
    """The model in --init_from with a new classifier for this dataset's classes."""
    path = FLAGS.init_from
    if path.startswith(KERAS_APPLICATIONS_PREFIX):
        old = _keras_applications_model(data)
        path = FLAGS.weights_path
    elif not os.path.isfile(path):
        raise RunError(f"--init_from: no such file {path}", 2)
    else:
        try:
            old = keras.saving.load_model(path, compile=False)
        except Exception as err:  # a corrupt or foreign file: keras raises many kinds
            raise RunError(f"--init_from: cannot load {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    names = [layer.name for layer in old.layers]
    if "avg_pool" not in names:
        raise RunError(f"--init_from: {path} has no 'avg_pool' + 'fc' head to replace (layers end with {names[-3:]})", 2)
    expected = tuple(old.input_shape[1:])
    if expected != tuple(data.image_shape):
        raise RunError(f"--init_from: layer '{old.layers[0].name}' of {path} expects images of shape "
                       f"{expected}, dataset {data.name} has {tuple(data.image_shape)} "
                       "(set --image_size to match)", 2)
    features = old.get_layer("avg_pool").output
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    dtype = old.get_layer("fc").dtype_policy if "fc" in names else ("float32" if mixed else None)
    logits = keras.layers.Dense(data.num_classes, dtype=dtype, name="fc")(features)
    model = keras.Model(old.inputs, logits, name=old.name)
    _set_l2(keras, model, FLAGS.weight_decay / 2 if FLAGS.optimizer == "sgd" else 0.0)
    return model


KERAS_APPLICATIONS_PREFIX = "keras_applications:"


def _keras_applications_model(data):
    """reszoo's mirror of a keras.applications model with its weights, its preprocessing
    inside (raw RGB pixels in), at the dataset's image size."""
    from reszoo import weights

    architecture = FLAGS.init_from[len(KERAS_APPLICATIONS_PREFIX):]
    if architecture not in weights.KERAS_APPLICATIONS:
        raise RunError(f"--init_from={FLAGS.init_from}: use keras_applications: with one of "
                       f"{', '.join(weights.KERAS_APPLICATIONS)}", 2)
    if not FLAGS.weights_path:
        raise RunError(f"--init_from={FLAGS.init_from} needs --weights_path (e.g. ~/.keras/models/"
                       f"{architecture.lower()}_weights_tf_dim_ordering_tf_kernels_notop.h5)", 2)
    if data.image_shape[-1] != 3 or min(data.image_shape[:2]) < 32:
        raise RunError(f"--init_from={FLAGS.init_from}: keras.applications models take RGB images of at least "
                       f"32x32, dataset {data.name} has {tuple(data.image_shape)}", 2)
    try:
        return weights.create_model(architecture, FLAGS.weights_path, input_shape=data.image_shape,
                                    include_top=False, pooling="avg")
    except weights.WeightsError as err:
        raise RunError(f"--weights_path: {err}", 2) from None


def _set_l2(keras, model, factor):
    """SGD's weight decay is L2 on every kernel (He et al. 2015); a loaded model gets this
    run's --weight_decay, not the one it was trained with (AdamW decays in the optimizer)."""
    regularizer = keras.regularizers.L2(factor) if factor else None
    for layer in model.layers:
        if getattr(layer, "kernel", None) is not None and hasattr(layer, "kernel_regularizer"):
            layer.kernel_regularizer = regularizer
            layer.kernel.regularizer = regularizer


def _freeze(model):
    """--freeze=backbone freezes all but the classifier; --freeze=convN freezes the stem and
    stages up to N. Frozen BN layers run in inference mode (Keras does this for
    trainable=False)."""
    if FLAGS.freeze == "none":
        return
    names = [layer.name for layer in model.layers]
    if FLAGS.freeze == "backbone":
        last = names.index("fc") - 1
    else:
        prefix = FLAGS.freeze + "_"
        hits = [i for i, n in enumerate(names) if n.startswith(prefix)]
        if not hits:
            stages = sorted({n.split("_")[0] for n in names if n.startswith(("conv", "pool"))})
            raise RunError(f"--freeze={FLAGS.freeze}: no such stage; use none, backbone or one of {', '.join(stages)}", 2)
        last = hits[-1]
    for layer in model.layers[: last + 1]:
        layer.trainable = False


def _lr_multipliers(model):
    if FLAGS.backbone_lr_multiplier == 1.0:
        return {}
    head = set(id(v) for v in model.get_layer("fc").trainable_variables)
    return {v.path: FLAGS.backbone_lr_multiplier for v in model.trainable_variables if id(v) not in head}


def _compile(keras, model, steps_per_epoch, epochs):
    from reszoo import optim

    lr = FLAGS.learning_rate
    if FLAGS.lr_batch_base:
        lr *= FLAGS.batch_size / FLAGS.lr_batch_base
    schedule = optim.Schedule(
        lr, total_steps=steps_per_epoch * epochs, kind=FLAGS.lr_schedule,
        boundaries=[int(e) * steps_per_epoch for e in FLAGS.lr_decay_epochs],
        decay_rate=FLAGS.lr_decay_rate, warmup_steps=round(FLAGS.warmup_epochs * steps_per_epoch),
        warmup=FLAGS.warmup)
    optimizer = optim.make_optimizer(
        FLAGS.optimizer, schedule, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov,
        weight_decay=FLAGS.weight_decay, model=model, lr_multipliers=_lr_multipliers(model))
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if model.output_shape[-1] > 10:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(5, name="top5"))
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=FLAGS.label_smoothing),
        metrics=metrics, jit_compile=FLAGS.jit_compile, steps_per_execution=FLAGS.steps_per_execution)


def run():
    import keras
    import tensorflow as tf

    import reszoo
    from training import data as data_lib, loop

    run_flags.apply_recipe()
    if FLAGS.init_from is None and (FLAGS.freeze != "none" or FLAGS.backbone_lr_multiplier != 1.0):
        raise RunError("--freeze and --backbone_lr_multiplier need --init_from", 2)
    strategy = _strategy(tf)  # first: multi-worker collectives must be set up before other ops
    chief = loop.is_chief(strategy)
    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.config.set_dtype_policy(FLAGS.dtype)

    try:
        data = data_lib.load(FLAGS.dataset, FLAGS.data_dir, FLAGS.image_size or None,
                             FLAGS.validation_split, FLAGS.seed)
    except data_lib.DataError as err:
        raise RunError(str(err), 2) from None
    model_dir = FLAGS.model_dir or os.path.join("runs", f"{FLAGS.model}-{data.name}")
    _check_model_dir(model_dir, run_flags.as_dict(), write=chief)

    steps_per_epoch = data.num_train // FLAGS.batch_size
    if steps_per_epoch == 0:
        raise RunError(f"--batch_size={FLAGS.batch_size} is larger than the {data.num_train} training images", 2)
    if FLAGS.batch_size % strategy.num_replicas_in_sync:
        raise RunError(f"--batch_size={FLAGS.batch_size} must be a multiple of the "
                       f"{strategy.num_replicas_in_sync} replicas", 2)
    epochs = math.ceil(FLAGS.train_steps / steps_per_epoch) if FLAGS.train_steps else FLAGS.epochs

    with strategy.scope():
        model = _fine_tune_model(keras, data) if FLAGS.init_from else _new_model(keras, reszoo, data)
        _freeze(model)
        _compile(keras, model, steps_per_epoch, epochs)

    test = data_lib.eval_pipeline(data, FLAGS.batch_size)
    fit = _fit_custom if FLAGS.distribution_strategy == "multi_worker_mirrored" else _fit_keras
    history, bad_epoch, saved_epoch, evaluate = fit(keras, strategy, model, data, test, model_dir, epochs,
                                                    steps_per_epoch)
    if bad_epoch is not None:
        raise RunError(f"loss became NaN in epoch {bad_epoch + 1}; stopped. The last good "
                       f"checkpoint (epoch {saved_epoch()}) is in {model_dir}: lower "
                       "--learning_rate or add --warmup_epochs, then re-run to resume")
    results = {"test_" + k: float(v) for k, v in evaluate().items()}
    results.update(epochs=epochs, trained_epochs=len(history), params=reszoo.count_params(model),
                   class_names=data.class_names, dataset=data.name, model=FLAGS.model)
    if chief:
        loop.save_model(model, os.path.join(model_dir, "last.keras"))
        with open(os.path.join(model_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    print(f"test accuracy {results['test_accuracy']:.4f} ({data.num_test} images) -> {model_dir}")
    if FLAGS.export and chief:
        from training import export

        try:
            print(f"exported {export.export(model_dir, FLAGS.export_dir, formats=FLAGS.export_formats)}")
        except export.ExportError as err:
            raise RunError(f"export: {err}", err.code) from None
    return results


def _fit_keras(keras, strategy, model, data, test, model_dir, epochs, steps_per_epoch):
    """model.fit with Keras' callbacks (every strategy but multi-worker)."""
    from training import callbacks, data as data_lib

    backup = callbacks.SafeBackupAndRestore(os.path.join(model_dir, "backup"))
    first_epoch = backup.saved_epoch()
    if first_epoch:
        print(f"resuming {model_dir} from epoch {first_epoch}")
    train = data_lib.train_pipeline(data, FLAGS.batch_size, FLAGS.augment, FLAGS.seed, first_epoch, epochs)
    guard = callbacks.NanGuard()
    history = model.fit(
        train, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=test,
        validation_freq=FLAGS.eval_every, verbose=1 if sys.stdout.isatty() else 2,
        callbacks=[
            guard,
            backup,
            callbacks.SafeModelCheckpoint(os.path.join(model_dir, "best.keras"), monitor="val_accuracy",
                                          mode="max", save_best_only=True),
            keras.callbacks.CSVLogger(os.path.join(model_dir, "history.csv"), append=True),
            keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), write_graph=False),
        ])
    evaluate = lambda: model.evaluate(test, verbose=0, return_dict=True)
    return history.epoch, guard.bad_epoch, backup.saved_epoch, evaluate


def _fit_custom(keras, strategy, model, data, test, model_dir, epochs, steps_per_epoch):
    """The strategy.run loop of training/loop.py (multi-worker: Keras' fit cannot run there)."""
    from training import data as data_lib, loop

    custom = loop.CustomLoop(strategy, model, FLAGS.batch_size, FLAGS.label_smoothing)
    backup = loop.Backup(os.path.join(model_dir, "backup"), custom.chief)
    first_epoch = backup.saved_epoch()
    if first_epoch:
        backup.restore(model)
        print(f"resuming {model_dir} from epoch {first_epoch}")
    train = data_lib.train_pipeline(data, FLAGS.batch_size, FLAGS.augment, FLAGS.seed, first_epoch, epochs)
    history, bad_epoch = custom.fit(train, epochs, steps_per_epoch, first_epoch, backup, test,
                                    FLAGS.eval_every, model_dir)
    checksums = custom.replica_checksums()
    if len(set(checksums)) > 1:
        raise RunError(f"the {len(checksums)} replicas ended with different weights (checksums {checksums})")
    print(f"{len(checksums)} replicas in sync (weights checksum {checksums[0]:.6f})")
    return history, bad_epoch, backup.saved_epoch, lambda: custom.evaluate(test)


def main(argv):
    if len(argv) > 1:
        sys.stderr.write(f"train: error: unexpected arguments {argv[1:]}\n")
        sys.exit(2)
    logging.set_verbosity(logging.ERROR)  # tfds and TF warn through absl; errors are ours
    try:
        run()
    except RunError as err:
        sys.stderr.write(f"train: error: {err}\n")
        sys.exit(err.code)


if __name__ == "__main__":
    app.run(main, flags_parser=run_flags.parse)
