"""Test configuration: 8 simulated CPU devices, strict dtype promotion, rank promotion raises.

Strict dtype promotion is entered per test (autouse fixture) rather than globally, so that
the one known optax incompatibility (Adam's `float ** int32`) can be isolated in the train
step while all of jaxcompress's own code is traced under "strict".
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True)
def _strict_dtype_promotion():
    with jax.numpy_dtype_promotion("strict"):
        yield


@pytest.fixture
def count_traces():
    """``count_traces(fn)`` wraps ``fn`` so that ``wrapper.traces`` counts how often JAX traces it."""

    def wrap(fn):
        def wrapper(*args, **kwargs):
            wrapper.traces += 1
            return fn(*args, **kwargs)

        wrapper.traces = 0
        return wrapper

    return wrap
