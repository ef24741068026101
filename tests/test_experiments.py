"""The experiments' --quick runs: each writes its results, a CSV table and its figure, and its key claim holds in
the numbers bpjax produced (read back from the results.json it wrote)."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import experiments
from experiments.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def record_of(out: Path, name: str) -> dict:
    """The run's results.json, after checking what every run writes: the record, a CSV table and its figure."""
    record = json.loads((out / "results.json").read_text())
    assert record["experiment"] == name and record["seconds"] > 0
    assert record["versions"]["jax"] and record["config"] and record["run"]["out"] == str(out)
    assert list(out.glob("*.csv")), f"{name} wrote no CSV table"
    assert (out / f"{name}.png").stat().st_size > 10_000  # the figure the README shows (docs/figures/<name>.png)
    return record


def run(name, tmp_path, *args):
    """``python -m experiments NAME --quick ...`` in this process: the metrics it wrote, and its folder."""
    out = tmp_path / name
    assert main([name, "--quick", "--no-progress", "--out", str(out), *args]) == 0
    return record_of(out, name)["metrics"], out


def test_list_names_every_experiment_and_each_has_its_file(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in experiments.EXPERIMENTS) and experiments.DEFAULT == "mnist1d_mlp"
    assert all(path.is_file() for path in experiments.FILES.values())
    assert not (experiments.HERE / "mnist1d.py").exists()  # it would hide the mnist1d package from the scripts


@pytest.mark.parametrize("argv, message", [
    (["no_such_experiment"], "argument name: invalid choice: 'no_such_experiment'"),
    (["mnist1d_mlp", "--seeds", "0"], "argument --seeds: expected a positive integer (at least 1), got 0"),
    (["mnist1d_mlp", "--seeds", "two"], "argument --seeds: expected a positive integer, got 'two'"),
    (["mnist1d_mlp", "--backward", "numeric"], "argument --backward: invalid choice: 'numeric'"),
    (["chain_rule", "--quick", "--publish"], "--publish copies a full run to docs/: run without --quick")])
def test_bad_command_lines_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_an_existing_results_folder_or_a_file_as_out_is_refused_before_running(tmp_path, capsys):
    done = tmp_path / "done"
    done.mkdir()
    (done / "results.json").write_text("{}")
    taken = tmp_path / "taken.txt"
    taken.write_text("kept")
    for out, message in [(done, f"{done / 'results.json'} exists already: pass --force to overwrite it"),
                         (taken, f"argument --out: expected a folder for the results, got the file {taken}"),
                         (taken / "inside", f"argument --out: cannot make the results folder {taken / 'inside'}")]:
        with pytest.raises(SystemExit) as e:
            main(["chain_rule", "--out", str(out)])
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert (done / "results.json").read_text() == "{}" and list(done.iterdir()) == [done / "results.json"]
    assert taken.read_text() == "kept"


def test_mnist1d_mlp_quick(tmp_path):
    m, out = run("mnist1d_mlp", tmp_path)
    # 500 steps of Adam: far above chance (10%) but short of the 6000-step ~65%.
    assert 40 < m["test_accuracy_percent"] < 75
    assert m["final_train_loss"] < 0.6 * m["initial_loss"]
    # the manual gradients agree with jax.grad to float64 roundoff (check_gradients' rtol 1e-10)
    assert [s for s, _ in m["grad_checks"]] == [250, 500] and m["grad_check_max_rel_error"] < 1e-10
    assert m["curve"]["step"] == [250, 500] and m["train_accuracy_percent"] > m["test_accuracy_percent"]


def test_chain_rule(tmp_path):
    m, out = run("chain_rule", tmp_path)
    # bpjax's Dense(1, bias=False) + mse backward gives the hand-derived -24 and -16 exactly, as jax.grad does
    one = m["scalar"]
    assert one["bpjax_L"] == 16.0 and one["bpjax_dL_dw"] == one["jax_dL_dw"] == -24.0
    assert one["bpjax_dL_dx"] == one["jax_dL_dx"] == -16.0
    two = m["two_layer"]
    assert set(two["rel_error_vs_jax_grad"]) == {"dz2", "dW2", "db2", "da1", "dz1", "dW1", "db1", "dx"}
    # float64 roundoff is ~1e-16 per operation; 1e-12 leaves room for a few hundred operations
    assert two["max_rel_error"] < 1e-12 and two["bpjax_max_abs_difference"] < 1e-12
    assert m["all_match"] is True


