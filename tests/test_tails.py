"""Relative accuracy in the tails: every activation, its hand-written backward and every loss against mpmath.

A formula that subtracts two nearly equal numbers (``softplus(z) - t z`` for ``t = 1``, ``a (1 - a)``
where ``a`` rounds to 1, ``1 + erf(z)`` for negative ``z``) loses all its digits where the result is
tiny beside its terms, exactly where a confident network lives. The reference is mpmath at 60
digits. The bound on the relative error is the one a backward-stable computation meets:
``K eps (1 + cond)``, with ``cond = |z f'(z) / f(z)|`` the relative condition number of the function
at ``z`` (a relative rounding of ``z`` by ``eps`` moves ``f`` by ``cond eps``), and ``K = 32`` for the
few roundings of each formula and XLA's exp/log/erfc, which are accurate to a few ulps, not correctly
rounded. The cancellations fixed here gave relative errors of 1e-2 to 1 (see each test).
"""

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from bpjax import layers as L
from bpjax import losses

K = 32
DTYPES = [jnp.float32, jnp.float64]
_A, _C = mp.mpf("0.044715"), mp.sqrt(2 / mp.pi)


def _sig(z):
    return 1 / (1 + mp.exp(-z))


def _gelu_tanh(z):
    return z * _sig(2 * _C * (z + _A * z ** 3))


# name: (layer, f, f') in mpmath
ELEMENTWISE = {
    "Sigmoid": (L.Sigmoid, _sig, lambda z: _sig(z) * _sig(-z)),
    "Tanh": (L.Tanh, mp.tanh, lambda z: mp.sech(z) ** 2),
    "Softplus": (L.Softplus, lambda z: mp.log1p(mp.exp(z)), _sig),
    "Elu": (L.Elu, lambda z: z if z > 0 else mp.expm1(z), lambda z: 1 if z > 0 else mp.exp(z)),
    "Gelu": (L.Gelu, lambda z: z * mp.ncdf(z), lambda z: mp.ncdf(z) + z * mp.npdf(z)),
    "Gelu(tanh)": (lambda: L.Gelu(approximate=True), _gelu_tanh, lambda z: mp.diff(_gelu_tanh, z)),
    "LeakyRelu": (lambda: L.LeakyRelu(0.1), lambda z: z if z >= 0 else z / 10, lambda z: 1 if z >= 0 else mp.mpf(0.1)),
    "Relu": (L.Relu, lambda z: max(z, 0), lambda z: 1 if z > 0 else 0),
    "Identity": (L.Identity, lambda z: z, lambda z: 1),
}
Z = [s * v for v in (1e-6, 1e-3, 0.5, 1, 2, 5, 10, 15, 20, 30, 40, 60, 80) for s in (-1, 1)]


def _bound(dtype, cond):
    return K * float(jnp.finfo(dtype).eps) * (1 + float(cond))


def _cond(f, z):
    """|z f'(z) / f(z)|, the relative condition number of f at z (inf where f(z) = 0)."""
    fz = f(z)
    return mp.inf if fz == 0 else abs(z * mp.diff(f, z) / fz)


# Sigmoid and Tanh compute f' from the saved output a (llm.c's choice, which lets the next layer share
# the array: measured 18.5 vs 21.5 MiB of temporaries, see their docstrings): where a rounds to +-1 their
# f' <= 1 is exact up to an absolute error of eps, not a relative one.
FROM_OUTPUT = {"Sigmoid", "Tanh"}


def _check_elementwise(dtype, points, absolute=False):
    """``points``: (what, z, got, f) -> assert |got / f(z) - 1| <= K eps (1 + cond) where f(z) is normal
    (``absolute``: |got - f(z)| <= K eps)."""
    tiny = 1e3 * float(jnp.finfo(dtype).tiny)  # away from the subnormals, which XLA flushes to zero
    with mp.workdps(60):
        for what, z, got, f in points:
            z = mp.mpf(z)
            ref = f(z)
            if absolute:
                err = abs(mp.mpf(float(got)) - ref)
                assert err <= K * float(jnp.finfo(dtype).eps), (what, float(z), float(err), float(got), float(ref))
                continue
            if abs(ref) < tiny:
                continue
            err = abs((mp.mpf(float(got)) - ref) / ref)
            assert err <= _bound(dtype, _cond(f, z)), (what, float(z), float(err), float(got), float(ref))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_activation_and_backward_relative_error_in_the_tails(name, dtype):
    # Before the fixes (float32 / float64 worst relative error): Sigmoid backward 1.0 at z = 20 / 40
    # (a (1 - a) with a = 1); Tanh backward 1.0 at |z| = 40 / 80 (1 - a^2); Gelu 1.0 at z = -10 / -30
    # (1 + erf) and its backward 1e-2; Gelu(tanh) and its backward 1.0 at z = -10 / -20 (1 + tanh).
    make, f, df = ELEMENTWISE[name]
    with jax.enable_x64(dtype == jnp.float64):
        layer = make()
        z = jnp.asarray(Z, dtype)[None]
        a, residuals = layer.forward((), z)
        _, dz = layer.backward((), residuals, jnp.ones_like(z))  # dz = f'(z)
        zs = np.asarray(z[0], np.float64).tolist()
        _check_elementwise(dtype, [("f", zz, a[0, i], f) for i, zz in enumerate(zs)])
        _check_elementwise(dtype, [("f'", zz, dz[0, i], df) for i, zz in enumerate(zs)], absolute=name in FROM_OUTPUT)


