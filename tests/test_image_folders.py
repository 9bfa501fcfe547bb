"""--dataset=folder: what a real folder of images holds (unreadable files, junk, grey and
colour images, empty classes) is checked before training, with one line per problem."""

import os
import subprocess
import sys

import numpy as np
import pytest

from training import data as data_lib

from conftest import ROOT


def add_junk(folder, random_image):
    """Files a real folder gets: each unreadable in its own way. Returns their names."""
    good = (folder / "0.png").read_bytes()
    (folder / "zero.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    random_image(99, "RGB").save(folder / "whole.jpg")
    jpeg = (folder / "whole.jpg").read_bytes()
    os.remove(folder / "whole.jpg")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "text.png").write_text("not an image")
    (folder / "._0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # macOS AppleDouble
    os.symlink(folder / "gone.png", folder / "dangling.png")
    (folder / "notes.txt").write_text("labels by hand")
    return ["._0.png", "dangling.png", "notes.txt", "text.png", "truncated.jpg", "truncated.png", "zero.png"]


def load(folder, **kwargs):
    said = []
    data = data_lib.load("folder", str(folder), 12, 0.25, 0, say=said.append, **kwargs)
    return data, said


def test_unreadable_files_are_skipped_counted_and_named(tmp_path, image_folder, random_image):
    folder = image_folder(tmp_path / "imgs")
    junk = add_junk(folder / "a", random_image)
    data, said = load(folder)
    assert data.num_train + data.num_test == 8  # the good ones, all of them
    assert len(said) == 1 and said[0].startswith(f"train: warning: skipped {len(junk)} of {8 + len(junk)} files")
    named = said[0].split(": ", 2)[2]
    assert named.count("(") == 3 and named.endswith("; ...")  # the first three, with their reasons
    assert "a/._0.png (Unknown image file format" in named and "a/dangling.png (a dangling symbolic link)" in named


def test_webp_and_cmyk_jpeg_are_read_and_make_the_folder_rgb(tmp_path, image_folder, random_image):
    folder = image_folder(tmp_path / "imgs", mode="RGB", ext="webp")
    random_image(7, "CMYK").save(folder / "b" / "cmyk.jpg")
    data, said = load(folder)
    assert said == [] and data.num_train + data.num_test == 9 and data.image_shape == (12, 12, 3)


def test_grey_folders_stay_grey_and_any_colour_makes_rgb(tmp_path, image_folder, random_image):
    grey, _ = load(image_folder(tmp_path / "grey"))
    assert grey.image_shape == (12, 12, 1)
    mixed_folder = image_folder(tmp_path / "mixed")
    random_image(5, "RGB").save(mixed_folder / "b" / "colour.png")
    mixed, _ = load(mixed_folder)
    assert mixed.image_shape == (12, 12, 3)
    widened, _ = load(tmp_path / "grey", channels=3)  # a colour model fine-tuned on grey images
    x = widened.train[0]
    assert x.shape[-1] == 3 and np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2])
    assert np.array_equal(np.sort(x[..., 0].ravel()), np.sort(grey.train[0].ravel()))


@pytest.mark.parametrize("setup,message", [
    (lambda f: [os.remove(p) for p in (f / "b").iterdir()], "class folder {f}/b is empty"),
    (lambda f: [p.write_bytes(b"") for p in (f / "b").iterdir()], "class 'b' ({f}/b) has no readable image (4 file(s), all skipped)"),
    (lambda f: (f / "c").mkdir(), "class folder {f}/c is empty"),
])
def test_a_class_left_empty_is_refused(tmp_path, setup, message, image_folder):
    folder = image_folder(tmp_path / "imgs")
    setup(folder)
    with pytest.raises(data_lib.DataError) as error:
        load(folder)
    assert str(error.value).startswith(message.format(f=folder))


def test_images_outside_class_folders(tmp_path, image_folder, random_image):
    loose = tmp_path / "loose"
    loose.mkdir()
    for i in range(3):
        random_image(i).save(loose / f"{i}.png")
    with pytest.raises(data_lib.DataError, match=r"has no class sub-folders \(3 file\(s\) directly in it"):
        load(loose)
    folder = image_folder(tmp_path / "imgs")
    random_image(3).save(folder / "stray.png")
    (folder / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class
    data, said = load(folder)
    assert data.class_names == ["a", "b"]
    assert said == [f"train: warning: ignored 1 file(s) outside the class sub-folders of {folder} (e.g. stray.png)"]


def test_an_absurd_image_size_is_refused_before_decoding(tmp_path, monkeypatch, image_folder):
    folder = image_folder(tmp_path / "imgs")
    monkeypatch.setattr(data_lib, "_memory_budget", lambda: 10 * 2**20)
    with pytest.raises(data_lib.DataError, match=r"--image_size=4096: the 8 images .* would take 0.4 GiB"):
        data_lib.load("folder", str(folder), 4096, 0.25, 0)


def test_the_split_holds_out_a_share_of_every_class():
    labels = np.repeat(np.arange(3), [10, 4, 1])
    train, test = data_lib._split(labels, 0.25, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(15))
    assert [int(np.sum(labels[test] == c)) for c in range(3)] == [2, 1, 0]  # a lone image stays in training


def test_training_on_a_folder_with_junk_warns_once_and_trains(tmp_path, image_folder, random_image):
    folder = image_folder(tmp_path / "imgs", per_class=20)
    add_junk(folder / "b", random_image)
    proc = subprocess.run(
        [sys.executable, "-m", "training.train", "--dataset=folder", f"--data_dir={folder}", "--image_size=12",
         "--epochs=1", "--batch_size=8", "--model_args=base_width=4", f"--model_dir={tmp_path / 'run'}"],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("train: warning:")]
    assert len(warnings) == 1 and "skipped 7 of 47 files" in warnings[0]
    assert "Traceback" not in proc.stderr
