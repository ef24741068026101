"""The run of tests/test_determinism.py, as a module its tests import and as a script another process runs.

``python tests/determinism_worker.py OUT.npz`` trains 6 steps, saves the carry and the losses to ``OUT.npz``
and prints ``{"sha256": <the file's SHA-256>, "losses": [...]}`` as one JSON line.
"""

import functools
import hashlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp
from bpjax import checkpoint

L = bp.layers


@functools.lru_cache(maxsize=None)
def model_and_step():
    """A contextual model (BatchNorm statistics + Dropout keys) and its Adam step, compiled once per process."""
    model = bp.serial(L.Dense(16), L.BatchNorm(), L.Relu(), L.Dropout(0.2), L.Dense(3))
    optimizer = optax.adam(1e-2)
    return model, optimizer, bp.train.make_step(model, bp.losses.softmax_cross_entropy, optimizer)


def setup(seed):
    """The step, initial params, optimiser state and layer state from ``seed``, and a fixed data set."""
    model, optimizer, step = model_and_step()
    kp, ks, kx = jax.random.split(jax.random.key(seed), 3)
    params = model.init(kp, (6,))[1]
    state = bp.init_state(model, ks, (6,))
    x = jax.random.normal(kx, (64, 6))
    y = jnp.argmax(x[:, :3], -1)
    return step, params, optimizer.init(params), state, x, y


def train(seed, steps, carry=None, start=0):
    """``steps`` steps from ``carry`` (or a fresh init); batches of 16 in order; dropout key per step."""
    step, params, opt_state, state, x, y = setup(seed)
    if carry is not None:
        params, opt_state, state = carry
    losses = []
    for s in range(start, start + steps):
        i = (s * 16) % 64
        key = jax.random.fold_in(jax.random.key(seed + 100), s)
        params, opt_state, state, loss = step(params, opt_state, x[i:i + 16], y[i:i + 16], state=state, key=key)
        losses.append(loss)
    return (params, opt_state, state), np.asarray(losses)


def main(out: str) -> None:
    carry, losses = train(0, 6)
    path = checkpoint.save(out, {"params": carry[0], "opt_state": carry[1], "state": carry[2], "losses": losses})
    with open(path, "rb") as f:
        print(json.dumps({"sha256": hashlib.sha256(f.read()).hexdigest(), "losses": losses.tolist()}))


if __name__ == "__main__":
    main(sys.argv[1])
