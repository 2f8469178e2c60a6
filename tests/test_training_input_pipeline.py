"""Input pipelines: synthetic, offline Fashion-MNIST, TFDS (mocked), augmentation."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_dessilbi.training import config_lib
from tf_dessilbi.training import input_pipeline


def _data(**overrides):
    data = config_lib.base_config().data
    data.name = "synthetic"
    data.synthetic_train = 40
    data.synthetic_eval = 10
    for k, v in overrides.items():
        with data.ignore_type():
            data[k] = v
    return data


def test_synthetic_batches_repeat_and_drop_remainder():
    d = input_pipeline.get_datasets(_data(), batch_size=16, eval_batch_size=4)
    assert (d.num_train, d.num_eval, d.num_classes, d.input_shape) == (40, 10, 10, (28, 28, 1))
    batches = list(d.train.take(5))  # 5 × 16 > 40: the train set repeats
    assert len(batches) == 5
    for x, y in batches:
        assert x.shape == (16, 28, 28, 1) and x.dtype == tf.float32
        assert y.dtype == tf.int32
    eval_sizes = [int(x.shape[0]) for x, _ in d.eval]
    assert eval_sizes == [4, 4, 2]  # one pass, last batch kept


def test_synthetic_labels_are_learnable_bands():
    x, y = input_pipeline.synthetic_arrays(200, (8, 10, 1), 5, seed=3)
    band_means = x.reshape(200, 8, 5, 2).mean(axis=(1, 3))  # 5 bands of 2 columns
    assert np.array_equal(band_means.argmax(axis=1), y)


def test_limits_and_normalization():
    d = input_pipeline.get_datasets(
        _data(train_limit=8, eval_limit=3, mean=(0.5,), std=(0.25,)), batch_size=4
    )
    assert (d.num_train, d.num_eval) == (8, 3)
    x, _ = next(iter(d.eval))
    raw, _ = input_pipeline.synthetic_arrays(10, (28, 28, 1), 10, seed=1)
    np.testing.assert_allclose(x.numpy(), (raw[:3] - 0.5) / 0.25, rtol=1e-5)


@pytest.mark.parametrize("field,value,match", [
    ("augment", "mixup", "config.data.augment must be one of"),
    ("source", "web", "config.data.source must be one of"),
])
def test_bad_names(field, value, match):
    with pytest.raises(ValueError, match=match):
        input_pipeline.get_datasets(_data(**{field: value}), batch_size=4)


def test_cifar_augment_pads_crops_flips():
    image = tf.reshape(tf.range(32 * 32 * 3, dtype=tf.float32), (32, 32, 3))
    outs = [input_pipeline.cifar_augment(image) for _ in range(20)]
    same = [input_pipeline.cifar_augment(image, seed=[1, i % 2]) for i in range(4)]
    np.testing.assert_array_equal(same[0].numpy(), same[2].numpy())  # stateless with a seed
    assert all(o.shape == (32, 32, 3) for o in outs)
    assert any(not np.array_equal(o.numpy(), image.numpy()) for o in outs)
    # Each crop is a shifted (and maybe flipped) window with zero padding.
    assert any(np.any(o.numpy() == 0.0) for o in outs[1:])


def test_imagenet_crops_have_the_requested_size():
    image = tf.random.uniform((50, 70, 3))
    assert input_pipeline.imagenet_train_crop(image, 24).shape == (24, 24, 3)
    assert input_pipeline.imagenet_eval_crop(image, 24).shape == (24, 24, 3)


def test_imagenet_augment_in_pipeline():
    d = input_pipeline.get_datasets(
        _data(synthetic_shape=(40, 40, 3), augment="imagenet", image_size=16), batch_size=4
    )
    assert d.input_shape == (16, 16, 3)
    x, _ = next(iter(d.eval))
    assert x.shape[1:] == (16, 16, 3)


def test_tfds_path_with_mock_data():
    data = _data(name="mnist", source="tfds", data_dir="/nonexistent/tfds")
    with tfds.testing.mock_data(num_examples=12):
        d = input_pipeline.get_datasets(data, batch_size=4)
        assert (d.num_train, d.num_classes, d.input_shape) == (12, 10, (28, 28, 1))
        x, y = next(iter(d.train))
        assert x.shape == (4, 28, 28, 1) and x.dtype == tf.float32
        assert float(tf.reduce_max(x)) <= 1.0


@pytest.mark.slow
def test_offline_fashion_mnist_from_debian_files():
    d = input_pipeline.get_datasets(
        _data(name="fashion_mnist", source="local", eval_limit=100), batch_size=32
    )
    assert (d.num_train, d.num_eval, d.num_classes, d.input_shape) == (60000, 100, 10, (28, 28, 1))
    x, y = next(iter(d.train))
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0
    assert len(np.unique(y.numpy())) > 1


# -- issue 14 item 10: the folder asked for is the one read; damaged files are named --------
def test_fashion_mnist_reads_the_folder_given_and_names_a_damaged_file(tmp_path, monkeypatch):
    import gzip
    import os

    from tf_dessilbi.training import data as data_lib

    src = data_lib.DEBIAN_FASHION_MNIST_DIR
    if not os.path.exists(os.path.join(src, data_lib.FASHION_MNIST_FILES[0])):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    for name in data_lib.FASHION_MNIST_FILES:
        (tmp_path / name).write_bytes(open(os.path.join(src, name), "rb").read())
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:5000])  # a truncated copy
    monkeypatch.setenv("TF_DESSILBI_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is damaged"):
        data_lib.load_fashion_mnist()
    images.write_bytes(gzip.compress(b"\0" * 64))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz' is not an IDX file"):
        data_lib.load_fashion_mnist(str(tmp_path))


def test_local_splits_and_slices():
    arrays = {"train": (np.arange(10), np.arange(10)), "test": (np.arange(4), np.arange(4))}
    assert input_pipeline.local_split(arrays, "train[:6]", "train_split")[0].tolist() == list(range(6))
    assert input_pipeline.local_split(arrays, "train[60%:]", "eval_split")[0].tolist() == [6, 7, 8, 9]
    assert input_pipeline.local_split(arrays, "test", "eval_split")[0].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match=r"config.data.eval_split='validation' is invalid for local data"):
        input_pipeline.local_split(arrays, "validation", "eval_split")


def test_resumed_stream_equals_the_uninterrupted_one():
    d = input_pipeline.get_datasets(_data(), batch_size=16)  # 40 examples: 2 batches per pass
    whole = [y.numpy().tolist() for _, y in d.train_from(0).take(7)]
    assert whole[2:7] == [y.numpy().tolist() for _, y in d.train_from(2).take(5)]
    assert whole[5:7] == [y.numpy().tolist() for _, y in d.train_from(5).take(2)]
    assert whole[0] != whole[2]  # pass 1 is shuffled differently from pass 0
