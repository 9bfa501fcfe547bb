"""The 2020s recipes and their parts (training/recipes.py, training/augment.py): each recipe
trains on the digits with its parts visibly on, the parts do what their papers say, checked
against Keras' and timm's own, and a resumed run sees exactly the batches of an uninterrupted
one."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from training import augment, data as data_lib, recipes

NEW = ["torchvision_v2", "rsb_a1", "rsb_a2", "rsb_a3", "bag_of_tricks"]
FAST = ["--batch_size=64", "--epochs=2", "--warmup_epochs=1", "--model_args=base_width=8"]


@pytest.fixture(scope="module")
def digits():
    return data_lib.load("digits")


def test_every_recipe_sets_real_flags_and_cites_its_source():
    from absl import flags

    import training.train  # noqa: F401  (defines the flags, once per process)
    for name, recipe in recipes.RECIPES.items():
        assert recipe["source"], name
        for flag, value in recipe["flags"].items():
            holder = flags.FLAGS[flag]
            parsed = holder.parser.parse(value if not isinstance(value, list) else ",".join(value))
            assert parsed == value or parsed == pytest.approx(value), (name, flag)
    # The published top-1 of the recipes whose weights timm and torchvision ship (shared/reference/numbers.md).
    assert recipes.RECIPES["rsb_a1"]["top1"] == pytest.approx(80.38, abs=0.05)
    assert recipes.RECIPES["torchvision_v2"]["top1"] == pytest.approx(80.85, abs=0.01)
    assert recipes.RECIPES["bag_of_tricks"]["flags"]["model_args"] == ["zero_init_last_bn=True"]


def test_the_learning_rate_scales_by_the_recipes_rule():
    assert recipes.scaled_learning_rate(0.5, 64, 1024, "linear") == pytest.approx(0.5 / 16)
    assert recipes.scaled_learning_rate(5e-3, 512, 2048, "sqrt") == pytest.approx(5e-3 / 2)
    assert recipes.scaled_learning_rate(0.1, 64, 0, "linear") == 0.1


@pytest.mark.parametrize("recipe", NEW)
def test_each_recipe_trains_on_the_digits_with_its_flags_and_the_given_ones_win(tmp_path, train, recipe):
    proc = train(f"--recipe={recipe}", *FAST, f"--model_dir={tmp_path}", "--show_batch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    recorded = json.loads((tmp_path / "flags.json").read_text())
    published = recipes.RECIPES[recipe]["flags"]
    for flag, value in published.items():
        if flag not in ("batch_size", "epochs", "warmup_epochs", "model_args"):
            assert recorded[flag] == value or recorded[flag] == pytest.approx(value), flag
    assert recorded["batch_size"] == 64 and recorded["epochs"] == 2 and recorded["model_args"] == ["base_width=8"]
    # The learning rate is scaled to batch 64 by the recipe's rule, and the line says so.
    lr = recipes.scaled_learning_rate(published["learning_rate"], 64, published["lr_batch_base"],
                                      published["lr_scaling"])
    assert f"learning rate {lr:.6g} = {published['learning_rate']:g} x " in proc.stdout
    assert "--recipe=" + recipe in proc.stdout
    if published.get("train_size"):
        assert "FixRes: training on 6x6 images, testing on 8x8" in proc.stdout
    png = tf.io.decode_png((tmp_path / "batch.png").read_bytes())
    assert png.shape[0] >= 64 * 8 and png.shape[1] >= 64 * 8  # 64 images, 8 a row, each at least 64 px
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 2  # two finite epochs (a NaN loss stops the run with exit 1)
    assert 0 <= json.loads((tmp_path / "results.json").read_text())["test_accuracy"] <= 1


def test_the_batches_of_a_resumed_epoch_are_those_of_an_uninterrupted_run(digits):
    """Every part on: epoch 2 of a run from epoch 0 equals epoch 2 of a run resumed there."""
    parts = augment.Augmentation("randaugment", 2, 9, 0.25, 0.2, 1.0, 0.5, 1.0, 2, 0.75)
    straight = list(data_lib.train_pipeline(digits, 64, "auto", 5, 0, 3, parts))
    resumed = list(data_lib.train_pipeline(digits, 64, "auto", 5, 2, 3, parts))
    per_epoch = digits.num_train // 64
    assert len(resumed) == per_epoch and len(straight) == 3 * per_epoch
    for (x, y), (x2, y2) in zip(straight[2 * per_epoch:], resumed, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert straight[0][0].shape == (64, 6, 6, 1)  # FixRes: 0.75 of 8


def test_mixup_and_cutmix_mix_images_and_labels_alike_and_switch_by_batch(digits):
    import dataclasses

    rng = np.random.default_rng(0)
    noise = dataclasses.replace(digits, train=(rng.integers(0, 17, digits.train[0].shape).astype("uint8"),
                                               digits.train[1]))
    mixed = augment.Augmentation(mixup_alpha=0.4, cutmix_alpha=1.0, mixup_switch_prob=0.5)
    batches = list(data_lib.train_pipeline(noise, 64, "none", 1, 0, 2, mixed))
    plain = list(data_lib.train_pipeline(noise, 64, "none", 1, 0, 2))
    kinds = []
    for (x, y), (x0, _) in zip(batches, plain, strict=True):
        x, y, x0 = x.numpy(), y.numpy(), x0.numpy()
        np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)  # mixed one-hot labels stay distributions
        assert (y.max(1) < 1 - 1e-3).any()  # ... and are mixed
        if np.all(x == np.round(x)):  # CutMix pastes a box: every pixel is an image's own or another's
            kinds.append("cutmix")
            assert 0 < (x != x0).mean() < 1
        else:  # mixup blends every pixel
            kinds.append("mixup")
            assert np.mean(x != np.round(x)) > 0.5
    assert 0.2 < kinds.count("cutmix") / len(kinds) < 0.8, kinds


def test_mixup_prob_leaves_that_share_of_batches_alone(digits):
    some = augment.Augmentation(mixup_alpha=0.4, mixup_prob=0.3)
    batches = list(data_lib.train_pipeline(digits, 32, "none", 1, 0, 4, some))
    untouched = [bool((y.numpy().max(1) == 1).all()) for _, y in batches]
    assert 0.5 < np.mean(untouched) < 0.9, np.mean(untouched)


def test_repeated_augmentation_shows_each_image_n_times_in_a_row_differently_augmented(digits):
    thrice = augment.Augmentation(repeats=3)
    x, _ = next(iter(data_lib.train_pipeline(digits, 48, "none", 2, 0, 1, thrice)))  # copies equal: same image
    x = x.numpy()
    for start in range(0, 48, 3):
        np.testing.assert_array_equal(x[start], x[start + 1])
        np.testing.assert_array_equal(x[start], x[start + 2])
    assert len({x[i].tobytes() for i in range(0, 48, 3)}) == 16
    cropped, _ = next(iter(data_lib.train_pipeline(digits, 48, "crop", 2, 0, 1, thrice)))  # each copy its own crop
    cropped = cropped.numpy()
    assert np.mean([not np.array_equal(cropped[i], cropped[i + 1]) for i in range(0, 48, 3)]) > 0.5
    # The epoch keeps its length: as many batches as without repeats.
    assert len(list(data_lib.train_pipeline(digits, 48, "none", 2, 0, 1, thrice))) == digits.num_train // 48


def test_random_erasing_erases_at_its_probability(digits):
    erase = augment.Augmentation(random_erasing=0.5)
    batches = list(data_lib.train_pipeline(digits, 64, "none", 3, 0, 2, erase))
    plain = list(data_lib.train_pipeline(digits, 64, "none", 3, 0, 2))
    changed = np.concatenate([(x.numpy() != x0.numpy()).reshape(64, -1).any(1) for (x, _), (x0, _) in
                              zip(batches, plain)])
    assert 0.4 < changed.mean() < 0.6, changed.mean()


@pytest.mark.parametrize("kind", ["randaugment", "trivialaugment"])
def test_auto_augment_changes_images_and_stays_in_the_pixel_range(digits, kind):
    aug = augment.Augmentation(kind, rand_augment_magnitude=9)
    x, _ = next(iter(data_lib.train_pipeline(digits, 64, "none", 0, 0, 1, aug)))
    x0, _ = next(iter(data_lib.train_pipeline(digits, 64, "none", 0, 0, 1)))
    assert np.mean([not np.array_equal(a, b) for a, b in zip(x.numpy(), x0.numpy())]) > 0.5
    assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= digits.max_value


def test_apply_layer_draws_as_keras_does_from_the_seed_it_is_given():
    """Keras' own MixUp, given the same seed generator state, makes the same batch: the
    stateless seeds only replace where the draws come from."""
    layer = keras.layers.MixUp(alpha=0.3)
    x = np.random.default_rng(0).uniform(0, 255, (8, 6, 6, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[np.arange(8) % 4]
    seed = tf.constant([4, 2], tf.int64)
    ours, labels = augment.apply_layer(layer, x, seed, y)
    transformation = layer.get_random_transformation(x, training=True, seed=augment.Seeds(seed))
    np.testing.assert_array_equal(ours, layer.transform_images(x, transformation))
    np.testing.assert_array_equal(labels, layer.transform_labels(y, transformation))
    again, _ = augment.apply_layer(layer, x, seed, y)
    np.testing.assert_array_equal(ours, again)


TIMM_BCE = r"""
import json, sys, torch
from timm.data.mixup import one_hot
from timm.loss import BinaryCrossEntropy
x, a, b, lam, smoothing, threshold = json.loads(sys.stdin.read())
x = torch.tensor(x)
off = smoothing / x.shape[-1]  # timm's Mixup smooths the targets it mixes (mixup_target)
on = 1.0 - smoothing + off
target = lam * one_hot(torch.tensor(a), x.shape[-1], on, off) + (1 - lam) * one_hot(torch.tensor(b), x.shape[-1], on, off)
loss = BinaryCrossEntropy(smoothing=smoothing, target_threshold=threshold or None)
print(float(loss(x, target)))
"""


@pytest.mark.parametrize("smoothing,threshold", [(0.0, 0.0), (0.1, 0.0), (0.1, 0.2)])
def test_bce_loss_equals_timms(smoothing, threshold):
    """timm's BinaryCrossEntropy (RSB's loss) on mixed targets smoothed as timm's Mixup smooths
    them, in its own process (PyTorch beside TensorFlow crashes): reszoo's loss on the mixed
    one-hot targets equals it."""
    from reszoo import optim

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 5)).astype("float32") * 3
    a, b, lam = [0, 1, 2, 3, 4, 0], [1, 2, 3, 4, 0, 2], 0.7
    targets = lam * np.eye(5, dtype="float32")[a] + (1 - lam) * np.eye(5, dtype="float32")[b]
    ours = float(optim.make_loss("bce", smoothing, threshold)(targets, logits))
    proc = subprocess.run([sys.executable, "-c", TIMM_BCE], input=json.dumps(
        [logits.tolist(), a, b, lam, smoothing, threshold]), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ours == pytest.approx(float(proc.stdout.strip().splitlines()[-1]), rel=1e-5)


def test_ema_is_evaluated_and_saved_while_the_checkpoint_keeps_the_raw_weights(tmp_path, train):
    proc = train("--ema_decay=0.9", *FAST, "--epochs=3", f"--model_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import reszoo  # noqa: F401  (registers the optimizer)

    checkpoint = keras.saving.load_model(tmp_path / "backup" / "epoch-000002" / "checkpoint.keras")
    optimizer = checkpoint.optimizer
    optimizer.build(checkpoint.trainable_variables)
    checkpoint.load_weights(tmp_path / "backup" / "epoch-000002" / "checkpoint.keras")
    averages = [np.asarray(v) for v in optimizer._model_variables_moving_average]
    held = [np.asarray(v) for v in checkpoint.trainable_variables]
    # Between epochs the model holds the average (Keras' SwapEMAWeights) and the optimizer the
    # raw weights: they differ.
    assert max(float(np.abs(a - h).max()) for a, h in zip(averages, held)) > 1e-3
    # The finished model is the average; its test accuracy is the one reported.
    last = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    from reszoo.datasets import load_digits

    _, (x, y), _ = load_digits()
    accuracy = float((last.predict(x.astype("float32"), verbose=0).argmax(1) == y).mean())
    assert accuracy == pytest.approx(json.loads((tmp_path / "results.json").read_text())["test_accuracy"], abs=1e-6)


def test_recipe_usage_errors_are_one_line(usage_errors, tmp_path):
    cases = [(["--bce_target_threshold=0.2", f"--model_dir={tmp_path / 'a'}"], {}),
             (["--cutmix_alpha=2", f"--model_dir={tmp_path / 'b'}"], {}),
             (["--train_size=12", f"--model_dir={tmp_path / 'c'}"], {}),
             (["--recipe=rsb_a4"], {})]
    said = usage_errors(cases)
    assert [code for code, _ in said] == [2, 2, 2, 2]
    for (_, err), expected in zip(said, ["needs --loss=bce", "alpha in (0, 1]", "larger than the test images",
                                         "must be one of"]):
        assert len(err.strip().splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "a").exists()


def test_what_a_recipe_sets_and_the_run_s_length_cannot_carry_is_said(usage_errors, tmp_path):
    """A recipe's batch size over a small dataset names the recipe; another optimizer than the
    recipe's, with the recipe's learning rate, is refused; FixRes below the net's minimum is the
    same error as --image_size's; diagnostics rarer than the run's steps are refused; a warm-up
    as long as the run is a warning (here before the FixRes error that stops it)."""
    cases = [(["--recipe=rsb_a1"], "--batch_size=2048 is larger than the 1438 training images (--recipe=rsb_a1 "
                                   "sets it for its paper's data: give a smaller --batch_size, and the learning rate "
                                   "is scaled to it)"),
             (["--recipe=rsb_a1", "--optimizer=sgd"],
              "--optimizer=sgd replaces --recipe=rsb_a1's lamb, whose --learning_rate=0.005 and --weight_decay=0.01 "
              "are chosen for lamb: give --learning_rate and --weight_decay for sgd too"),
             (["--recipe=rsb_a1", "--optimizer=sgd", "--learning_rate=0.1"],
              "--optimizer=sgd replaces --recipe=rsb_a1's lamb, whose --weight_decay=0.01 is chosen for lamb: give "
              "--weight_decay for sgd too"),
             (["--train_size=0.1"], "--train_size=0.1: images of 1x1 are too small for this net: it takes at least "
                                    "4x4 (its total stride)"),
             (["--diagnostics", "--epochs=1"], "--diagnostics=100 measures every 100 steps, and this run has 22 (1 "
                                               "epoch(s) of 22): give --diagnostics=N with N at most 22"),
             (["--recipe=rsb_a3", "--batch_size=64", "--epochs=2", "--train_size=0.1"], "--train_size=0.1: images")]
    said = usage_errors([([*args, f"--model_dir={tmp_path / str(i)}"], {}) for i, (args, _) in enumerate(cases)])
    for (code, stderr), (args, expected) in zip(said, cases):
        errors = [line for line in stderr.splitlines() if line.startswith("train: error:")]
        assert code == 2 and len(errors) == 1 and errors[0].startswith(f"train: error: {expected}"), (args, stderr)
        assert "Traceback" not in stderr
    warnings = [line for line in said[-1][1].splitlines() if line.startswith("train: warning:")]
    assert warnings == ["train: warning: the warm-up (5 epochs, set by --recipe=rsb_a3) is as long as the run (2 "
                        "epoch(s)): the learning rate never reaches its peak; give --warmup_epochs below 2"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("recipe", ["torchvision_v2", "rsb_a1"])
def test_a_recipe_trains_on_a_folder_of_colour_images_and_validates_above_its_training_size(
        tmp_path, train, image_folder, recipe):
    """RGB images through the colour operations of RandAugment / TrivialAugment; FixRes trains
    at 0.79 (or 1.0) of 32 px, and reszoo-validate measures the run at 40 px as well."""
    from conftest import run_command

    folder = image_folder(tmp_path / "images", classes=("a", "b", "c"), per_class=12, mode="RGB")
    run = tmp_path / "run"
    proc = train(f"--recipe={recipe}", "--dataset=folder", f"--data_dir={folder}", "--image_size=32",
                 "--batch_size=8", "--epochs=2", "--warmup_epochs=1", "--model_args=base_width=8", f"--model_dir={run}",
                 "--show_batch")
    assert proc.returncode == 0, proc.stderr[-3000:]
    png = tf.io.decode_png((run / "batch.png").read_bytes())
    assert png.shape[-1] == 3
    if recipe == "torchvision_v2":
        assert "FixRes: training on 25x25 images, testing on 32x32" in proc.stdout
    top1 = json.loads((run / "results.json").read_text())["test_accuracy"]
    same = run_command("training.validate", f"--model_dir={run}")
    assert same.returncode == 0 and f"top-1 {100 * top1:.2f}%" in same.stdout, same.stderr[-2000:]
    larger = run_command("training.validate", f"--model_dir={run}", "--test_size=40", "--crop_pct=0.875")
    assert larger.returncode == 0, larger.stderr[-2000:]
    assert "at 40x40, crop_pct 0.875" in larger.stdout
    rows = (run / "validate.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[2].endswith(",40,0.875,bilinear")


def test_the_parts_and_diagnostics_run_under_mirrored_strategy(tmp_path, train):
    """MirroredStrategy (one CPU device here): EMA swapped through the strategy's update, mixup
    / CutMix, RandAugment, BCE, FixRes and --diagnostics; the saved model is the evaluated one."""
    proc = train("--distribution_strategy=mirrored", "--epochs=2", "--ema_decay=0.9", "--mixup_alpha=0.2",
                 "--cutmix_alpha=1.0", "--auto_augment=randaugment", "--loss=bce", "--train_size=0.75",
                 "--model_args=base_width=8", "--diagnostics=10", f"--model_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FixRes: training on 6x6 images" in proc.stdout and "diagnostics summary" in proc.stdout
    from reszoo.datasets import load_digits

    _, (x, y), _ = load_digits()
    last = keras.saving.load_model(tmp_path / "last.keras", compile=False)
    accuracy = float((last.predict(x.astype("float32"), verbose=0).argmax(1) == y).mean())
    assert accuracy == pytest.approx(json.loads((tmp_path / "results.json").read_text())["test_accuracy"], abs=1e-6)
