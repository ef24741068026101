"""Shared fixtures and helpers: keys, numpy-drawn data and params, a layer checked in float32 and float64
(:func:`check_layer_f32_f64`), bitwise tree equality, and the bad-input batteries' assertion."""

import atexit
import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile

# The suite's programs are small and each runs a few times, so compiling is most of its time: XLA's CPU backend
# compiles them with LLVM's optimisation off, which measured 27-30% less CPU (attention and conv tests 44 s
# against 31 s, the docstring examples 74 s against 54 s; one process, side by side). The maths is the same
# program, only its machine code is less tuned: the float64 checks agree to roundoff either way and the float32
# tolerances are unchanged. The two tests of XLA's own optimised code (the jax.grad-under-jit reproduction) compile
# with XLA's defaults (XLA_DEFAULTS, in_fresh_python). Set XLA_FLAGS yourself (``XLA_FLAGS= pytest`` for XLA's
# defaults everywhere) and this line leaves it alone.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")
# XLA's own defaults for those two options (xla/debug_options_flags.cc), for a program compiled as users compile it:
# ``jax.jit(f).lower(*args).compile(XLA_DEFAULTS)``.
XLA_DEFAULTS = {"xla_backend_optimization_level": 3, "xla_llvm_disable_expensive_passes": False}

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

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


def check_layer_f32_f64(layer, params, x, *, state=None, train=True, f32=True, fd_directions=3, seed=0):
    """``bp.check_layer`` in float32 and in float64, both asserted to pass; returns ``(r32, r64)``.

    float32: manual vs ``jax.vjp`` at the checker's default rtol 1e-4 (roundoff 6e-8 per operation over
    sums of at most a few hundred terms, in other orders in the two programs), no finite differences
    (float32 cannot resolve them). float64: the same values cast exactly (:func:`to64`), manual vs
    ``jax.vjp`` at rtol 1e-10 (both exact up to roundoff ~1e-16 per operation) and central finite
    differences at the checker's fd_rtol 1e-6 (eps 1e-5: truncation ~1e-10, roundoff ~1e-11). ``f32=False``
    runs the float64 check only (``r32`` is then None).
    """
    import bpjax as bp

    r32 = None
    if f32:
        r32 = bp.check_layer(layer, params, x, state=state, train=train, finite_differences=False, seed=seed)
        assert r32.ok, str(r32)
    with jax.enable_x64(True):
        r64 = bp.check_layer(layer, to64(params), to64(x), state=None if state is None else to64(state), train=train,
                             rtol=1e-10, finite_differences=True, fd_directions=fd_directions, seed=seed)
    assert r64.ok, str(r64)
    return r32, r64


def bits(x):
    """A leaf as bytes + dtype + shape: equality of these is bitwise equality."""
    import numpy as np

    if hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return ("key", str(jax.random.key_impl(x)), np.asarray(jax.random.key_data(x)).tobytes(), x.shape)
    if isinstance(x, (bool, int, float)):
        return (type(x).__name__, x)
    a = np.asarray(x)
    return (str(a.dtype), a.shape, a.tobytes())


def assert_bitwise_equal(a, b):
    """Two trees of the same structure whose leaves are bit for bit the same."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert bits(x) == bits(y), jax.tree_util.keystr(path)


def assert_clear_error(fn, tmp_path, exc, fragments):
    """``fn(tmp_path)`` raises ``exc`` (a bpjax error) whose message holds every fragment: the place, the
    expected and the received. Shared by every battery file (``tests/test_bad_inputs*.py``)."""
    import bpjax as bp

    with pytest.raises(exc) as e:
        fn(tmp_path)
    assert isinstance(e.value, bp.BpjaxError), f"{type(e.value).__name__} is not a bpjax error: {e.value}"
    message = str(e.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "Traceback" not in message and "dot_general" not in message  # no XLA internals leak through


@functools.lru_cache(maxsize=None)
def _battery():
    """The bad-input batteries' shared objects, built once per worker: an MLP ``serial(Dense(4), Relu, Dense(3))``
    on ``x: (32, 5)`` with 3 classes, its params, another model's params, and one Dense(4) with its params."""
    import bpjax as bp

    L = bp.layers
    key = jax.random.key(0)
    mlp = bp.serial(L.Dense(4), L.Relu(), L.Dense(3))
    params = mlp.init(key, (5,))[1]
    other = bp.serial(L.Dense(4), L.Relu(), L.Dense(7)).init(key, (5,))[1]  # params from another model
    dense = L.Dense(4)
    x = jax.random.normal(key, (32, 5))
    y = jnp.arange(32) % 3
    return dict(mlp=mlp, params=params, other=other, dense=dense, dp=dense.init(key, (5,))[1], x=x, y=y)


def battery(name):
    """One of the bad-input batteries' shared objects: ``mlp``, ``params``, ``other``, ``dense``, ``dp``, ``x``,
    ``y`` (see :func:`_battery`)."""
    return _battery()[name]


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
# The files with the longest tests (subprocesses, guides, experiments) start first, so that the two workers end
# together instead of one of them starting a 10 s test at the end.
LONG_FIRST = ("test_multiprocess.py", "test_sharding.py", "test_docs.py", "test_experiments.py", "test_gradcheck.py",
              "test_determinism.py", "test_recurrent.py", "test_run_folder.py", "test_gpt.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


def in_fresh_python(code: str, timeout: float = 300) -> dict:
    """Run ``code`` in a new Python with XLA's default flags (the tests directory importable) and return the JSON
    object it prints as its last line: for a check of what XLA compiles at its default optimisation, which the
    flags above change for this process."""
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.path.dirname(here), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.cache
def docs_extension(name: str):
    """``docs/_ext/<name>.py`` as a module, loaded from its file (the documentation tools are not a package; their
    Sphinx imports are inside the functions that need them): ``public_api``, what the site reads its API pages and
    docstrings with, and ``gallery``."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "_ext", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"docs_ext_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
