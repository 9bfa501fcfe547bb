"""The Keras callback of a ``model.fit`` run: stop at the first non-finite loss, and hand
every good epoch to the run folder's ``Recorder`` (best model, checkpoint, history)."""

import math

import keras


def finite(logs):
    loss = (logs or {}).get("loss")
    return loss is not None and math.isfinite(float(loss))


class RecordEpochs(keras.callbacks.Callback):
    """Stops training at the first non-finite loss (``bad_epoch``); after each good epoch,
    ``recorder.end_epoch`` writes what the run keeps."""

    def __init__(self, recorder):
        super().__init__()
        self.recorder = recorder
        self.bad_epoch = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not finite(logs):
            self.bad_epoch = self._epoch
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.bad_epoch is None and finite(logs):
            self.recorder.end_epoch(self.model, epoch, logs)
