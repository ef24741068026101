"""What a run returns: :class:`FitResult`, and the history of losses and evaluations as numpy arrays."""

from __future__ import annotations

from typing import Any, Dict, NamedTuple

import numpy as np

__all__ = ["FitResult", "history"]


class FitResult(NamedTuple):
    """What :func:`fit` returns (for :func:`fit_many`, every leaf has a leading model axis ``N``).

    Attributes:
      params: the trained parameters.
      opt_state: the optimiser state after the last step.
      state: the model's non-trained state (``()`` for a simple model).
      history: a dict of numpy arrays: ``step`` (1..steps) and ``loss`` (the training loss of each
        step), ``eval_step`` (the number of steps done at each evaluation) and ``eval_<metric>`` for
        each metric (``eval_loss``, ``eval_accuracy``, ...). With ``fit_many`` every array is
        ``(N, ...)``, ``step`` and ``eval_step`` included (the same row for every model), so
        ``plt.plot(h["step"][i], h["loss"][i])`` plots model ``i``.
    """

    params: Any
    opt_state: Any
    state: Any
    history: Dict[str, np.ndarray]


def history(plan, losses, evals, names, done) -> Dict[str, np.ndarray]:
    """The history after ``done`` steps from the chunks' per-step ``losses`` and ``evals`` (NaN off the
    evaluation steps): ``step``, ``loss``, and with evaluation ``eval_step`` and ``eval_<metric>``."""
    axis = -1
    loss = np.concatenate(losses, axis=axis) if losses else np.zeros((0,), np.float32)
    lead = loss.shape[:-1]  # (N,) for fit_many
    history = {"step": np.broadcast_to(np.arange(1, done + 1), (*lead, done)).copy(), "loss": loss}
    if plan.eval_every is not None:
        eval_steps = np.asarray([s for s in range(1, done + 1) if s % plan.eval_every == 0 or s == plan.steps],
                                dtype=np.int64)
        history["eval_step"] = np.broadcast_to(eval_steps, (*lead, len(eval_steps))).copy()
        for i, n in enumerate(names):
            full = np.concatenate([e[i] for e in evals], axis=axis)
            history["eval_" + n] = full[..., eval_steps - 1]
    return history
