"""Semantic segmentation on a reszoo backbone, with keras-hub's DeepLabV3+: digits pasted on a
larger canvas, each pixel labelled with its digit (1-10) or background (0).

    python -m examples.segmentation [--model=resnet20] [--epochs=20] [--canvases=3000]

reszoo's models hand keras-hub what its backbones do, ``pyramid_outputs`` (``{"P0": ...}``):
DeepLabV3 reads the deepest level for its atrous spatial pyramid and a shallower one for its
decoder. Reports pixel accuracy and mean IoU over the 11 classes on canvases made from the
digits' test split, and writes them to examples/results/segmentation.json.
"""

import argparse
import json
import os

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def canvases(images, labels, count, size=32, scale=2, per_canvas=2, seed=0):
    """``count`` grey canvases of ``size`` x ``size`` with ``per_canvas`` digits each, scaled
    ``scale`` times (nearest neighbour), at random places; and their masks: the digit + 1
    where its stroke is (intensity above a quarter), 0 elsewhere (a later digit covers an
    earlier one)."""
    rng = np.random.default_rng(seed)
    side = images.shape[1] * scale
    x = np.zeros((count, size, size, 1), "float32")
    mask = np.zeros((count, size, size), "int32")
    top = images.max()
    for n in range(count):
        for i in rng.choice(len(images), per_canvas, replace=False):
            digit = np.kron(images[i, ..., 0], np.ones((scale, scale)))
            r, c = rng.integers(0, size - side + 1, 2)
            stroke = digit > top / 4
            x[n, r:r + side, c:c + side, 0] = np.where(stroke, digit, x[n, r:r + side, c:c + side, 0])
            mask[n, r:r + side, c:c + side][stroke] = labels[i] + 1
    return x, mask


def segmenter(model, base_width, shape, stats, num_classes=11):
    """DeepLabV3+ (keras-hub) on a reszoo backbone: spatial pyramid pooling on the deepest
    level, the decoder on the one below."""
    import keras_hub

    import reszoo

    encoder = reszoo.create_model(model, base_width=base_width, include_top=False, input_shape=shape,
                                  preprocessing=stats)
    levels = list(encoder.pyramid_outputs)
    deep, low = levels[-1], levels[-2]
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key=deep, low_level_feature_key=low,
        upsampling_size=2 ** (int(deep[1:]) - int(low[1:])), dilation_rates=[1, 2, 3], image_shape=shape)
    return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes)


def scores(predicted, truth, num_classes=11):
    """Pixel accuracy and mean IoU over the classes present in ``truth`` or ``predicted``."""
    accuracy = float(np.mean(predicted == truth))
    ious = []
    for k in range(num_classes):
        union = np.sum((predicted == k) | (truth == k))
        if union:
            ious.append(np.sum((predicted == k) & (truth == k)) / union)
    return accuracy, float(np.mean(ious))


def run(model="resnet20", base_width=16, epochs=20, count=3000, size=32, seed=0, verbose=0):
    import keras

    from reszoo.datasets import load_digits

    (x, y), (x_test, y_test), _ = load_digits()
    train, train_mask = canvases(x, y, count, size, seed=seed)
    test, test_mask = canvases(x_test, y_test, max(count // 6, 50), size, seed=seed + 1)
    stats = {"mean": [float(train.mean())], "std": [float(train.std())]}
    keras.utils.set_random_seed(seed)
    model = segmenter(model, base_width, (size, size, 1), stats)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=[])
    history = model.fit(train, train_mask, batch_size=32, epochs=epochs, verbose=verbose).history["loss"]
    predicted = np.argmax(model.predict(test, verbose=0), -1)
    accuracy, miou = scores(predicted, test_mask)
    background = float(np.mean(test_mask == 0))
    return {"pixel_accuracy": accuracy, "mean_iou": miou, "background_share": background,
            "train_canvases": count, "test_canvases": len(test), "epochs": epochs, "loss": history}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--base_width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--canvases", type=int, default=3000)
    parser.add_argument("--out_dir", default=RESULTS)
    args = parser.parse_args()
    if min(args.base_width, args.epochs, args.canvases) < 1:
        parser.error("--base_width, --epochs and --canvases must be positive")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = run(args.model, args.base_width, args.epochs, args.canvases, verbose=2)
    result.update(model=args.model, base_width=args.base_width)
    from reszoo.io import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)

    os.makedirs(args.out_dir, exist_ok=True)
    atomic_write(os.path.join(args.out_dir, "segmentation.json"), write)
    print(f"pixel accuracy {result['pixel_accuracy']:.4f} (background alone {result['background_share']:.4f}), "
          f"mean IoU {result['mean_iou']:.4f}")


if __name__ == "__main__":
    main()
