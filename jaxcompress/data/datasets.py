"""Built-in datasets that ship with installed packages: nothing is downloaded.

* ``digits``: scikit-learn's bundled 8x8 handwritten digits, ``images.reshape(-1, 64) / 16``
  (float32 in [0, 1]), stratified split ``test_size=0.2, random_state=0`` -> 1437 / 360.
* ``mnist1d``: generated locally by the ``mnist1d`` package,
  ``make_dataset(get_dataset_args())`` -> 4000 / 1000 sequences of length 40.

>>> ds = load("digits")
>>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
((1437, 64), (360, 64), 10)
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

DATASETS = ("digits", "mnist1d")


class Dataset(NamedTuple):
    """A classification dataset held as numpy arrays (float32 inputs, int32 labels)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@functools.lru_cache(maxsize=None)
def digits() -> Dataset:
    """scikit-learn's digits, flattened to 64 features in [0, 1], fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.reshape(-1, 64) / 16.0).astype(np.float32)
    y = d.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


def _generate_mnist1d(num_samples: int | None, seed: int | None):
    import mnist1d.data as m1d

    args = m1d.get_dataset_args()
    if num_samples is not None:
        args.num_samples = num_samples
    if seed is not None:
        args.seed = seed
    # mnist1d reseeds numpy's global RNG; keep the caller's global state untouched.
    saved = np.random.get_state()
    try:
        # `templates` passed explicitly: make_dataset never touches args.url / the network.
        ds = m1d.make_dataset(args, template=m1d.get_templates())
    finally:
        np.random.set_state(saved)
    return ds


@functools.lru_cache(maxsize=None)
def mnist1d() -> Dataset:
    """MNIST-1D generated locally with the package's default arguments (4000 / 1000)."""
    ds = _generate_mnist1d(None, None)
    return Dataset(
        "mnist1d",
        ds["x"].astype(np.float32),
        ds["y"].astype(np.int32),
        ds["x_test"].astype(np.float32),
        ds["y_test"].astype(np.int32),
        10,
    )


def mnist1d_extra_inputs(num: int, seed: int = 1) -> np.ndarray:
    """``num`` fresh unlabeled MNIST-1D inputs from the generator with another ``seed``.

    Useful as a distillation transfer set (the test split is never touched: the default
    dataset uses seed 42).
    """
    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    if seed == 42:
        raise ValueError("seed=42 regenerates the default train/test split; pick another seed")
    ds = _generate_mnist1d(int(np.ceil(num / 0.8 / 10)) * 10, seed)
    x = np.concatenate([ds["x"], ds["x_test"]]).astype(np.float32)
    return x[:num]


def load(name: str) -> Dataset:
    """Load a built-in dataset by name (``"digits"`` or ``"mnist1d"``)."""
    if name == "digits":
        return digits()
    if name == "mnist1d":
        return mnist1d()
    raise ValueError(f"unknown dataset {name!r}; valid names: {list(DATASETS)}")
