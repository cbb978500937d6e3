import numpy as np
import pytest

from jaxcompress import data


def test_digits_split_sizes_and_range():
    ds = data.load("digits")
    assert ds.x_train.shape == (1437, 64) and ds.x_test.shape == (360, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    # stratified: every class present in test with roughly 36 examples
    counts = np.bincount(ds.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_mnist1d_split_sizes_and_determinism():
    ds = data.load("mnist1d")
    assert ds.x_train.shape == (4000, 40) and ds.x_test.shape == (1000, 40)
    assert ds.y_train.shape == (4000,) and set(np.unique(ds.y_train)) == set(range(10))
    state = np.random.get_state()[1].copy()
    again = data.datasets._generate_mnist1d(None, None)
    np.testing.assert_array_equal(again["x"].astype(np.float32), ds.x_train)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # global RNG untouched


def test_mnist1d_extra_inputs_differ_from_split():
    extra = data.mnist1d_extra_inputs(50, seed=1)
    assert extra.shape == (50, 40)
    assert not np.isclose(extra[:, None, :], data.load("mnist1d").x_test[None]).all(-1).any()
    with pytest.raises(ValueError, match="seed=42"):
        data.mnist1d_extra_inputs(10, seed=42)


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match=r"digits.*mnist1d"):
        data.load("cifar")


def test_batch_iterator_deterministic_and_resumable():
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100)
    a = data.BatchIterator(x, y, 32, seed=3)
    first = [next(a)[1] for _ in range(7)]  # crosses epoch boundaries (3 batches/epoch)
    b = data.BatchIterator(x, y, 32, seed=3, start_step=4)
    np.testing.assert_array_equal(next(b)[1], first[4])
    # each epoch is a permutation without repeats
    epoch0 = np.concatenate(first[:3])
    assert len(set(epoch0.tolist())) == 96
    c = data.BatchIterator(x, y, 32, seed=4)
    assert not np.array_equal(next(c)[1], first[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 101}, "larger than the dataset"),
    ({"batch_size": 10, "start_step": -1}, "start_step"),
])
def test_batch_iterator_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.BatchIterator(np.zeros((100, 1)), np.zeros(100), **kwargs)


def test_shard_batch_places_on_mesh():
    mesh = data.make_mesh(8)
    x, y = data.shard_batch((np.zeros((16, 3), np.float32), np.zeros(16, np.int32)), mesh)
    assert len(x.sharding.device_set) == 8
    assert x.addressable_shards[0].data.shape == (2, 3)
    with pytest.raises(ValueError, match="not divisible"):
        data.shard_batch(np.zeros((12, 3)), mesh)
