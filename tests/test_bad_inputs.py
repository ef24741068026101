"""Bad inputs everywhere: each gives a BpjaxError/BpjaxTypeError naming where, what was expected and what was received.

Every case lists message fragments: the place (layer, loss, argument), the expected value or shape
and the received one. Nothing here may end in a deep XLA trace or a silent wrong answer.
"""

import contextlib
import functools
import io
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import assert_clear_error
from conftest import battery as F

import bpjax as bp
from bpjax import checkpoint

L = bp.layers
XENT, MSE, BCE = bp.losses.softmax_cross_entropy, bp.losses.mse, bp.losses.binary_cross_entropy
REPO = Path(bp.__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _sgd_step():
    """One compiled checked step, shared by the in-step value checks (same shapes, one compile)."""
    return bp.train.make_step(F("mlp"), XENT, optax.sgd(0.1))


def _step(x, y):
    return _sgd_step()(F("params"), optax.sgd(0.1).init(F("params")), x, y)


def _fit(**kw):
    args = dict(loss=XENT, optimizer=optax.sgd(0.1), params=F("params"), train_data=(F("x"), F("y")))
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return bp.train.fit(F("mlp"), args["loss"], args["optimizer"], args["params"], args["train_data"],
                        **{"steps": 4, "batch_size": 8, "verbose": False, **kw})


def _cli(*argv):
    """``python -m experiments ARGV`` in-process: argparse's exit code and the last stderr line."""
    from experiments.__main__ import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(list(argv))
    raise bp.BpjaxError("cli", f"exit {e.value.code}: {err.getvalue().strip().splitlines()[-1]}")


def _saved(tmp_path, tree=None):
    return checkpoint.save(tmp_path / "ck.npz", tree if tree is not None else {"params": F("params")})


def _corrupt(tmp_path):
    path = Path(_saved(tmp_path))
    path.write_bytes(path.read_bytes()[:-40])
    return path


def _corrupt_run(tmp_path):
    """A run folder whose only checkpoint is truncated."""
    _fit(checkpoint_path=str(tmp_path / "run"), checkpoint_every=2)
    entries = sorted((tmp_path / "run").glob("step_*.npz"))
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:-40])
    return tmp_path / "run"


