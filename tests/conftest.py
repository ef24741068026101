"""Shared fixtures: keys, dtypes, and a helper that checks a layer in float32 and float64."""

import atexit
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

# Many tests build the same XLA program from fresh Python functions (a new closure, a new model of the same
# shapes): jit's in-memory cache is keyed on the function, JAX's persistent cache on the program itself. Each
# process gets its own empty cache for this run only, removed when it ends: nothing is reused from an earlier
# run, so the suite's time is its cold time. (The xdist workers do not share one: JAX writes entries without a
# lock unless a size limit is set, and with the lock the suite measured slower, not faster.)
_XLA_CACHE = tempfile.mkdtemp(prefix="bpjax-tests-xla-cache-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


@pytest.fixture(autouse=True)
def _x64_restored():
    """Every test ends with float64 as it found it: a test (or a README block) that turns x64 on must not
    change the dtypes of the tests that run after it in the same worker."""
    before = jax.config.jax_enable_x64
    yield
    if jax.config.jax_enable_x64 != before:
        jax.config.update("jax_enable_x64", before)


@pytest.fixture(autouse=True, scope="module")
def _jax_caches_cleared():
    """After each test file, JAX's in-memory caches are dropped: a worker otherwise keeps every compiled program
    of the run (its memory grew to 3.4 GB); a program needed again is read back from the persistent cache."""
    yield
    jax.clear_caches()


@pytest.fixture
def getkey():
    """A fresh PRNG key on each call, deterministic per test."""
    state = [jax.random.key(0)]

    def next_key():
        state[0], sub = jax.random.split(state[0])
        return sub

    return next_key


def normal(seed, shape, dtype=jnp.float32):
    """``N(0, 1)`` test data of ``shape`` drawn with numpy (an eager jax.random draw compiles a sampler for every
    new shape and dtype: 0.3-0.6 s of CPU each)."""
    import numpy as np

    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def to64(tree):
    """The same values in float64, cast by numpy (an eager cast compiles once per shape); call under x64."""
    import numpy as np

    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def cast(tree, dtype):
    """Cast every floating leaf of ``tree`` to ``dtype``."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def random_params(model, input_shape, seed=0, dtype=jnp.float32):
    """Params of ``model``'s structure and shapes, drawn with numpy: no XLA program is compiled.

    The shapes come from ``jax.eval_shape`` of ``model.init`` (traced, not run): an eager init compiles a
    jax.random sampler for every new shape and dtype (0.3-0.6 s each on a CPU). Each leaf of rank >= 2 is
    ``N(0, 1 / fan_in)`` with ``fan_in`` the product of all but its last axis (a Dense matrix, a conv kernel),
    a leaf named ``scale`` (a norm's) is ``1 + 0.1 N(0, 1)``, any other ``0.1 N(0, 1)`` (biases are not zero,
    so that every path counts). For gradient and output checks, which hold at any point; the initialisers
    are tested on their own.
    """
    import numpy as np

    shapes = jax.eval_shape(lambda k: model.init(k, tuple(input_shape))[1], jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path, s):
        z = rng.standard_normal(s.shape)
        if len(s.shape) >= 2:
            return jnp.asarray(z / np.sqrt(np.prod(s.shape[:-1])), dtype)
        base = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
        return jnp.asarray(base + 0.1 * z, dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def init_shapes(model, input_shape):
    """``model.init``'s output shape and its params' shapes (a tree of tuples), traced by ``jax.eval_shape``:
    nothing is drawn or compiled."""
    out = []
    params = jax.eval_shape(lambda k: out.append(model.init(k, tuple(input_shape))) or out[0][1], jax.random.key(0))
    return out[0][0], jax.tree.map(lambda a: a.shape, params)


def initial_state(model, input_shape, key=None):
    """``bp.init_state(model, key, input_shape)`` as one compiled program. A container's ``init_state`` runs
    its children's ``init`` to find their output shapes; run eagerly, their random draws compile a sampler
    per shape (about 1 s for a small model on a CPU), while under ``jax.jit`` the unused draws are dropped."""
    import bpjax as bp

    key = jax.random.key(0) if key is None else key
    return jax.jit(bp.init_state, static_argnums=(0, 2))(model, key, tuple(input_shape))



# The longest tests (10-40 s each: the README's blocks, other processes, the experiments' runs) are handed out
# first, so that two xdist workers do not end with one of them alone on a long test.
LONG_FIRST = ("test_readme.py", "test_multiprocess.py", "test_sharding.py", "test_experiments.py",
              "test_determinism.py", "test_recurrent.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))