def _log_softmax(z):
    m = max(z)
    lse = m + mp.log(mp.fsum(mp.exp(v - m) for v in z))
    return [v - lse for v in z]


def _rel_norm(got, ref):
    return float(mp.sqrt(mp.fsum((mp.mpf(float(g)) - r) ** 2 for g, r in zip(got, ref)))
                 / mp.sqrt(mp.fsum(r ** 2 for r in ref)))


BIG = (5, 10, 20, 30, 40, 80)


def _rows():
    """Logit rows with one entry ``big`` above the others, and a fixed random cotangent."""
    da = np.random.default_rng(0).normal(size=4)
    return [([big, 0.0, -1.0, 0.5], da) for big in BIG] + [([0.5, -big, big, 0.0], da) for big in BIG]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_log_softmax_every_entry_and_softmax_backward_in_the_tails(dtype):
    # Before: LogSoftmax's largest entry was 0 (relative error 1.0) once the rest of the mass fell
    # below eps (z_m - z_j > 17 in float32, 37 in float64); Softmax backward, normwise, 0.83 at
    # big = 30 (float32) / 0.78 at 80 (float64): da_m - sum(da * a) with a_m = 1.
    with jax.enable_x64(dtype == jnp.float64), mp.workdps(60):
        for z, da in _rows():
            zm, dam = [mp.mpf(v) for v in z], [mp.mpf(v) for v in da]
            logp = _log_softmax(zm)
            p = [mp.exp(v) for v in logp]
            zz, dd = jnp.asarray([z], dtype), jnp.asarray([da], dtype)
            bound = _bound(dtype, max(abs(v) for v in z))  # exp(z_j - z_m) under relative roundings of z
            a, _ = L.LogSoftmax().forward((), zz)
            for got, ref in zip(np.asarray(a[0], np.float64).tolist(), logp):  # entrywise
                assert abs((got - ref) / ref) <= bound, (z, got, float(ref))
            layer = L.Softmax()
            _, res = layer.forward((), zz)
            _, dz = layer.backward((), res, dd)
            ref = [p[k] * (dam[k] - mp.fsum(d * q for d, q in zip(dam, p))) for k in range(4)]
            assert _rel_norm(dz[0], ref) <= bound, z
            layer = L.LogSoftmax()
            _, res = layer.forward((), zz)
            _, dz = layer.backward((), res, dd)
            assert _rel_norm(dz[0], [dam[k] - p[k] * mp.fsum(dam) for k in range(4)]) <= bound, z


BCE_CASES = [(s * z, t) for z in (1, 5, 10, 20, 30, 37, 50, 80) for s in (-1, 1) for t in (0, 1, 0.25)]


