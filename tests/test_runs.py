"""bp.train.fit / fit_many: one compiled run equals the step-by-step loop; eval, shuffling, context, vmap, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bpjax as bp
from bpjax.core import Layer
from bpjax.layers import Dense, Tanh

XENT = bp.losses.softmax_cross_entropy
# Tolerance between two compiled programs that run the same f32 maths (a scan of steps vs one jitted
# step per call, or vmap vs separate runs): XLA may fuse and order reductions differently (~1e-7
# relative per op); over <= 16 Adam steps that stays below 1e-5 relative, 1e-6 absolute.
RTOL, ATOL = 1e-5, 1e-6


def _problem(n=64, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=(d, c))
    y = np.argmax(x @ w + 0.3 * rng.normal(size=(n, c)), -1).astype(np.int32)
    return x, y


def _mlp(c=3):
    return bp.serial(Dense(8), Tanh(), Dense(c))


# One model and one optimizer object shared by tests that train with the same options: fit keeps one
# compiled program per (model, loss, optimizer, options, shapes), so their runs compile it once.
MLP, ADAM = _mlp(), optax.adam(1e-2)
SHUFFLED = dict(steps=10, batch_size=16, shuffle=True, eval_every=5, verbose=False)


def _close(a, b, rtol=RTOL, atol=ATOL):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_fit_matches_step_loop_and_learns(backward="manual"):
    x, y = _problem()
    model, opt = _mlp(), optax.adam(3e-2)
    _, p0 = model.init(jax.random.key(1), (5,))
    steps, B = 16, 16
    res = bp.train.fit(model, XENT, opt, p0, (x, y), steps=steps, batch_size=B, backward=backward, verbose=False)
    step = bp.train.make_step(model, XENT, opt, backward=backward, checks=False)
    p, s, losses = p0, opt.init(p0), []
    for i in range(steps):
        b = i % (len(x) // B)  # batches in order: start = (i * B) % N
        p, s, v = step(p, s, x[b * B:(b + 1) * B], y[b * B:(b + 1) * B])
        losses.append(float(v))
    _close(res.params, p)
    _close(res.opt_state, s)
    np.testing.assert_allclose(res.history["loss"], losses, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(res.history["step"], np.arange(1, steps + 1))
    # it learns: the last epoch's mean loss is below the first's
    assert res.history["loss"][-4:].mean() < 0.8 * res.history["loss"][:4].mean()


def test_manual_and_autodiff_runs_agree():
    x, y = _problem()
    _, p0 = MLP.init(jax.random.key(2), (5,))
    kw = dict(key=jax.random.key(0), eval_data=(x, y), **SHUFFLED)
    a = bp.train.fit(MLP, XENT, ADAM, p0, (x, y), backward="manual", **kw)
    b = bp.train.fit(MLP, XENT, ADAM, p0, (x, y), backward="autodiff", **kw)
    _close(a.params, b.params)
    np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=RTOL, atol=ATOL)


def test_eval_history_and_chunking():
    x, y = _problem()
    xe, ye = _problem(n=40, seed=5)
    model = _mlp()
    _, p0 = model.init(jax.random.key(3), (5,))
    kw = dict(steps=10, batch_size=16, eval_data=(xe, ye), eval_every=4)
    one = bp.train.fit(model, XENT, optax.sgd(0.1), p0, (x, y), verbose=False, **kw)
    after = {}  # the chunked run's params after each chunk, by step (its callback runs between chunks)
    chunked = bp.train.fit(model, XENT, optax.sgd(0.1), p0, (x, y), verbose=True, chunk_size=4,
                           callback=lambda step, result: after.setdefault(step, result.params), **kw)
    h = one.history
    np.testing.assert_array_equal(h["eval_step"], [4, 8, 10])
    assert set(h) == {"step", "loss", "eval_step", "eval_loss", "eval_accuracy"}
    pred = bp.predict(model, one.params, jnp.asarray(xe))
    np.testing.assert_allclose(h["eval_loss"][-1], XENT(pred, jnp.asarray(ye)), rtol=1e-6)
    np.testing.assert_allclose(h["eval_accuracy"][-1], bp.losses.accuracy(pred, jnp.asarray(ye)), rtol=0)
    # an eval after step 4 equals evaluating the params after 4 steps (the end of the chunked run's first
    # chunk: no program compiled for a separate 4-step run)
    assert sorted(after) == [4, 8, 10]
    np.testing.assert_allclose(h["eval_loss"][0], XENT(bp.predict(model, after[4], jnp.asarray(xe)),
                                                       jnp.asarray(ye)), rtol=RTOL)
    # chunks of 4 and a ragged last one of 2 (with a progress bar) give the same run
    _close(one.params, chunked.params)
    for k in h:
        np.testing.assert_allclose(h[k], chunked.history[k], rtol=RTOL, atol=ATOL)


def _probe(n=24):
    """A model that does not learn (sgd(0), W = 0) and an MSE target whose per-step loss reveals the batch."""
    x = np.zeros((n, 1), np.float32)
    y = np.arange(1, n + 1, dtype=np.float32)[:, None]
    model = bp.serial(Dense(1, bias=False, init=lambda k, s, d: jnp.zeros(s, d)))
    return model, model.init(jax.random.key(0), (1,))[1], x, y


def test_batches_in_order_and_shuffled_epochs():
    model, p0, x, y = _probe()
    B, n_b = 4, 6
    opt = optax.sgd(0.0)  # one optimizer object: runs with the same options reuse one compiled program
    run = lambda **kw: bp.train.fit(model, bp.losses.mse, opt, p0, (x, y), steps=2 * n_b,  # noqa: E731
                                    batch_size=B, verbose=False, **kw).history["loss"]
    in_order = run()
    want = [np.mean(y[(s % n_b) * B:(s % n_b + 1) * B] ** 2) for s in range(2 * n_b)]
    np.testing.assert_allclose(in_order, want, rtol=1e-6)
    a = run(shuffle=True, key=jax.random.key(7))
    b = run(shuffle=True, key=jax.random.key(7))
    c = run(shuffle=True, key=jax.random.key(8))
    np.testing.assert_array_equal(a, b)  # same key, same batches
    assert not np.allclose(a, c) and not np.allclose(a, in_order)
    # each epoch visits every example exactly once: sum_batches B * mean(y_b^2) = sum(y^2)
    for e in range(2):
        np.testing.assert_allclose(B * a[e * n_b:(e + 1) * n_b].sum(), np.sum(y ** 2), rtol=1e-6)
    assert not np.allclose(a[:n_b], a[n_b:])  # a fresh permutation per epoch


def Jitter(scale=0.05) -> Layer:
    """Stand-in contextual layer: ``y = x + b + scale * noise(key)`` in training; counts its calls in state."""

    def init(key, shape):
        return tuple(shape), {"b": jnp.zeros(shape[-1:])}

    def init_state(key, shape):
        return tuple(shape), {"n": jnp.zeros((), jnp.int32)}

    def forward(params, x, *, state, key, train):
        y = x + params["b"]
        if train:
            y = y + scale * jax.random.normal(key, x.shape, x.dtype)
        return y, (), {"n": state["n"] + 1}

    def backward(params, residuals, dy):
        return {"b": dy.sum(0)}, dy  # y = x + b + noise  =>  db = sum_rows dy, dx = dy

    return Layer(init, forward, backward, "Jitter", init_state)


def test_contextual_model_threads_state_and_keys():
    x, y = _problem()
    model = bp.serial(Dense(8), Jitter(), Tanh(), Dense(3))
    _, p0 = model.init(jax.random.key(4), (5,))
    s0 = bp.init_state(model, jax.random.key(0), (5,))
    key, steps, B = jax.random.key(9), 8, 16
    opt = optax.adam(1e-2)  # one optimizer object: the second fit reuses the first's compiled program
    res = bp.train.fit(model, XENT, opt, p0, (x, y), steps=steps, batch_size=B, key=key, state=s0,
                       eval_data=(x, y), verbose=False)
    assert int(res.state[1]["n"]) == steps  # the training steps ran in train mode, once each
    step = bp.train.make_step(model, XENT, optax.adam(1e-2), checks=False)
    _, step_key = jax.random.split(key)  # documented: fit's per-step key is fold_in(split(key)[1], s)
    p, o, st = p0, optax.adam(1e-2).init(p0), s0
    for i in range(steps):
        b = i % (len(x) // B)
        p, o, st, v = step(p, o, x[b * B:(b + 1) * B], y[b * B:(b + 1) * B], state=st,
                           key=jax.random.fold_in(step_key, i))
        np.testing.assert_allclose(res.history["loss"][i], v, rtol=RTOL, atol=ATOL)
    _close(res.params, p)
    # a different key gives different noise, hence different params
    other = bp.train.fit(model, XENT, opt, p0, (x, y), steps=steps, batch_size=B, key=jax.random.key(10), state=s0,
                         eval_data=(x, y), verbose=False)
    assert not np.allclose(other.params[0]["W"], res.params[0]["W"])


def test_fit_many_over_seeds_equals_separate_runs():
    x, y = _problem()
    model, opt = MLP, ADAM  # shared: the separate runs share one compiled program (with other tests' too)
    keys = jax.random.split(jax.random.key(11), 2)
    kw = dict(eval_data=(x, y), **SHUFFLED)
    many = bp.train.fit_many(model, XENT, opt, None, (x, y), keys=keys, **kw)
    assert many.history["loss"].shape == (2, 10) and many.history["eval_accuracy"].shape == (2, 2)
    for i in range(2):
        k_init, k_run = jax.random.split(keys[i])
        _, p = model.init(k_init, (5,))
        one = bp.train.fit(model, XENT, opt, p, (x, y), key=k_run, **kw)
        _close(jax.tree.map(lambda a: a[i], many.params), one.params)
        np.testing.assert_allclose(many.history["loss"][i], one.history["loss"], rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(many.history["eval_loss"][i], one.history["eval_loss"], rtol=RTOL, atol=ATOL)
    assert not np.allclose(many.params[0]["W"][0], many.params[0]["W"][1])


def test_fit_many_draws_each_models_state_from_its_own_key():
    x, y = _problem()
    model = bp.serial(Dense(8, backward_rule="feedback_alignment"), Tanh(), Dense(3))  # B lives in the state
    keys = jax.random.split(jax.random.key(13), 2)
    kw = dict(steps=6, batch_size=16, verbose=False)
    many = bp.train.fit_many(model, XENT, ADAM, None, (x, y), keys=keys, **kw)
    feedback = many.state[0]["B"]
    assert feedback.shape == (2, 5, 8) and not np.allclose(feedback[0], feedback[1])  # one B per seed
    for i in range(2):
        k_init, k_run = jax.random.split(keys[i])
        _, p = model.init(k_init, (5,))
        one = bp.train.fit(model, XENT, ADAM, p, (x, y), key=k_run, state=bp.init_state(model, k_init, (5,)), **kw)
        _close(jax.tree.map(lambda a: a[i], many.params), one.params)
        _equal(jax.tree.map(lambda a: a[i], many.state), one.state)
    shared = bp.init_state(model, jax.random.key(0), (5,))  # one model's state: every model starts from it
    same = bp.train.fit_many(model, XENT, ADAM, None, (x, y), keys=keys, state=shared, **kw)
    np.testing.assert_array_equal(same.state[0]["B"][0], same.state[0]["B"][1])
    stacked = bp.train.init_many(model, jax.random.split(jax.random.key(1), 2), (5,), state=True)
    assert stacked[0]["B"].shape == (2, 5, 8)
    with pytest.raises(bp.BpjaxError, match=r"state: expected one model's state \(leaf shapes \[\(5, 8\)\]...\) or "
                                            r"one per model with a leading axis 2 .* got leaf shapes \[\(3, 5, 8\)\]"):
        bp.train.fit_many(model, XENT, ADAM, None, (x, y), keys=keys,
                          state=bp.train.init_many(model, jax.random.split(jax.random.key(1), 3), (5,), state=True),
                          **kw)


def test_fit_many_over_learning_rates_and_weight_decay():
    x, y = _problem()
    model = _mlp()
    _, p = model.init(jax.random.key(12), (5,))
    hp = {"lr": jnp.array([0.0, 0.05, 0.2]), "wd": jnp.array([0.0, 0.0, 1e-2])}
    stacked = jax.tree.map(lambda a: jnp.stack([a] * 3), p)
    factory = lambda h: optax.adamw(h["lr"], weight_decay=h["wd"])  # noqa: E731
    many = bp.train.fit_many(model, XENT, factory, stacked, (x, y), hparams=hp, steps=8, batch_size=32,
                             verbose=False)
    _equal(jax.tree.map(lambda a: a[0], many.params), p)  # lr 0 leaves the params exactly as they were
    for i in (1, 2):
        one = bp.train.fit(model, XENT, optax.adamw(float(hp["lr"][i]), weight_decay=float(hp["wd"][i])), p,
                           (x, y), steps=8, batch_size=32, verbose=False)
        _close(jax.tree.map(lambda a: a[i], many.params), one.params)
        np.testing.assert_allclose(many.history["loss"][i], one.history["loss"], rtol=RTOL, atol=ATOL)


def test_checkpoint_resume_is_bitwise_identical(tmp_path):
    pytest.importorskip("bpjax.checkpoint")
    x, y = _problem()
    model = bp.serial(Dense(8), Jitter(), Tanh(), Dense(3))
    _, p0 = model.init(jax.random.key(6), (5,))
    s0 = bp.init_state(model, jax.random.key(0), (5,))
    kw = dict(steps=12, batch_size=16, key=jax.random.key(3), shuffle=True, state=s0, eval_data=(x, y),
              eval_every=3, checkpoint_every=4, verbose=False)
    opt = optax.adam(1e-2)  # one optimizer object: the three runs share one compiled chunk
    full = bp.train.fit(model, XENT, opt, p0, (x, y), checkpoint_path=str(tmp_path / "a"), **kw)

    def stop(step, result):
        if step == 8:
            raise KeyboardInterrupt

    path = str(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        bp.train.fit(model, XENT, opt, p0, (x, y), checkpoint_path=path, callback=stop, **kw)
    resumed = bp.train.fit(model, XENT, opt, p0, (x, y), checkpoint_path=path, **kw)
    _equal(resumed.params, full.params)
    _equal(resumed.opt_state, full.opt_state)
    _equal(resumed.state, full.state)
    for k in full.history:
        np.testing.assert_array_equal(resumed.history[k], full.history[k])


def Counting(inner: Layer, counter: list) -> Layer:
    """``inner`` unchanged, but every trace of its forward appends to ``counter`` (a trace-time side effect).

    ``fit`` traces the forward once per call to check shapes (``jax.eval_shape``, cheap, never compiled);
    compiling the run traces it again (training step, evaluation). So a call that reuses its compiled
    program adds exactly one trace, and one that compiles adds more.
    """

    def forward(params, x):
        counter.append(1)
        return inner.forward(params, x)

    return inner._replace(forward=forward)


def test_compiled_programs_are_reused_between_calls():
    x, y = _problem()
    traces = []
    model = bp.serial(Counting(Dense(8), traces), Tanh(), Dense(3))
    _, p0 = model.init(jax.random.key(13), (5,))
    opt = optax.adam(1e-2)
    kw = dict(steps=6, batch_size=16, eval_data=(x, y), verbose=False)
    first = bp.train.fit(model, XENT, opt, p0, (x, y), **kw)
    n = len(traces)
    assert n == 3  # the shape check, the training step, the evaluation
    again = bp.train.fit(model, XENT, opt, p0, (x, y), **kw)
    assert len(traces) == n + 1  # the same model, loss, optimizer, options and shapes: only the shape check
    _equal(again.params, first.params)
    # new values of the same shapes go through the cached program and give what a fresh compile gives
    x2, y2 = _problem(seed=3)
    cached = bp.train.fit(model, XENT, opt, p0, (x2, y2), **kw)
    assert len(traces) == n + 2
    bp.train.clear_cache()
    fresh = bp.train.fit(model, XENT, opt, p0, (x2, y2), **kw)
    assert len(traces) == n + 5
    _equal(cached.params, fresh.params)
    assert not np.allclose(cached.params[0]["W"], first.params[0]["W"])
    # anything static that differs compiles its own program: another optimizer object, the number of steps
    for over in (dict(optimizer=optax.adam(1e-2)), dict(steps=5)):
        n = len(traces)
        bp.train.fit(model, XENT, over.pop("optimizer", opt), p0, (x, y), **{**kw, **over})
        assert len(traces) > n + 1, over
    # fit_many: the init, the optimizer init and the vmapped chunk are reused as well
    keys = jax.random.split(jax.random.key(14), 2)
    a = bp.train.fit_many(model, XENT, opt, None, (x, y), keys=keys, **kw)
    n = len(traces)
    b = bp.train.fit_many(model, XENT, opt, None, (x, y), keys=keys, **kw)
    assert len(traces) == n + 1
    _equal(a.params, b.params)


def _fit(**over):
    x, y = _problem()
    model = over.pop("model", _mlp())
    p = over.pop("params", None) or model.init(jax.random.key(0), (5,))[1]
    kw = dict(steps=4, batch_size=16, verbose=False)
    kw.update(over)
    data = kw.pop("train_data", (x, y))
    opt = kw.pop("optimizer", optax.sgd(0.1))
    return bp.train.fit(model, XENT, opt, p, data, **kw)


@pytest.mark.parametrize("over, match", [
    (dict(steps=0), "steps must be a positive int, got 0"),
    (dict(batch_size=65), r"batch_size must be in \[1, 64\], got 65"),
    (dict(batch_size=2.5), "batch_size must be in"),
    (dict(train_data=(np.full((64, 5), np.nan, np.float32), np.zeros(64, np.int32))), "contains NaN or Inf"),
    (dict(train_data=(np.zeros((64, 5), np.float32), np.full(64, 3, np.int32))),
     r"labels must lie in \[0, 3\).*max 3"),
    (dict(train_data=(np.zeros((64, 5), np.float32), np.zeros(63, np.int32))), "share a non-empty leading"),
    (dict(train_data=(np.zeros((64, 6), np.float32), np.zeros(64, np.int32))), "expected input with 5 features"),
    (dict(train_data=(np.zeros((64, 5), np.int32), np.zeros(64, np.int32))), "floating-point"),
    (dict(eval_every=2), "eval_every is set but eval_data is None"),
    (dict(shuffle=True), "shuffle=True needs key"),
    (dict(backward="fd"), "backward must be one of"),
    (dict(optimizer=0.1), "expected an optax GradientTransformation"),
    (dict(model=bp.serial(Dense(3), Jitter())), "pass state=bp.init_state"),
    (dict(checkpoint_every=2), "checkpoint_path is None"),
])
def test_bad_config_raises_clear_errors(over, match):
    with pytest.raises(bp.BpjaxError, match=match):
        _fit(**over)


def test_fit_many_bad_sizes():
    x, y = _problem()
    model = _mlp()
    with pytest.raises(bp.BpjaxError, match="one leading model axis N"):
        bp.train.fit_many(model, XENT, lambda lr: optax.sgd(lr), None, (x, y), keys=jax.random.split(
            jax.random.key(0), 3), hparams=jnp.array([0.1, 0.2]), steps=2, batch_size=8, verbose=False)


def test_make_step_donate_equals_plain_step():
    x, y = _problem()
    model, opt = _mlp(), optax.adam(1e-2)
    _, p0 = model.init(jax.random.key(15), (5,))
    plain = bp.train.make_step(model, XENT, opt, checks=False)
    donating = bp.train.make_step(model, XENT, opt, checks=False, donate=True)
    p, s = plain(p0, opt.init(p0), x[:16], y[:16])[:2]
    p_in, s_in = jax.tree.map(jnp.copy, (p0, opt.init(p0)))
    q, t, _ = donating(p_in, s_in, x[:16], y[:16])
    _equal(q, p)  # the same compiled maths, written into the donated buffers
    _equal(t, s)
    assert p_in[0]["W"].is_deleted()  # the donated input is gone; p0 (never passed) is intact
    assert not p0[0]["W"].is_deleted()
