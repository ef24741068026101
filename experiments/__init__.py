"""Experiments that teach and reproduce: each a script, ``python experiments/<file>.py [--quick] ...``.

Every experiment is one file that reads top to bottom: its settings, the model, the data, the
``bp.train.fit`` / ``fit_many`` call, its results (``results.json``, a CSV table, ``<name>.png``) and
``main()`` under ``if __name__ == "__main__"``. Beside bpjax it imports only its folder's helpers:
:mod:`results` (the command line and what a run writes) and :mod:`data` or :mod:`text` (the data
sets), as sibling modules: a script's own folder is on Python's path, so a copied experiment runs with
those files beside it.

``python -m experiments <name> [flags]`` runs one by the name below (``list`` shows them); the name is
also its file, except ``mnist1d`` (:data:`FILES`). To add an experiment, write the file and its line here.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

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
# A script's folder comes first on Python's path: a file mnist1d.py would hide the mnist1d package.
FILES = {name: HERE / f"{name}.py" for name in EXPERIMENTS} | {"mnist1d": HERE / "mnist1d_table.py"}
