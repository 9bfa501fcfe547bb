"""What Keras' callbacks lack for runs that survive: no checkpoint of a NaN model, and the
epoch a backup holds (the data pipeline restarts there)."""

import json
import math
import os

import keras


def _finite(logs):
    loss = (logs or {}).get("loss")
    return loss is not None and math.isfinite(float(loss))


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss and remembers the epoch."""

    bad_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not _finite(logs):
            self.bad_epoch = self._epoch
            self.model.stop_training = True


class SafeBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` (weights + optimizer state, kept after training so a finished run
    is not redone) that never backs up a model whose loss went NaN."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=False, double_checkpoint=True)

    def saved_epoch(self):
        """Epochs completed in the backup (0 if none): where the data pipeline resumes."""
        for path in (self._training_metadata_path, self._prev_training_metadata_path):
            if os.path.exists(path) and os.path.exists(self._weights_path):
                try:
                    with open(path) as f:
                        return int(json.load(f)["epoch"])
                except (ValueError, KeyError):
                    continue
        return 0

    def on_epoch_end(self, epoch, logs=None):
        if _finite(logs) and not self.model.stop_training:
            super().on_epoch_end(epoch, logs)


class SafeModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` of the whole model that skips NaN epochs."""

    def on_epoch_end(self, epoch, logs=None):
        if _finite(logs) and not self.model.stop_training:
            super().on_epoch_end(epoch, logs)
