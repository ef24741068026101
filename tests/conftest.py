"""Shared fixtures: keys, dtypes, and a helper that checks a layer in float32 and float64."""

import os

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _x64_restored():
    """Every test ends with float64 as it found it: a test (or a README block) that turns x64 on must not
    change the dtypes of the tests that run after it in the same worker."""
    before = jax.config.jax_enable_x64
    yield
    if jax.config.jax_enable_x64 != before:
        jax.config.update("jax_enable_x64", before)


@pytest.fixture
def getkey():
    """A fresh PRNG key on each call, deterministic per test."""
    state = [jax.random.key(0)]

    def next_key():
        state[0], sub = jax.random.split(state[0])
        return sub

    return next_key


def cast(tree, dtype):
    """Cast every floating leaf of ``tree`` to ``dtype``."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)
