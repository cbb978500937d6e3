import jax.numpy as jnp
import pytest
from flax import nnx

from jaxcompress import models, tree


def _params():
    return {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)},
            "Dense_1": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}


def test_default_selector_picks_kernels():
    assert tree.selected_paths(_params()) == ["Dense_0/kernel", "Dense_1/kernel"]


def test_regex_and_predicate_selectors():
    assert tree.selected_paths(_params(), "Dense_1") == ["Dense_1/bias", "Dense_1/kernel"]
    assert tree.selected_paths(_params(), lambda p, x: x.ndim == 1) == ["Dense_0/bias", "Dense_1/bias"]


def test_selector_matching_nothing_lists_paths():
    with pytest.raises(ValueError, match="Dense_0/kernel"):
        tree.select(_params(), "Conv")


def test_nnx_state_paths():
    _, params = models.nnx_to_apply(models.NNXMLP(3, (4,), 2, rngs=nnx.Rngs(0)))
    assert tree.selected_paths(params) == ["hidden/0/kernel", "out/kernel"]


def test_structure_mismatch_names_path():
    other = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}, "Dense_2": {"kernel": 1, "bias": 1}}
    with pytest.raises(ValueError, match="Dense_1/bias"):
        tree.check_same_structure(_params(), other, "params", "masks")


def test_per_path_overrides_first_match_and_unused():
    vals = tree.resolve_per_path(_params(), 0.5, {"Dense_1": 0.9, "Dense_": 0.1})
    assert vals["Dense_1/kernel"] == 0.9 and vals["Dense_0/kernel"] == 0.1
    with pytest.raises(ValueError, match="Conv"):
        tree.resolve_per_path(_params(), 0.5, {"Conv": 0.9})