E, T = bp.BpjaxError, bp.BpjaxTypeError
CASES = [
    # ---- layers: ranks, feature sizes, dtypes, params from another model, constructor arguments
    ("dense rank 1", lambda t: F("dense").forward(F("dp"), jnp.ones(5)), E,
     ["Dense(4)", "rank-2 or higher", "got shape (5,)"]),
    ("dense features", lambda t: F("dense").forward(F("dp"), jnp.ones((2, 6))), E,
     ["Dense(4)", "5 features", "got shape (2, 6)"]),
    ("dense int input", lambda t: F("dense").forward(F("dp"), jnp.ones((2, 5), jnp.int32)), T,
     ["Dense(4)", "real floating-point input", "got dtype int32"]),
    ("dense bool input", lambda t: F("dense").forward(F("dp"), jnp.ones((2, 5), bool)), T,
     ["Dense(4)", "real floating-point input", "got dtype bool"]),
    ("dense complex input", lambda t: F("dense").forward(F("dp"), jnp.ones((2, 5), jnp.complex64)), T,
     ["Dense(4)", "real floating-point input", "got dtype complex64"]),
    ("dense int weights", lambda t: F("dense").forward({"W": jnp.ones((5, 4), jnp.int32), "b": jnp.zeros(4)},
                                                      F("x")), T,
     ["Dense(4)", "floating-point weight W", "got dtype int32"]),
    ("dense other params", lambda t: F("dense").forward(L.Dense(3).init(jax.random.key(0), (5,))[1], F("x")), E,
     ["Dense(4)", "expected W (D_in, 4) and b (4,)", "got W (5, 3) and b (3,)"]),
    ("dense param keys", lambda t: F("dense").forward({"w": jnp.ones((5, 4))}, F("x")), E,
     ["Dense(4)", "expected keys ['W', 'b']", "got ['w']"]),
    ("dense zero features", lambda t: L.Dense(0), E, ["Dense", "features must be a positive int", "got 0"]),
    ("dense bool features", lambda t: L.Dense(True), E, ["Dense", "positive int", "got True"]),
    ("dense init name", lambda t: L.Dense(3, init="glorot"), E, ["initializer", "glorot_uniform", "'glorot'"]),
    ("dense init shape", lambda t: F("dense").init(jax.random.key(0), ()), E,
     ["Dense(4)", "input shape with a feature axis", "got ()"]),
    ("relu complex", lambda t: L.Relu().forward((), jnp.ones((2, 3), jnp.complex64)), T,
     ["Relu", "real floating-point", "complex64"]),
    ("relu scalar", lambda t: L.Relu().forward((), jnp.ones(())), E, ["Relu", "rank-1 or higher", "got shape ()"]),
    ("softmax rank 1", lambda t: L.Softmax().forward((), jnp.ones(3)), E,
     ["Softmax", "rank-2 or higher", "got shape (3,)"]),
    ("leaky slope", lambda t: L.LeakyRelu("a"), E, ["LeakyRelu", "negative_slope must be a finite real", "'a'"]),
    ("elu alpha nan", lambda t: L.Elu(float("nan")), E, ["Elu", "alpha must be a finite real", "nan"]),
    ("flatten scalar", lambda t: L.Flatten().forward((), jnp.ones(())), E,
     ["Flatten", "rank-1 or higher", "got shape ()"]),
    ("flatten init shape", lambda t: L.Flatten().init(None, "abc"), E, ["Flatten", "tuple of ints", "'abc'"]),
    ("serial uncalled layer", lambda t: bp.serial(L.Dense(3), L.Relu), T,
     ["serial", "argument 1 is a function", "expected a bpjax Layer"]),
    ("serial empty", lambda t: bp.serial(), E, ["serial", "at least one layer", "got none"]),
    ("serial params length", lambda t: F("mlp").forward(F("params")[:2], F("x")), E,
     ["serial(Dense(4), Relu, Dense(3))", "tuple of 3 per-layer params", "length 2"]),
    ("serial other params", lambda t: F("mlp").forward(F("other"), F("x")), E,
     ["serial[2] Dense(3)", "expected W (D_in, 3)", "got W (4, 7)"]),
    ("dropout rate", lambda t: L.Dropout(-0.1), E, ["Dropout", "rate must be a number in [0, 1)", "-0.1"]),
    ("batchnorm momentum", lambda t: L.BatchNorm(momentum=2.0), E, ["BatchNorm", "momentum", "[0, 1]", "2.0"]),
    ("embedding float ids", lambda t: (lambda e: e.forward(e.init(jax.random.key(0), (3,))[1], jnp.ones((2, 3))))(
        L.Embedding(10, 4)), T, ["Embedding(10, 4)", "integer ids", "float32"]),
    ("embedding ids range", lambda t: (lambda e: e.forward(e.init(jax.random.key(0), (3,))[1], jnp.array([[0, 12]])))(
        L.Embedding(10, 4)), E, ["Embedding(10, 4)", "[0, 10)", "max 12"]),
    ("conv channels", lambda t: (lambda c: c.forward(c.init(jax.random.key(0), (8, 2))[1], jnp.ones((1, 8, 5))))(
        L.Conv1D(3, 3)), E, ["Conv1D(3, 3)", "expected 2 input channels", "(1, 8, 5)"]),
    ("conv stride", lambda t: L.Conv1D(3, 3, stride=0), E, ["Conv1D", "stride must be a positive int", "got 0"]),
    ("lstm rank", lambda t: (lambda c: c.forward(c.init(jax.random.key(0), (4, 2))[1], jnp.ones((4, 2))))(L.LSTM(3)),
     E, ["LSTM(3)", "rank-3 input (B, T, D)", "(4, 2)"]),
    ("attention heads", lambda t: L.MultiHeadSelfAttention(4).init(jax.random.key(0), (4, 6)), E,
     ["MultiHeadSelfAttention(4)", "multiple of 4", "D=6"]),
    # ---- losses: shapes, dtypes, label ranges, NaN targets, empty batches
    ("mse shapes", lambda t: MSE(jnp.ones((2, 3)), jnp.ones((2, 4))), E, ["mse", "prediction (2, 3)", "target (2, 4)"]),
    ("mse int prediction", lambda t: MSE(jnp.ones((2, 3), jnp.int32), jnp.ones((2, 3))), T,
     ["mse", "floating-point prediction", "int32"]),
    ("mse nan target", lambda t: MSE(jnp.ones((2, 3)), jnp.ones((2, 3)).at[0, 1].set(jnp.nan)), E,
     ["mse", "expected finite targets", "got 1 NaN or Inf"]),
    ("mse empty batch", lambda t: MSE(jnp.ones((0, 3)), jnp.ones((0, 3))), E, ["mse", "empty batch", "(0, 3)"]),
    ("xent label too big", lambda t: XENT(jnp.ones((2, 3)), jnp.array([0, 5])), E,
     ["softmax_cross_entropy", "[0, 3)", "max 5"]),
    ("xent negative label", lambda t: XENT.value_and_grad(jnp.ones((2, 3)), jnp.array([-1, 0])), E,
     ["softmax_cross_entropy", "[0, 3)", "min -1"]),
    ("xent float labels", lambda t: XENT(jnp.ones((2, 3)), jnp.array([0.0, 1.0])), E,
     ["softmax_cross_entropy", "probabilities of shape (2, 3)", "got (2,)", "integer dtype"]),
    ("xent bool targets", lambda t: XENT(jnp.ones((2, 3)), jnp.array([True, False])), T,
     ["softmax_cross_entropy", "integer class ids", "dtype bool"]),
    ("xent complex targets", lambda t: XENT(jnp.ones((2, 3)), jnp.ones((2, 3), jnp.complex64)), T,
     ["softmax_cross_entropy", "integer class ids", "complex64"]),
    ("xent label count", lambda t: XENT(jnp.ones((2, 3)), jnp.array([0, 1, 2])), E,
     ["softmax_cross_entropy", "shape (2,)", "got (3,)"]),
    ("xent logits rank", lambda t: XENT(jnp.ones((2, 3, 4)), jnp.array([0, 1])), E,
     ["softmax_cross_entropy", "rank-2 prediction", "(2, 3, 4)"]),
    ("xent negative probs", lambda t: XENT(jnp.ones((2, 3)), -jnp.ones((2, 3))), E,
     ["softmax_cross_entropy", "finite and >= 0", "min -1.0"]),
    ("xent nan probs", lambda t: XENT(jnp.ones((2, 3)), jnp.full((2, 3), jnp.nan)), E,
     ["softmax_cross_entropy", "finite and >= 0", "nan"]),
    ("xent empty batch", lambda t: XENT(jnp.ones((0, 3)), jnp.zeros((0,), jnp.int32)), E,
     ["softmax_cross_entropy", "empty batch", "(0, 3)"]),
    ("bce target range", lambda t: BCE(jnp.ones((2, 3)), 2 * jnp.ones((2, 3))), E,
     ["binary_cross_entropy", "[0, 1]", "max 2.0"]),
    ("bce shapes", lambda t: BCE(jnp.ones((2, 3)), jnp.ones((2,))), E,
     ["binary_cross_entropy", "logits (2, 3)", "target (2,)"]),
    ("loss not callable", lambda t: bp.losses.as_loss(3), T, ["loss", "a bpjax Loss or a function", "got int"]),
    # ---- gradients and gradient checks
    ("value_and_grad model", lambda t: bp.value_and_grad("mlp", XENT), T, ["model", "bpjax Layer", "got str"]),
    ("contextual without state", lambda t: bp.value_and_grad(bp.serial(L.Dense(3), L.Dropout(0.5)), XENT)(
        F("params"), F("x"), F("y")), E, ["serial(Dense(3), Dropout(0.5))", "pass state=", "keeps state"]),
    ("check_gradients nan x", lambda t: bp.check_gradients(F("mlp"), XENT, F("params"),
                                                           F("x").at[0, 0].set(jnp.nan), F("y")), E,
     ["check_gradients", "x contains NaN or Inf", "1 entries"]),
    ("check_gradients int x", lambda t: bp.check_gradients(F("mlp"), XENT, F("params"),
                                                           jnp.ones((4, 5), jnp.int32), F("y")[:4]), T,
     ["serial[0] Dense(4)", "floating-point input", "int32"]),
    ("check_gradients other params", lambda t: bp.check_gradients(F("mlp"), XENT, F("other"), F("x"), F("y")), E,
     ["serial[2] Dense(3)", "expected W (D_in, 3)", "got W (4, 7)"]),
    ("check_gradients labels", lambda t: bp.check_gradients(F("mlp"), XENT, F("params"), F("x"),
                                                            F("y").at[3].set(9)), E,
     ["softmax_cross_entropy", "[0, 3)", "max 9"]),
    ("check_gradients rtol", lambda t: bp.check_gradients(F("mlp"), XENT, F("params"), F("x"), F("y"), rtol=-1.0),
     E, ["check_gradients", "rtol must be a positive number", "-1.0"]),
    ("check_gradients fd_eps", lambda t: bp.check_gradients(F("mlp"), XENT, F("params"), F("x"), F("y"),
                                                            finite_differences=True, fd_eps=0.0), E,
     ["check_gradients", "fd_eps must be a positive number", "0.0"]),
    ("check_layer dy shape", lambda t: bp.check_layer(F("dense"), F("dp"), F("x")[:2], dy=jnp.ones((2, 3))), E,
     ["check_layer(Dense(4))", "output's shape (2, 4)", "got (2, 3)"]),
    # ---- training step
    ("step optimizer uncalled", lambda t: bp.train.make_step(F("mlp"), XENT, optax.adam), T,
     ["optimizer", "optax GradientTransformation", "got function"]),
    ("step optimizer float", lambda t: bp.train.make_step(F("mlp"), XENT, 0.1), T,
     ["optimizer", "GradientTransformation", "got float"]),
    ("step backward", lambda t: bp.train.make_step(F("mlp"), XENT, optax.sgd(0.1), backward="auto"), E,
     ["backward", "('manual', 'autodiff')", "'auto'"]),
    ("step nan input", lambda t: _step(F("x").at[1, 1].set(jnp.inf), F("y")), E,
     ["serial(Dense(4), Relu, Dense(3))", "input x contains NaN or Inf"]),
    ("step labels in jit", lambda t: _step(F("x"), F("y").at[0].set(3)), E,
     ["softmax_cross_entropy", "[0, 3)", "max 3"]),
    ("step empty batch", lambda t: _step(F("x")[:0], F("y")[:0]), E,
     ["softmax_cross_entropy", "empty batch", "(0, 3)"]),
    # ---- fit
    ("fit zero batch", lambda t: _fit(batch_size=0), E, ["fit", "batch_size must be in [1, 32]", "got 0"]),
    ("fit negative steps", lambda t: _fit(steps=-3), E, ["fit", "steps must be a positive int", "got -3"]),
    ("fit nan data", lambda t: _fit(train_data=(F("x").at[3, 1].set(jnp.nan), F("y"))), E,
     ["fit", "train_data x contains NaN or Inf", "example 3"]),
    ("fit labels", lambda t: _fit(train_data=(F("x"), F("y").at[2].set(7))), E,
     ["fit train_data", "softmax_cross_entropy", "[0, 3)", "max 7"]),
    ("fit int data", lambda t: _fit(train_data=(F("x").astype(jnp.int32), F("y"))), T,
     ["fit train_data", "serial[0] Dense(4)", "floating-point input", "int32"]),
    ("fit empty data", lambda t: _fit(train_data=(F("x")[:0], F("y")[:0])), E,
     ["fit", "non-empty leading (example) axis", "x (0, 5)"]),
    ("fit other params", lambda t: _fit(params=F("other")), E, ["serial[2] Dense(3)", "expected W (D_in, 3)",
                                                                  "got W (4, 7)"]),
    ("fit checkpoint_every", lambda t: _fit(checkpoint_every=0, checkpoint_path=str(t / "ck.npz")), E,
     ["fit", "checkpoint_every must be a positive int", "got 0"]),
    ("fit corrupted checkpoint", lambda t: _fit(checkpoint_every=2, checkpoint_path=str(_corrupt_run(t))), E,
     ["step_00000004.npz", "corrupted or truncated", "expected a bpjax .npz"]),
    ("fit checkpoint file", lambda t: _fit(checkpoint_path=str(_saved(t))), E,
     ["fit", "ck.npz", "expected a run folder", "found a file"]),
    ("fit checkpoint parent", lambda t: _fit(checkpoint_path=str(t / "no" / "run")), E,
     ["fit", "expected its parent folder to exist", "does not exist"]),
    ("fit nan guard", lambda t: _fit(optimizer=optax.sgd(1e30), steps=6), E,
     ["fit", "non-finite loss at step 1", "nan_guard"]),
    # ---- checkpoints
    ("checkpoint missing", lambda t: checkpoint.restore(t / "none.npz"), E, ["none.npz", "no such file",
                                                                              "expected a checkpoint"]),
    ("checkpoint truncated", lambda t: checkpoint.restore(_corrupt(t)), E, ["ck.npz", "corrupted or truncated",
                                                                             "expected a bpjax .npz"]),
    ("checkpoint other model", lambda t: checkpoint.restore(_saved(t), like={"params": F("other")}), E,
     ["ck.npz", "['params'][2]['W']: expected float32[4, 7]", "found float32[4, 3]"]),
    ("checkpoint unsavable leaf", lambda t: checkpoint.save(t / "ck.npz", {"name": "mlp"}), T,
     ["ck.npz", "['name']: expected an array, PRNG key or Python number", "got str"]),
    # ---- experiments' command line
    ("cli experiment name", lambda t: _cli("nope"), E, ["exit 2", "argument name: invalid choice", "'nope'"]),
    ("cli zero seeds", lambda t: _cli("mnist1d_mlp", "--seeds", "0"), E,
     ["exit 2", "--seeds", "expected a positive integer (at least 1), got 0"]),
    ("cli seeds not int", lambda t: _cli("mnist1d_mlp", "--seeds", "x"), E,
     ["exit 2", "--seeds", "expected a positive integer, got 'x'"]),
    ("cli backward", lambda t: _cli("mnist1d_mlp", "--backward", "auto"), E,
     ["exit 2", "--backward: invalid choice", "'auto'"]),
]