def test_publish_copies_the_results_and_the_figure_dropping_long_curves(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(experiments.HERE))  # as the scripts import their helper
    import results

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"metrics": {"accuracy": 0.5, "curve": list(range(20_000)),
                                                              "per_seed": [0.4, 0.6]}}, indent=2))
    (out / "demo.png").write_bytes(b"png")
    written = results.publish(out, "demo", tmp_path / "docs")
    assert written == [tmp_path / "docs" / "results" / "demo.json", tmp_path / "docs" / "figures" / "demo.png"]
    copy = json.loads(written[0].read_text())
    assert copy["metrics"]["accuracy"] == 0.5 and copy["metrics"]["per_seed"] == [0.4, 0.6]
    assert copy["metrics"]["curve"].startswith("omitted from the committed copy: 20000 values")
    assert len(written[0].read_text()) <= results.PUBLISHED_LIMIT and written[1].read_bytes() == b"png"


def test_gradient_descent_1d_runs_as_a_script(tmp_path, monkeypatch):
    """``python experiments/gradient_descent_1d.py --quick``, in this process as Python runs a script: the file as
    ``__main__`` with its own folder first on the path (``test_a_copied_experiment_runs_on_its_own`` runs one in a
    process of its own)."""
    out, script = tmp_path / "gradient_descent_1d", str(experiments.FILES["gradient_descent_1d"])
    monkeypatch.syspath_prepend(str(experiments.HERE))
    monkeypatch.setattr(sys, "argv", [script, "--quick", "--no-progress", "--out", str(out)])
    runpy.run_path(script, run_name="__main__")
    m = record_of(out, "gradient_descent_1d")["metrics"]
    runs = m["runs"]
    small, good, osc, large = (runs[k] for k in ("too small (0.05)", "good (1.0)", "oscillating (1.8)",
                                                 "too large (3.0)"))
    assert small["distance"] > 1.0 and small["overshoots"] == 0          # crawls, never reaches 3pi/2
    assert good["distance"] < 1e-4 and abs(good["f_final"] + 1) < 1e-6  # converges to the minimum -1
    assert osc["overshoots"] >= 10 and osc["distance"] < good["distance"] + 0.1  # overshoots each step
    # above lr 2 the minimum is unstable: lr 3 jumps across it every step into a 2-cycle 3.217 <-> 6.208,
    # both inside the basin (pi/2, 5 pi/2) of 3 pi / 2
    x13, x14, x15 = large["x_last_three"]
    assert large["overshoots"] == m["steps"] - 1 and abs(x13 - x15) < 1e-3 and abs(x14 - x15) > 2.9
    assert all(np.pi / 2 < x < 5 * np.pi / 2 for x in (x14, x15)) and abs(x15 - 3.217) < 1e-3
    assert abs(m["slope_at_x0"] - np.cos(2.0)) < 1e-6  # the Sin layer's backward: f'(2) = cos(2)
    # the linear approximation's error shrinks like h^2: error / h^2 tends to -sin(2) / 2
    assert abs(m["linear_approximation_error"][-1][1] / 0.01 ** 2 + np.sin(2.0) / 2) < 1e-2
    assert (out / "trajectories.csv").read_text().count("\n") == 1 + 16  # header, steps 0..15


# The sweep's result (a hump over 5 rates: 3 s of the default suite's time): the slow set's; the default suite runs
# fit_many over learning rates (test_runs.test_fit_many_over_learning_rates_and_weight_decay) and the experiments'
# plumbing (the main job, chain_rule, gradient_descent_1d).
@pytest.mark.slow
def test_learning_rate_sweep(tmp_path):
    m, out = run("learning_rate", tmp_path)
    acc, rates = np.asarray(m["test_acc_percent"]), m["rates"]
    assert len(acc) == len(rates) == 5
    best = int(np.argmax(acc))
    # the best rate lies strictly inside the sweep and beats both ends clearly (a hump, not a trend)
    assert 0 < best < len(rates) - 1 and 1e-3 <= m["best_rate"] <= 1e-1
    assert acc[best] > acc[0] + 10 and acc[best] > acc[-1] + 5
    assert m["final_train_loss"][0] > m["final_train_loss"][best]
    assert (out / "sweep.csv").read_text().count("\n") == 1 + 5


