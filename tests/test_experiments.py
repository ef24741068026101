"""The experiments' --quick runs: each writes its results and its key claim holds in the numbers."""

import json

import pytest

import experiments
from experiments.__main__ import main, parser


def run(name, tmp_path, *args):
    out = tmp_path / name
    assert main([name, "--quick", "--no-progress", "--out", str(out), *args]) == 0
    record = json.loads((out / "results.json").read_text())
    assert record["experiment"] == name
    assert record["versions"]["jax"] and record["config"]
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


def test_mnist1d_mlp_quick(tmp_path):
    m, out = run("mnist1d_mlp", tmp_path)
    # 500 steps of Adam: far above chance (10%) but short of the 6000-step ~65%.
    assert 40 < m["test_accuracy_percent"] < 75
    assert m["final_train_loss"] < 0.6 * m["initial_loss"]
    # the manual gradients agree with jax.grad to float64 roundoff (check_gradients' rtol 1e-10)
    assert len(m["grad_checks"]) == 2 and m["grad_check_max_rel_error"] < 1e-10
    assert (out / "curves.png").stat().st_size > 10_000
