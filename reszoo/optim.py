"""Learning-rate schedules, optimizers and losses of the papers' recipes (pure Keras;
registered so that saved training checkpoints load with `import reszoo`)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="reszoo")
class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Step decay (He et al. 2015: lr / 10 at fixed iterations), cosine decay or constant,
    after ``warmup_steps`` of either a linear ramp from 0 or a constant ``warmup_factor * lr``
    (He et al. 2015 warm ResNet-110 up at 0.01 for ~400 iterations)."""

    def __init__(self, learning_rate, total_steps, kind="step", boundaries=(), decay_rate=0.1,
                 warmup_steps=0, warmup="linear", warmup_factor=0.1):
        self.learning_rate = float(learning_rate)
        self.total_steps = int(total_steps)
        self.kind = kind
        self.boundaries = [int(b) for b in boundaries]
        self.decay_rate = float(decay_rate)
        self.warmup_steps = int(warmup_steps)
        self.warmup = warmup
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.kind == "step":
            for boundary in self.boundaries:
                lr = ops.where(step >= boundary, lr * self.decay_rate, lr)
        elif self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = lr * 0.5 * (1.0 + ops.cos(3.141592653589793 * progress))
        if self.warmup_steps:
            if self.warmup == "linear":
                warm = self.learning_rate * (step + 1.0) / self.warmup_steps
            else:
                warm = ops.convert_to_tensor(self.learning_rate * self.warmup_factor, "float32")
            lr = ops.where(step < self.warmup_steps, warm, lr)
        return lr

    def get_config(self):
        return dict(learning_rate=self.learning_rate, total_steps=self.total_steps, kind=self.kind,
                    boundaries=self.boundaries, decay_rate=self.decay_rate,
                    warmup_steps=self.warmup_steps, warmup=self.warmup,
                    warmup_factor=self.warmup_factor)


def _with_lr_multipliers(base):
    class Optimizer(base):
        """``base`` with per-variable learning-rate multipliers (e.g. a slower backbone when
        fine-tuning), keyed by variable path."""

        def __init__(self, lr_multipliers=None, **kwargs):
            super().__init__(**kwargs)
            self.lr_multipliers = dict(lr_multipliers or {})

        def build(self, variables):
            super().build(variables)
            self._factors = [self.lr_multipliers.get(v.path, 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            factor = self._factors[self._get_variable_index(variable)] if self.lr_multipliers else 1.0
            if factor != 1.0:
                learning_rate = ops.cast(learning_rate, variable.dtype) * factor
            return super().update_step(gradient, variable, learning_rate)

        def get_config(self):
            return {**super().get_config(), "lr_multipliers": self.lr_multipliers}

    Optimizer.__name__ = base.__name__
    return keras.saving.register_keras_serializable(package="reszoo")(Optimizer)


SGD = _with_lr_multipliers(keras.optimizers.SGD)
AdamW = _with_lr_multipliers(keras.optimizers.AdamW)
Lamb = _with_lr_multipliers(keras.optimizers.Lamb)


@keras.saving.register_keras_serializable(package="reszoo")
class BinaryCrossentropy(keras.losses.Loss):
    """One-vs-all binary cross-entropy on logits, averaged over classes (Wightman et al. 2021,
    Sec. 2.3), as timm's ``BinaryCrossEntropy``: label smoothing moves targets towards
    ``1 / classes`` (not Keras' 0.5), then targets above ``target_threshold`` become 1."""

    def __init__(self, label_smoothing=0.0, target_threshold=0.0, name="binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.target_threshold = float(target_threshold)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")
        y_true = ops.cast(y_true, "float32")
        if self.label_smoothing:
            y_true = y_true * (1.0 - self.label_smoothing) + self.label_smoothing / ops.shape(y_true)[-1]
        if self.target_threshold:
            y_true = ops.cast(y_true > self.target_threshold, "float32")
        return ops.mean(ops.binary_crossentropy(y_true, y_pred, from_logits=True), axis=-1)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing,
                "target_threshold": self.target_threshold}


def make_loss(name="ce", label_smoothing=0.0, target_threshold=0.0):
    """Softmax cross-entropy (``ce``) or one-vs-all binary cross-entropy (``bce``) on logits."""
    if name == "bce":
        return BinaryCrossentropy(label_smoothing, target_threshold)
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)


def is_kernel(variable):
    return variable.path.endswith("/kernel")


def make_optimizer(name, schedule, momentum=0.9, nesterov=False, weight_decay=0.0,
                   model=None, lr_multipliers=None, ema_decay=0.0):
    """SGD with (Nesterov) momentum, whose weight decay is the models' L2 kernel regularizer
    (as in the papers), or AdamW or LAMB with decoupled decay on kernels only (not BN or
    biases). ``ema_decay``: the optimizer keeps an exponential moving average of the weights
    (Polyak averaging), Keras' ``use_ema``."""
    ema = dict(use_ema=True, ema_momentum=ema_decay) if ema_decay else {}
    if name == "sgd":
        return SGD(learning_rate=schedule, momentum=momentum, nesterov=nesterov,
                   lr_multipliers=lr_multipliers, **ema)
    kind = Lamb if name == "lamb" else AdamW
    optimizer = kind(learning_rate=schedule, weight_decay=weight_decay, lr_multipliers=lr_multipliers, **ema)
    if model is not None:
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if not is_kernel(v)])
    return optimizer
