"""The papers' training recipes, as data: one entry a recipe, the flags it sets and where its
values come from. ``python -m training.train --recipe=NAME`` applies one; a flag given on the
command line wins. Each recipe was published for its batch size (``batch_size``): at another
one the learning rate is scaled as the recipe's ``lr_scaling`` says (``--lr_batch_base``).

The 2020s recipes were published for ImageNet-size nets and data (ResNet-50, 224 px). Their
numbers (``top1``) are the papers'; reszoo has not reproduced them at ImageNet scale.
"""

RECIPES = {
    "he2015_cifar": dict(
        source="He et al. 2015, Deep Residual Learning, Sec. 4.2 (CIFAR-10)",
        top1=None,
        flags=dict(batch_size=128, epochs=164, optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=False,
                   weight_decay=1e-4, lr_schedule="step", lr_decay_epochs=["82", "123"], lr_decay_rate=0.1,
                   augment="crop_flip", label_smoothing=0.0)),
    "huang2017_cifar": dict(
        source="Huang et al. 2017, Densely Connected Convolutional Networks, Sec. 4.2",
        top1=None,
        flags=dict(batch_size=64, epochs=300, optimizer="sgd", learning_rate=0.1, momentum=0.9, nesterov=True,
                   weight_decay=1e-4, lr_schedule="step", lr_decay_epochs=["150", "225"], lr_decay_rate=0.1,
                   augment="crop_flip", label_smoothing=0.0)),
    "bag_of_tricks": dict(
        source="He et al. 2019, Bag of Tricks for Image Classification, Sec. 3-5 (ResNet-50-D: --model=resnet50d)",
        top1=79.15,
        # lr 0.1 per 256 images (Goyal et al.'s linear rule), 5 warm-up epochs, cosine, NAG,
        # no bias or BN decay, zero-gamma, label smoothing 0.1, mixup 0.2 (200 epochs with mixup).
        flags=dict(batch_size=1024, lr_batch_base=256, lr_scaling="linear", epochs=200, optimizer="sgd",
                   learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, lr_schedule="cosine",
                   warmup_epochs=5.0, warmup="linear", label_smoothing=0.1, mixup_alpha=0.2,
                   augment="inception", model_args=["zero_init_last_bn=True"])),
    "torchvision_v2": dict(
        source="torchvision's references/classification, ResNet-50 IMAGENET1K_V2 (Vryniotis 2021, "
               "'How to train state-of-the-art models using TorchVision's latest primitives')",
        top1=80.858,
        # 8 GPUs x 128, lr 0.5, cosine after 5 linear warm-up epochs, 600 epochs, wd 2e-5 (none on
        # norms), TrivialAugment-wide, random erasing 0.1, label smoothing 0.1, mixup 0.2 / cutmix
        # 1.0 (one of the two per batch), repeated augmentation x4, EMA 0.99998 every 32 steps
        # (per step: about 0.99997 at this batch size), train at 176, test resize 232 crop 224.
        flags=dict(batch_size=1024, lr_batch_base=1024, lr_scaling="linear", epochs=600, optimizer="sgd",
                   learning_rate=0.5, momentum=0.9, nesterov=False, weight_decay=2e-5, lr_schedule="cosine",
                   warmup_epochs=5.0, warmup="linear", label_smoothing=0.1, augment="inception",
                   auto_augment="trivialaugment", random_erasing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0,
                   mixup_switch_prob=0.5, repeated_augmentation=4, ema_decay=0.99997,
                   train_size=176 / 224)),
    "rsb_a1": dict(
        source="Wightman, Touvron, Jegou 2021, ResNet strikes back, Table 1 (procedure A1)",
        top1=80.4,
        flags=dict(batch_size=2048, lr_batch_base=2048, lr_scaling="sqrt", epochs=600, optimizer="lamb",
                   learning_rate=5e-3, weight_decay=0.01, lr_schedule="cosine", warmup_epochs=5.0,
                   warmup="linear", label_smoothing=0.1, loss="bce", bce_target_threshold=0.2,
                   augment="inception", auto_augment="randaugment", rand_augment_ops=2, rand_augment_magnitude=7,
                   mixup_alpha=0.2, cutmix_alpha=1.0, mixup_switch_prob=0.5, repeated_augmentation=3,
                   model_args=["drop_path_rate=0.05"])),
    "rsb_a2": dict(
        source="Wightman, Touvron, Jegou 2021, ResNet strikes back, Table 1 (procedure A2)",
        top1=79.8,
        flags=dict(batch_size=2048, lr_batch_base=2048, lr_scaling="sqrt", epochs=300, optimizer="lamb",
                   learning_rate=5e-3, weight_decay=0.02, lr_schedule="cosine", warmup_epochs=5.0,
                   warmup="linear", label_smoothing=0.0, loss="bce", augment="inception",
                   auto_augment="randaugment", rand_augment_ops=2, rand_augment_magnitude=7, mixup_alpha=0.1,
                   cutmix_alpha=1.0, mixup_switch_prob=0.5, repeated_augmentation=3,
                   model_args=["drop_path_rate=0.05"])),
    "rsb_a3": dict(
        source="Wightman, Touvron, Jegou 2021, ResNet strikes back, Table 1 (procedure A3: train 160, test 224)",
        top1=78.1,
        flags=dict(batch_size=2048, lr_batch_base=2048, lr_scaling="sqrt", epochs=100, optimizer="lamb",
                   learning_rate=8e-3, weight_decay=0.02, lr_schedule="cosine", warmup_epochs=5.0,
                   warmup="linear", label_smoothing=0.0, loss="bce", augment="inception",
                   auto_augment="randaugment", rand_augment_ops=2, rand_augment_magnitude=6, mixup_alpha=0.1,
                   cutmix_alpha=1.0, mixup_switch_prob=0.5, repeated_augmentation=1, train_size=160 / 224)),
}
# A recipe's flag that the command line may replace -> the recipe's flags whose values were
# chosen for it, which must then be given too (LAMB's learning rate is no SGD's).
TIED = {"optimizer": ("learning_rate", "weight_decay")}
# He et al. 2015: ResNet-110 (and deeper) warm up at lr 0.01 for about 400 iterations.
WARMUP_MODELS = ("resnet110", "resnet1202")


def flags_of(name, model=None):
    """The flag values recipe ``name`` sets (for ``model``: He et al.'s warm-up for the deepest
    CIFAR nets)."""
    values = dict(RECIPES[name]["flags"])
    if model in WARMUP_MODELS and "warmup_epochs" not in values:
        values.update(warmup_epochs=1.0, warmup="constant")
    return values


def as_flag(name, value):
    """``--name=value`` as a command line spells it."""
    if isinstance(value, list):
        value = ",".join(value)
    elif isinstance(value, float):
        value = f"{value:g}"
    return f"--{name}={value}"


def scaled_learning_rate(learning_rate, batch_size, base, rule):
    """``learning_rate`` published for batch ``base``, at ``batch_size``: times the ratio
    (linear: Goyal et al. 2017) or its square root (sqrt: timm's rule for LAMB/Adam)."""
    if not base:
        return learning_rate
    ratio = batch_size / base
    return learning_rate * (ratio if rule == "linear" else ratio ** 0.5)
