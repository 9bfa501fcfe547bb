"""Training across machines: a ``strategy.run`` loop for MultiWorkerMirroredStrategy.

Keras 3's ``model.fit`` cannot run under MultiWorkerMirroredStrategy (keras-team/keras#20585),
so this is the loop the TensorFlow guide "Custom training loop with MultiWorkerMirroredStrategy"
prescribes: a compiled Keras model and optimizer built under the strategy's scope, a
distributed dataset, per-example losses averaged over the global batch, and gradients summed
across workers by the Keras optimizer. Every worker trains; only the chief writes to
model_dir (shared storage on a real cluster, through ``training.run_folder``), and every
worker resumes from it.
"""

import math
import os

import keras
import tensorflow as tf

from training.strategy import is_chief


class CustomLoop:
    """``fit`` and ``evaluate`` for a model compiled with a Keras optimizer and loss, under any
    tf.distribute strategy. Loss is the compiled loss per example plus the model's
    regularization losses, as ``model.fit`` computes it. ``swap_ema`` (a
    ``training.callbacks.SwapEMA``, with ``--ema_decay``) is called as ``fit`` would."""

    def __init__(self, strategy, model, global_batch_size, swap_ema=None):
        self.strategy, self.model = strategy, model
        self.global_batch_size = global_batch_size
        self.swap_ema = swap_ema
        self.chief = is_chief(strategy)
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_step = tf.function(self._distributed_eval_step)
        self._statistics = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
        self._sync = tf.function(lambda: strategy.run(self._replica_sync))

    def _losses(self, labels, logits):
        return self.model.loss.call(labels, tf.cast(logits, "float32"))

    def _replica_train_step(self, images, labels):
        model = self.model
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = self._losses(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=self.global_batch_size)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1) == tf.argmax(labels, -1), "float32"))
        return loss, correct

    def _distributed_train_step(self, batch):
        loss, correct = self.strategy.run(self._replica_train_step, args=batch)
        return (self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                self.strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    def _replica_sync(self):
        """Each replica updates BN moving statistics from its own share of the batch, as
        under Keras' fit with MirroredStrategy; set them all to their mean across replicas
        (tf.keras' ON_READ/MEAN semantics) before they are evaluated or saved."""
        if self._statistics:
            means = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in self._statistics])
            for v, mean in zip(self._statistics, means):
                v.assign(mean)

    def _replica_eval_step(self, images, labels):
        logits = self.model(images, training=False)
        correct = tf.cast(tf.argmax(logits, -1) == tf.argmax(labels, -1), "float32")
        return tf.reduce_sum(self._losses(labels, logits)), tf.reduce_sum(correct), tf.cast(tf.shape(labels)[0], "float32")

    def _distributed_eval_step(self, batch):
        values = self.strategy.run(self._replica_eval_step, args=batch)
        return [self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in values]

    def _distribute(self, dataset):
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    def evaluate(self, dataset):
        """Loss and accuracy over the whole dataset; each worker evaluates its shard."""
        total = tf.zeros(3)
        for batch in self._distribute(dataset):
            total += tf.stack(self._eval_step(batch))
        loss, correct, count = total.numpy()
        return {"loss": float(loss / count), "accuracy": float(correct / count)}

    def fit(self, dataset, epochs, steps_per_epoch, first_epoch, test, eval_every, recorder, log_dir):
        """Train epochs ``first_epoch .. epochs - 1``, evaluating on ``test`` every
        ``eval_every`` epochs; each good epoch goes to ``recorder.end_epoch`` (which writes on
        the chief only) and, on the chief, to TensorBoard in ``log_dir`` and stdout. Returns
        the epoch whose loss went non-finite (training stops there; the last checkpoint
        stays the last good epoch), or None."""
        iterator = iter(self._distribute(dataset))
        writer = tf.summary.create_file_writer(os.path.join(log_dir, "train")) if self.chief else None
        swap = self.swap_ema or keras.callbacks.Callback()
        swap.set_model(self.model)
        swap.set_params({"epochs": epochs})
        for epoch in range(first_epoch, epochs):
            swap.on_epoch_begin(epoch)
            loss_sum = correct = 0.0
            for _ in range(steps_per_epoch):
                loss, hits = self._train_step(next(iterator))
                loss_sum += float(loss)
                correct += float(hits)
            logs = {"loss": loss_sum / steps_per_epoch,
                    "accuracy": correct / (steps_per_epoch * self.global_batch_size)}
            if not math.isfinite(logs["loss"]):
                return epoch
            self._sync()
            if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                swap.on_test_begin()
                logs.update({"val_" + k: v for k, v in self.evaluate(test).items()})
                swap.on_test_end()
            swap.on_epoch_end(epoch)
            recorder.end_epoch(self.model, epoch, logs)
            if self.chief:
                with writer.as_default(step=epoch):
                    for k, v in logs.items():
                        tf.summary.scalar(k, v)
                print(f"epoch {epoch + 1}/{epochs} " + " ".join(f"{k} {v:.4f}" for k, v in logs.items()), flush=True)
        if first_epoch < epochs:
            self.model.optimizer.finalize_variable_values(self.model.trainable_variables)
        return None

    def replica_checksums(self):
        """Per replica, the sum of |w| over all model variables (trainable or not), gathered
        from every worker: equal values mean the replicas hold the same model. All workers
        must call it (it is a collective)."""

        def checksum():
            total = tf.add_n([tf.reduce_sum(tf.abs(tf.cast(v.value, "float64"))) for v in self.model.variables])
            return tf.reshape(total, [1])

        gathered = self.strategy.gather(self.strategy.run(tf.function(checksum)), axis=0)
        return gathered.numpy().tolist()
