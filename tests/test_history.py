"""bpjax.train.history: a run's history from its chunks' per-step losses and evaluations."""

from types import SimpleNamespace

import numpy as np

from bpjax.train.history import history


def test_history_keeps_every_step_and_the_evaluations_at_their_steps():
    plan = SimpleNamespace(eval_every=2, steps=5)
    losses = [np.arange(3, dtype=np.float32), np.arange(3, 5, dtype=np.float32)]  # two chunks: steps 1-3 and 4-5
    nan = np.nan
    evals = [(np.array([nan, 0.5, nan], np.float32),), (np.array([0.25, 0.125], np.float32),)]
    h = history(plan, losses, evals, ["loss"], 5)
    np.testing.assert_array_equal(h["step"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(h["loss"], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(h["eval_step"], [2, 4, 5])  # every 2 steps and after the last one
    np.testing.assert_array_equal(h["eval_loss"], [0.5, 0.25, 0.125])


def test_history_of_n_models_has_the_model_axis_everywhere():
    plan = SimpleNamespace(eval_every=None, steps=3)
    h = history(plan, [np.zeros((2, 3), np.float32)], [()], [], 3)
    assert h["step"].shape == h["loss"].shape == (2, 3) and "eval_step" not in h
    np.testing.assert_array_equal(h["step"][1], [1, 2, 3])
