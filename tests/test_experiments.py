"""The experiments' --quick runs: each writes its results, a CSV table and its figure, and its key claim holds in
the numbers bpjax produced."""

import json

import numpy as np
import pytest

import experiments
from experiments import common
from experiments.__main__ import main, parser


def run(name, tmp_path, *args):
    out = tmp_path / name
    assert main([name, "--quick", "--no-progress", "--out", str(out), *args]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["experiment"] == name and record["seconds"] > 0
    assert record["versions"]["jax"] and record["config"]
    assert list(out.glob("*.csv")), f"{name} wrote no CSV table"
    assert (out / f"{name}.png").stat().st_size > 10_000  # the figure the README shows (docs/figures/<name>.png)
    return record["metrics"], out


def test_list_names_every_experiment(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for name in experiments.available():
        assert name in printed
    assert "mnist1d_mlp" in experiments.available()


@pytest.mark.parametrize("argv, message", [
    (["no_such_experiment"], "invalid choice: 'no_such_experiment'"),
    (["mnist1d_mlp", "--seeds", "0"], "expected a positive integer (at least 1), got 0"),
    (["mnist1d_mlp", "--seeds", "two"], "expected a positive integer, got 'two'"),
    (["mnist1d_mlp", "--backward", "numeric"], "invalid choice: 'numeric'")])
def test_bad_command_lines_are_argparse_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_an_existing_results_folder_is_refused_before_running(tmp_path, capsys, monkeypatch):
    out = tmp_path / "done"
    out.mkdir()
    (out / "results.json").write_text("{}")
    monkeypatch.setattr(experiments, "load", lambda name: pytest.fail("the experiment was loaded"))
    with pytest.raises(SystemExit) as e:
        main(["chain_rule", "--out", str(out)])
    assert e.value.code == 2
    assert f"{out / 'results.json'} exists already: pass --force to overwrite it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["chain_rule", "--quick", "--publish", "--out", str(tmp_path / "new")])
    assert "--publish copies a full run to docs/: run without --quick" in capsys.readouterr().err


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


def test_publish_copies_the_results_and_the_figure_dropping_long_curves(tmp_path):
    cfg = common.Config(name="demo", out=tmp_path / "out")
    cfg.out.mkdir()
    (cfg.out / "results.json").write_text(json.dumps({"metrics": {"accuracy": 0.5, "curve": list(range(20_000)),
                                                                  "per_seed": [0.4, 0.6]}}, indent=2))
    (cfg.out / "demo.png").write_bytes(b"png")
    written = common.publish(cfg, tmp_path / "docs")
    assert written == [tmp_path / "docs" / "results" / "demo.json", tmp_path / "docs" / "figures" / "demo.png"]
    copy = json.loads(written[0].read_text())
    assert copy["metrics"]["accuracy"] == 0.5 and copy["metrics"]["per_seed"] == [0.4, 0.6]
    assert copy["metrics"]["curve"].startswith("omitted from the committed copy: 20000 values")
    assert len(written[0].read_text()) <= common.PUBLISHED_LIMIT and written[1].read_bytes() == b"png"


def test_gradient_descent_1d(tmp_path):
    m, out = run("gradient_descent_1d", tmp_path)
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
# suite runs the main job (mnist1d_mlp), chain_rule, gradient_descent_1d and learning_rate, which go through
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
# suite runs the main job (mnist1d_mlp), chain_rule, gradient_descent_1d and learning_rate, which go through
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
# suite runs the main job (mnist1d_mlp), chain_rule, gradient_descent_1d and learning_rate, which go through
# the same trainer (bp.train.fit / fit_many) and the same results writer.
@pytest.mark.slow
def test_mnist1d_table_ordering(tmp_path):
    m, out = run("mnist1d", tmp_path, "--seeds", "2")
    r = m["models"]
    assert set(r) == {"logistic", "mlp"} and all(len(v["per_seed"]) == 2 for v in r.values())
    # the paper's ordering holds already after 200 steps: logistic well below the MLP, logistic near its 32%
    assert 20 < r["logistic"]["test_acc_percent"] < 40
    assert r["logistic"]["test_acc_percent"] + 10 < r["mlp"]["test_acc_percent"]
    assert all(v["grad_check_max_rel_error"] < 1e-10 for v in r.values())  # float64 check, see common.check_run0
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
# suite runs the main job (mnist1d_mlp), chain_rule, gradient_descent_1d and learning_rate, which go through
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