@pytest.mark.parametrize("fn, exc, fragments", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_input_gives_clear_error(tmp_path, fn, exc, fragments):
    assert_clear_error(fn, tmp_path, exc, fragments)


def test_battery_size():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


def test_labels_out_of_range_inside_a_users_jit_poison_the_loss():
    """Outside bpjax's checked step a traced label check cannot raise: the loss becomes NaN, never a wrong number."""
    value, grads = jax.jit(bp.value_and_grad(F("mlp"), XENT))(F("params"), F("x"), F("y").at[0].set(3))
    assert bool(jnp.isnan(value))
    good, _ = jax.jit(bp.value_and_grad(F("mlp"), XENT))(F("params"), F("x"), F("y"))
    assert bool(jnp.isfinite(good))


# A Python of its own (3 s: JAX starts anew): the slow set's; the default suite checks the same argparse errors in
# process (test_experiments.test_bad_command_lines_are_argparse_errors).
@pytest.mark.slow
def test_command_line_error_from_a_real_process():
    """``python -m experiments`` itself: exit status 2 and the argument named on stderr."""
    proc = subprocess.run([sys.executable, "-m", "experiments", "mnist1d_mlp", "--seeds", "-2"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "argument --seeds: expected a positive integer (at least 1), got -2" in proc.stderr