# Measured 5-10 s each on a 2-core machine running two workers: the slow set (-m slow) runs it; the default
# suite runs the main job (mnist1d_mlp), chain_rule and gradient_descent_1d, which go through
# the same trainer (bp.train.fit / fit_many) and the same results writer.
@pytest.mark.slow
def test_optimizers(tmp_path):
    m, out = run("optimizers", tmp_path)
    r = m["optimizers"]
    assert set(r) == {"SGD (0.1)", "momentum (0.05, 0.9)", "Adam (1e-2)"}
    # in the same 300 steps momentum and Adam get the training loss well below plain SGD's
    assert r["momentum (0.05, 0.9)"]["train_loss"] < 0.85 * r["SGD (0.1)"]["train_loss"]
    assert r["Adam (1e-2)"]["train_loss"] < 0.85 * r["SGD (0.1)"]["train_loss"]
    assert all(25 < v["test_acc_percent"] < 75 for v in r.values())
    assert (out / "optimizers.csv").read_text().count("\n") == 4


# Measured 5-10 s each on a 2-core machine running two workers: the slow set (-m slow) runs it; the default
# suite runs the main job (mnist1d_mlp), chain_rule and gradient_descent_1d, which go through
# the same trainer (bp.train.fit / fit_many) and the same results writer.
@pytest.mark.slow
def test_regression_matches_least_squares(tmp_path):
    m, out = run("regression", tmp_path)
    # gradient descent through bp.train.fit reaches the least-squares optimum (numpy lstsq, float64):
    # the same test error to within 1 (of ~2004.5), the same training error to 0.1%, the same weights to 1e-3
    assert abs(m["gd_test_mse"] - m["least_squares_test_mse"]) < 1.0
    assert m["gd_train_mse"] < 1.001 * m["least_squares_train_mse"] < m["initial_train_mse"] / 5
    assert m["weight_rel_diff"] < 1e-3 and abs(m["bias_gd"] - m["bias_ls"]) < 1e-3 * abs(m["bias_ls"])
    assert m["grad_check_max_rel_error"] < 1e-10  # float64 check at the start


# Measured 5-10 s each on a 2-core machine running two workers: the slow set (-m slow) runs it; the default
# suite runs the main job (mnist1d_mlp), chain_rule and gradient_descent_1d, which go through
# the same trainer (bp.train.fit / fit_many) and the same results writer.
@pytest.mark.slow
def test_mnist1d_table_ordering(tmp_path):
    m, out = run("mnist1d", tmp_path, "--seeds", "2")
    r = m["models"]
    assert set(r) == {"logistic", "mlp"} and all(len(v["per_seed"]) == 2 for v in r.values())
    # the paper's ordering holds already after 200 steps: logistic well below the MLP, logistic near its 32%
    assert 20 < r["logistic"]["test_acc_percent"] < 40
    assert r["logistic"]["test_acc_percent"] + 10 < r["mlp"]["test_acc_percent"]
    assert all(v["grad_check_max_rel_error"] < 1e-10 for v in r.values())  # float64 check after the last step
    assert (out / "table.csv").read_text().count("\n") == 1 + 2


