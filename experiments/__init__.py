"""Experiments that teach and reproduce: ``python -m experiments <name>`` (``python -m experiments list``).

The registry is the dict :data:`EXPERIMENTS` below: one line per experiment, ``name: one-line
description``; the name is also the module under ``experiments/`` that holds it. A module defines

    def run(cfg: experiments.common.Config) -> dict      # returns the metrics, writes cfg.out/...

and, optionally, ``DEFAULT_SEEDS`` (the number of seeds without ``--seeds``). It trains with
``bp.train.fit`` / ``fit_many`` and writes ``results.json``, a CSV table and ``<name>.png``
(:mod:`experiments.common`). To add an experiment, write the module and add its line here.
"""

from __future__ import annotations

import importlib

EXPERIMENTS = {
    "mnist1d_mlp": "the main job: MNIST-1D MLP (40-100-100-10, residual) with the hand-written backward, "
                   "checked against jax.grad every 500 steps (published ~65% test accuracy)",
    "chain_rule": "the chain rule by hand: dL/dw of (w x - 10)^2, then a 2-layer network traced step by step",
    "gradient_descent_1d": "gradient descent on sin(x) from x=2: too small, good and too large learning rates",
    "learning_rate": "a vmapped sweep of learning rates on the MNIST-1D MLP: final loss/accuracy vs rate",
    "optimizers": "SGD, momentum, Nesterov, RMSProp, Adam, AdamW, weight decay on MNIST-1D (optax)",
    "mnist1d": "the MNIST-1D paper's table (logistic, MLP, CNN, GRU) over seeds beside the published numbers",
    "digits": "scikit-learn 8x8 digits with a small Conv2D network",
    "regression": "diabetes regression with MSE: gradient descent against least squares (MSE 2004.5)",
    "regularization": "overfitting a small training set; weight decay and dropout close the train/test gap",
    "forgetting": "catastrophic forgetting: digits 0-4 then 5-9, and rehearsal of a few old examples",
    "vanishing_gradients": "per-layer gradient norms in deep sigmoid/tanh/ReLU nets: init, residual, "
                           "batch/layer norm; Nielsen's figures",
    "alignment": "BP, feedback alignment, DFA and sign symmetry on MNIST-1D and digits, with alignment angles",
    "hessian": "top Hessian eigenvalue during SGD by power iteration on the manual-rule HVP",
    "gpt": "a character-level GPT (tied embeddings) on Python's own source at nanoGPT's CPU shape, beside the "
           "bigram floor; samples",
    "char_rnn": "LSTM and GRU language models on the same corpus, truncated BPTT with the state carried",
    "dp_sgd": "DP-SGD with per-example gradients from the hand-written backward and optax",
}

DEFAULT = "mnist1d_mlp"


def available() -> dict:
    """The registered experiments whose module exists (a registered name may still be in the making)."""
    return {name: doc for name, doc in EXPERIMENTS.items() if importlib.util.find_spec(f"experiments.{name}")}


def load(name: str):
    """The module of experiment ``name``."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; expected one of {sorted(EXPERIMENTS)}")
    return importlib.import_module(f"experiments.{name}")
