"""The tf.data pipelines of training.data: tfds by name (through its mock data), an epoch's
order as a function of seed and epoch alone, no autotuning where it is turned off."""

import numpy as np


def test_tfds_dataset_through_mock_data():
    import tensorflow_datasets as tfds

    from training import data as data_lib

    with tfds.testing.mock_data(num_examples=96):
        data = data_lib.load("cifar10")
        batches = list(data_lib.train_pipeline(data, 32, "auto", 0, 0, 2).as_numpy_iterator())
    assert data.image_shape == (32, 32, 3) and data.num_classes == 10 and data.num_train == 96
    assert len(batches) == 6 and batches[0][0].shape == (32, 32, 32, 3) and batches[0][1].shape == (32, 10)
    assert data.default_augment == "crop_flip"
    np.testing.assert_allclose(data.mean, data.train[0].reshape(-1, 3).mean(0), rtol=1e-5)


def test_epoch_order_is_a_function_of_seed_and_epoch():
    from training import data as data_lib

    data = data_lib.load("digits")
    full = list(data_lib.train_pipeline(data, 64, "crop", 5, 0, 3).as_numpy_iterator())
    tail = list(data_lib.train_pipeline(data, 64, "crop", 5, 1, 3).as_numpy_iterator())
    per_epoch = data.num_train // 64  # 1438 is not a multiple of 64: batches must not span epochs
    assert len(full) == 3 * per_epoch and len(tail) == 2 * per_epoch
    for (xa, ya), (xb, yb) in zip(full[per_epoch:], tail):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(full[0][1], full[per_epoch][1])  # reshuffled every epoch
    # The crop augmentation moved pixels: batch images are not the raw digits.
    assert not any(np.array_equal(full[0][0][0], x) for x in data.train[0][:200].astype("float32"))


def test_pipelines_run_without_tf_data_autotuning():
    """Autotuning rounds every iterator's life up to its next wake-up (1.27, 2.55, ... s), so a
    Keras evaluate of 1.1 s took 2.55 s; the pipelines turn it off (benchmarks/pipeline.py)."""
    import dataclasses

    import tensorflow as tf

    from training import data as data_lib

    data = data_lib.load("digits")
    pipelines = [data_lib.train_pipeline(data, 32, "auto", 0, 0, 2), data_lib.eval_pipeline(data, 32)]
    assert [ds.options().autotune.enabled for ds in pipelines] == [False, False]
    x, y = data.train
    streamed = dataclasses.replace(data, train=tf.data.Dataset.from_tensor_slices((x.astype("float32"), y)))
    assert data_lib.train_pipeline(streamed, 32, "auto", 0, 0, 2).options().autotune.enabled is False