def _per_row(loss):
    """``loss``'s value, hand-written dpred and ``jax.grad`` of its value on each row alone (one compile)."""

    def one(z, t):
        value, dz = loss.value_and_grad(z[None], t[None])
        return value, dz[0], jax.grad(loss.value)(z[None], t[None])[0]

    return jax.jit(jax.vmap(one))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_binary_cross_entropy_value_and_dpred_in_the_tails(dtype):
    # Before: value softplus(z) - t z and dpred sigmoid(z) - t, relative error 1.0 at (z, t) = (20, 1)
    # in float32 and (37, 1) in float64 (1e-2 at (30, 1)). jax.grad of the value is accurate too.
    with jax.enable_x64(dtype == jnp.float64):
        z, t = (jnp.asarray([[c[i]] for c in BCE_CASES], dtype) for i in (0, 1))
        value, dz, dz_autodiff = _per_row(losses.binary_cross_entropy)(z, t)
    points = []
    for i, (zz, tt) in enumerate(BCE_CASES):
        loss = lambda w, t=tt: mp.log1p(mp.exp(w)) - t * w  # noqa: E731
        grad = lambda w, t=tt: _sig(w) - t  # noqa: E731
        points += [("value", zz, value[i], loss), ("dpred", zz, dz[i, 0], grad),
                   ("jax.grad", zz, dz_autodiff[i, 0], grad)]
    _check_elementwise(dtype, points)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_softmax_cross_entropy_value_and_dpred_in_the_tails(dtype):
    # Before: a confident right answer gave value 0 (relative error 1.0 from big = 20 in float32,
    # 50 in float64) and dpred with p_m - 1 = 0 (normwise 0.84 at big = 37 / 50). Targets: the label,
    # a wrong label, a soft target and a near-one-hot soft target 1 - 2^-20. (jax.grad of the value
    # keeps p_m - 1 = 0 there: JAX sums the cotangents of the maximum before subtracting.)
    rows = [z for z, _ in _rows()]
    m = np.argmax(rows, axis=1)
    n = np.arange(len(rows))
    soft, near = np.zeros((len(rows), 4)), np.zeros((len(rows), 4))
    soft[n, m], soft[n, (m + 1) % 4] = 0.75, 0.25
    near[n, m], near[n, (m + 1) % 4] = 1 - 2.0 ** -20, 2.0 ** -20
    with jax.enable_x64(dtype == jnp.float64), mp.workdps(60):
        fn = _per_row(losses.softmax_cross_entropy)
        z = jnp.asarray(rows, dtype)
        for target, y in ((m, np.eye(4)[m]), ((m + 1) % 4, np.eye(4)[(m + 1) % 4]), (soft, soft), (near, near)):
            values, dzs, _ = fn(z, jnp.asarray(target, dtype if target.ndim == 2 else jnp.int32))
            for row, value, dz, yrow in zip(rows, values, dzs, y):
                logp = _log_softmax([mp.mpf(v) for v in row])
                ym = [mp.mpf(float(v)) for v in yrow]
                ref_value = -mp.fsum(a * b for a, b in zip(ym, logp))
                ref_dz = [mp.exp(logp[k]) * mp.fsum(ym) - ym[k] for k in range(4)]
                bound = _bound(dtype, max(abs(v) for v in row))
                assert abs((mp.mpf(float(value)) - ref_value) / ref_value) <= bound, (row, yrow)
                assert _rel_norm(dz, ref_dz) <= bound, (row, yrow)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_mse_at_large_values(dtype):
    # pred - target is exact where they are close (Sterbenz); the mean of N = 192 squares is a sum of
    # positive terms, relative error <= N eps in the worst case, about sqrt(N) eps typically: 32 eps.
    with jax.enable_x64(dtype == jnp.float64), mp.workdps(60):
        for scale in (1.0, 1e4, 1e8, 1e15):
            rng = np.random.default_rng(1)
            pred = (rng.normal(size=(64, 3)) * scale).astype(dtype)
            target = (pred + rng.normal(size=(64, 3)) * scale * 1e-3).astype(dtype)
            r = [mp.mpf(float(a)) - mp.mpf(float(b)) for a, b in zip(pred.ravel(), target.ravel())]
            value, dpred = losses.mse.value_and_grad(jnp.asarray(pred), jnp.asarray(target))
            ref = mp.fsum(v * v for v in r) / len(r)
            assert abs((mp.mpf(float(value)) - ref) / ref) <= K * float(jnp.finfo(dtype).eps), scale
            assert _rel_norm(np.ravel(dpred), [2 * v / len(r) for v in r]) <= K * float(jnp.finfo(dtype).eps)


def test_tied_maxima():
    # log_softmax_parts counts the other tied maxima in rest (exp(0) = 1 each); jax.grad through it
    # equals jax.grad through jax.nn.log_softmax (max shares its cotangent among the ties)
    z = jnp.array([[2.0, 2.0, -1.0, 0.5], [3.0, 3.0, 3.0, 3.0]])
    da = jnp.array([[0.3, -1.0, 0.7, 0.2], [1.0, 2.0, -3.0, 0.5]])

    @jax.jit  # every (ours, reference) pair in one compiled program, instead of one per operation
    def pairs(z, da, y):
        log_softmax, softmax = (lambda w: L.LogSoftmax().forward((), w)[0]), L.Softmax()
        _, res = softmax.forward((), z)
        return {"LogSoftmax": (log_softmax(z), jax.nn.log_softmax(z)),
                "LogSoftmax vjp": (jax.vjp(log_softmax, z)[1](da)[0], jax.vjp(jax.nn.log_softmax, z)[1](da)[0]),
                "Softmax backward": (softmax.backward((), res, da)[1], jax.vjp(jax.nn.softmax, z)[1](da)[0]),
                "cross-entropy dz": (losses.softmax_cross_entropy.value_and_grad(z, y)[1],
                                     (jax.nn.softmax(z) - jax.nn.one_hot(y, 4)) / 2)}

    out = pairs(z, da, jnp.array([0, 2]))
    np.testing.assert_allclose(*out["LogSoftmax"], rtol=1e-6)
    for what in ("LogSoftmax vjp", "Softmax backward", "cross-entropy dz"):
        np.testing.assert_allclose(*out[what], rtol=1e-6, atol=1e-7, err_msg=what)
