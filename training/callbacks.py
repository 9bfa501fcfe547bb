"""The Keras callbacks of a ``model.fit`` run: stop at the first non-finite loss, and hand
every good epoch to the run folder's ``Recorder`` (best model, checkpoint, history); with
``--ema_decay``, evaluate and save the weights' moving average."""

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


class SwapEMA(keras.callbacks.SwapEMAWeights):
    """Keras' ``SwapEMAWeights(swap_on_epoch=True)``: validation runs on the moving average,
    and from the end of each epoch to the start of the next the model holds it (the optimizer
    the raw weights), so ``best.keras`` and the checkpoints written in between hold the EMA
    copy. A run ``resumed`` from such a checkpoint starts in that swapped state."""

    def __init__(self, resumed=False):
        super().__init__(swap_on_epoch=True)
        self._ema_weights_in_model = bool(resumed)
