"""The embedded digits as a user's own images come: a folder of class sub-folders of PNGs
(for the tests and benchmarks that train on a folder). Kept out of benchmarks.common, which the
PyTorch peers import: this module brings reszoo, and so Keras."""

import os

from PIL import Image

from reszoo.datasets import DIGITS_MAX, load_digits


def digit_folder(root, digits=range(10)):
    """The digits' training split as a folder of class sub-folders (``digit0``...) of grey 8 x 8
    PNGs."""
    (x, y), _, _ = load_digits()
    for d in digits:
        os.makedirs(os.path.join(root, f"digit{d}"))
        for i, image in enumerate(x[y == d]):
            Image.fromarray((image[..., 0] * (255 // DIGITS_MAX)).astype("uint8")).save(
                os.path.join(root, f"digit{d}", f"{i}.png"))
    return root