# Measured 21-27 s of CPU each (2-core machine, shared): the slow set (-m slow) runs them, the default
# suite keeps the experiment tests under a minute.
@pytest.mark.slow
def test_digits_cnn_beside_svc(tmp_path):
    m, out = run("digits", tmp_path, "--seeds", "1")
    assert m["n_train"] == 898 and m["n_test"] == 899
    # 300 Adam steps (~21 epochs) of the small CNN: measured 0.949; the full run (2000 steps) reaches ~0.958
    assert m["test_accuracy"] > 0.93 and m["train_accuracy"] > 0.98
    assert m["final_train_loss"] < 0.05 * m["initial_loss"]
    # float64, ties broken by jitter: manual and jax.grad agree to roundoff (check_gradients' rtol 1e-10) ...
    assert set(m["grad_checks"]) == {"init", "trained"} and m["grad_check_max_rel_error"] < 1e-10
    # ... while on the raw images tied max-pool windows make the two valid subgradients differ (measured 0.095)
    assert m["tie_subgradient_rel_difference"] > 1e-3


# Measured 21-27 s of CPU each (2-core machine, shared): the slow set (-m slow) runs them, the default
# suite keeps the experiment tests under a minute.
@pytest.mark.slow
def test_regularization_closes_the_gap(tmp_path):
    m, out = run("regularization", tmp_path, "--seeds", "1")
    r = m["settings"]
    none, wd, drop = r["none"], r["weight decay 10"], r["dropout 0.2/0.5"]
    # unregularised, the wide MLP memorises every wrong label: 100% train, test far below (measured gap 0.43)
    assert none["train_acc"] == 1.0 and none["memorised"] > 0.95 and none["acc_gap"] > 0.3
    # in 300 steps weight decay and dropout refuse most wrong labels (measured 0.04 each; dropout only delays
    # it: 0.80 after 2000 steps), gaps near 0 and better test accuracy
    for reg in (wd, drop):
        assert reg["memorised"] < 0.3 and reg["acc_gap"] < 0.3 * none["acc_gap"]
        assert reg["test_acc"] > none["test_acc"] + 0.1 and reg["test_loss"] < none["test_loss"]
    assert (out / "regularization.csv").read_text().count("\n") == 1 + 4  # header, the four settings


# Measured 5-10 s each on a 2-core machine running two workers: the slow set (-m slow) runs it; the default
# suite runs the main job (mnist1d_mlp), chain_rule and gradient_descent_1d, which go through
# the same trainer (bp.train.fit / fit_many) and the same results writer.
@pytest.mark.slow
def test_forgetting_and_rehearsal(tmp_path):
    m, out = run("forgetting", tmp_path, "--seeds", "1")
    v = m["variants"]
    plain, rehearsal = v["no rehearsal"], v["rehearsal 10/100 per batch"]
    assert m["task_a_acc_after_phase1"] > 0.85 and m["task_b_acc_after_phase1"] < 0.05  # B never seen
    # phase 2 on 5-9 alone wipes out task A (measured 0.93 -> 0.00) while learning B
    assert plain["task_a_drop_points"] > 30 and plain["task_a_acc"] < 0.1 and plain["task_b_acc"] > 0.9
    # 10 stored old images per batch of 100 keep a good part of A (measured 0.69) at no cost to B
    assert rehearsal["task_a_acc"] > plain["task_a_acc"] + 0.4 and rehearsal["task_b_acc"] > 0.9


# A process of its own (5-10 s: Python, JAX and matplotlib start anew): the slow set runs it; the default suite
# runs gradient_descent_1d as a script in-process (test_gradient_descent_1d_runs_as_a_script).
@pytest.mark.slow
def test_a_copied_experiment_runs_on_its_own(tmp_path):
    """chain_rule.py copied out with its helper results.py, run with only bpjax importable (no experiments package)."""
    copy, lib = tmp_path / "copy", tmp_path / "lib"
    copy.mkdir()
    lib.mkdir()
    for name in ("chain_rule.py", "results.py"):
        (copy / name).write_text((experiments.HERE / name).read_text())
    (lib / "bpjax").symlink_to(ROOT / "bpjax")  # this checkout's bpjax, and nothing else of the repository
    proc = subprocess.run([sys.executable, "chain_rule.py", "--quick", "--no-progress", "--out", str(copy / "out")],
                          cwd=copy,
                          env={**os.environ, "PYTHONPATH": str(lib), "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = record_of(copy / "out", "chain_rule")["metrics"]
    assert m["all_match"] is True and m["scalar"]["bpjax_dL_dw"] == -24.0


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
