"""examples/: a reszoo backbone in keras-hub's DeepLabV3+, on digits pasted on a canvas."""

import numpy as np

from examples import segmentation


def test_canvases_label_each_stroke_pixel_with_its_digit():
    images = np.zeros((2, 2, 2, 1), "float32")
    images[0, 0, 0, 0], images[1, 1, 1, 0] = 16, 12
    x, mask = segmentation.canvases(images, np.array([3, 7]), 5, size=6, scale=2, per_canvas=2)
    assert x.shape == (5, 6, 6, 1) and mask.shape == (5, 6, 6)
    assert set(np.unique(mask)) == {0, 4, 8}  # background, digit 3 + 1, digit 7 + 1
    assert np.all((mask > 0) == (x[..., 0] > 4)) and np.all(mask[x[..., 0] == 16] == 4)
    _, alone = segmentation.canvases(images, np.array([3, 7]), 5, size=6, scale=2, per_canvas=1)
    assert np.sum(alone > 0) == 5 * 4  # one stroke pixel, scaled 2x, is 4 pixels on each canvas


def test_scores_are_pixel_accuracy_and_mean_iou():
    truth = np.array([[0, 0, 1, 1]])
    assert segmentation.scores(truth, truth) == (1.0, 1.0)
    accuracy, miou = segmentation.scores(np.array([[0, 1, 1, 1]]), truth)
    assert accuracy == 0.75 and np.isclose(miou, (1 / 2 + 2 / 3) / 2)


def test_keras_hub_deeplab_trains_on_a_reszoo_backbone():
    """keras-hub takes the backbone through its public interface (pyramid_outputs)."""
    result = segmentation.run(base_width=8, epochs=3, count=96, size=32)
    assert result["loss"][-1] < 0.7 * result["loss"][0]  # it learns
    assert 0.0 < result["mean_iou"] <= 1.0 and 0.0 < result["pixel_accuracy"] <= 1.0
    model = segmentation.segmenter("resnet20", 8, (32, 32, 1), {"mean": [1.0], "std": [3.0]})
    assert model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0).shape == (2, 32, 32, 11)
    encoder = model.backbone.image_encoder
    assert list(encoder.pyramid_outputs) == ["P0", "P1", "P2"] and encoder.build_spec.name == "resnet20"
