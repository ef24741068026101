"""Quick runs of the experiments built on the swappable rules, diagnostics, HVPs and per-example gradients."""

import numpy as np
import pytest
from test_experiments import run


# Measured 21-27 s of CPU each (2-core machine, shared): the slow set (-m slow) runs them, the default
# suite keeps the experiment tests under a minute.
@pytest.mark.slow
def test_vanishing_gradients_quick(tmp_path):
    metrics, out = run("vanishing_gradients", tmp_path)
    factors = np.asarray(metrics["nielsen"]["factors"])
    # Nielsen's sigmoid net at init: each layer's gradient is several times smaller going back
    # (published factors 5.7, 4.1, 4.1); we ask for more than 2x per layer.
    assert np.all(factors > 2.0), factors
    configs = metrics["configs"]
    assert configs["sigmoid, Glorot"]["first_over_last_hidden_init"] < 1e-3          # vanishing
    assert configs["relu, N(0,1) (exploding)"]["max_norm_init"] > 1e3                 # exploding
    assert 1e-2 < configs["relu, He"]["first_over_last_hidden_init"] < 1e2            # kept in range
    assert (out / "grad_norms.csv").exists()


# ~10 s each with two workers on 2 cores: slow. The rules are tested by default in test_rules.py and
# test_conv_rules.py (angles, DFA against its formula, B = W gives backprop), the HVP and power iteration in
# test_second_order.py.
@pytest.mark.slow
def test_alignment_quick(tmp_path):
    metrics, out = run("alignment", tmp_path)
    for ds in ("mnist1d", "digits"):
        if ds not in metrics:
            continue
        bp_angle = np.asarray(metrics[ds]["BP"]["final_grad_angle"], float)
        fa_angle = np.asarray(metrics[ds]["FA"]["final_grad_angle"], float)
        assert np.all(bp_angle < 1.0)           # exact backprop: the update is the gradient
        assert np.nanmax(fa_angle) > 5.0        # feedback alignment: a real angle to the gradient
        for rule in ("BP", "FA"):
            assert metrics[ds][rule]["test_accuracy_mean"] > 0.15  # both learn (chance is 0.1)


@pytest.mark.slow
def test_hessian_quick(tmp_path):
    metrics, _ = run("hessian", tmp_path)
    assert metrics["init_rel_diff"] < 1e-4  # power iteration on the manual HVP == on jax.grad's HVP (f32)
    assert metrics["init_manual"] > 0
    # the sweep trained both rates: lambda_max measured after each chunk, SGD learnt at both rates
    for lr in ("0.05", "0.2"):
        run_ = metrics[f"lr_{lr}"]
        assert len(run_["lambda_max"]) == 3 and run_["test_accuracy"] > 0.15


# Measured 21-27 s of CPU each (2-core machine, shared): the slow set (-m slow) runs them, the default
# suite keeps the experiment tests under a minute.
@pytest.mark.slow
def test_dp_sgd_quick(tmp_path):
    metrics, _ = run("dp_sgd", tmp_path)
    assert metrics["per_example_max_rel_error"] < 1e-5  # f32 per-example grads vs vmap(grad)
    # the private backward without noise equals optax's aggregate of bpjax's per-example gradients (f32)
    assert metrics["private_backward_max_rel_error"] < 1e-5
    plain, private = metrics["SGD (non-private)"], metrics["DP-SGD clip 1, sigma 1"]
    # plain SGD learns; clipped and noised updates learn more slowly in the same 100 steps
    assert plain["test_accuracy"] > 0.25 and plain["final_loss"] < private["final_loss"]
