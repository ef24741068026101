"""A run's fingerprint: what a checkpoint records about the run that wrote it, and what resuming compares.

A run resumed from a checkpoint must be the run that wrote it, or a change the user asked for:
``fit`` records, in every checkpoint's metadata, a JSON dict of what it can know

- ``model``: the model's name (``serial(Dense(32), Tanh, Dense(3))``: the layers and their settings)
  and ``params``: each leaf's path, dtype and shape;
- ``loss``: its name;
- ``optimizer``: the structure of its state and ``probe``, the mean update it makes to each leaf from
  ``init(params)`` given the gradient ``0.1`` everywhere (so ``adam(1e-2)`` and ``adam(1e-3)``
  differ: about ``-1e-2`` and ``-1e-3``), 6 significant digits;
- ``batch_size`` and ``shuffle``;
- ``data``: the training set's shapes, dtypes and a SHA-256 of its bytes (of every row up to
  ``HASH_BYTES``, of evenly spaced rows beyond; ``None`` for streamed batches, whose first batch on
  resume is another one, and for arrays spread over other processes).

:func:`differences` lists what differs between a checkpoint's fingerprint and the run's, one line
each, and ``fit(..., accept_changes=(...))`` names the fields a user changes on purpose.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bpjax import errors

FIELDS = ("model", "loss", "optimizer", "batch_size", "shuffle", "data")
HASH_BYTES = 1 << 28  # 256 MB: datasets up to this size are hashed whole
PROBE_GRADIENT = 0.1


def leaf_records(tree) -> List[list]:
    """``[[path, dtype, shape], ...]`` for every leaf of ``tree``."""
    return [[jax.tree_util.keystr(p), str(jnp.result_type(a)), list(np.shape(a))]
            for p, a in jax.tree_util.tree_leaves_with_path(tree)]


def _round(values) -> list:
    return [float(f"{v:.6g}") for v in np.asarray(values, np.float64).ravel()]


def optimizer_probe(make_optimizer, params, hparams, batched: int) -> Dict[str, Any]:
    """The optimizer's record: its state's structure and its mean update of each leaf on a probe gradient.

    With ``batched`` models (``fit_many``) the probe runs for each model's hyperparameters and its
    list holds model 0's updates, then model 1's, ...
    """
    def probe(p, hp):
        opt = make_optimizer(hp)
        grads = jax.tree.map(lambda a: jnp.full_like(a, PROBE_GRADIENT), p)
        updates, _ = opt.update(grads, opt.init(p), p)
        return jnp.stack([jnp.mean(u.astype(jnp.float32)) for u in jax.tree.leaves(updates)] or [jnp.zeros(())])

    fn = jax.vmap(probe) if batched else probe
    structure = jax.eval_shape(lambda p, hp: make_optimizer(hp).init(p),
                               jax.tree.map(lambda a: a[0], params) if batched else params,
                               jax.tree.map(lambda a: a[0], hparams) if batched and hparams is not None else hparams)
    return {"state": str(jax.tree.structure(structure)), "probe": _round(jax.jit(fn)(params, hparams))}


def data_record(x, y, streamed: bool) -> Dict[str, Any]:
    """The training set's shapes, dtypes and content hash (see the module's docstring)."""
    record: Dict[str, Any] = {"x": leaf_records(x), "y": leaf_records(y), "sha256": None}
    if streamed:
        record["x"] = [[p, d, s[1:]] for p, d, s in record["x"]]  # one batch's rows, not the data's
        record["y"] = [[p, d, s[1:]] for p, d, s in record["y"]]
        return record
    leaves = jax.tree.leaves((x, y))
    if any(isinstance(a, jax.Array) and not a.is_fully_addressable for a in leaves):
        return record
    h = hashlib.sha256()
    for a in leaves:
        rows = int(np.shape(a)[0])
        nbytes = int(np.prod(np.shape(a))) * jnp.dtype(jnp.result_type(a)).itemsize
        every = max(1, -(-nbytes // HASH_BYTES))  # every row, or every k-th row of a large set
        h.update(np.ascontiguousarray(np.asarray(a[::every] if every > 1 else a)).tobytes())
        h.update(f"{rows}:{every}".encode())
    record["sha256"] = h.hexdigest()
    return record


def fingerprint(*, model, loss, params, optimizer: Dict[str, Any], batch_size: int, shuffle: bool,
                data: Dict[str, Any], batched: int) -> Dict[str, Any]:
    """The run's fingerprint (a JSON dict; ``params`` of one model when ``batched``)."""
    one = jax.tree.map(lambda a: a[0], params) if batched else params
    return {"model": model.name, "params": leaf_records(one), "models": int(batched) or None, "loss": loss.name,
            "optimizer": optimizer, "batch_size": int(batch_size), "shuffle": bool(shuffle), "data": data}


def _describe_probe(saved: list, now: list) -> str:
    i = next((i for i, (a, b) in enumerate(zip(saved, now)) if a != b), 0)
    return (f"the checkpoint's optimizer moves a leaf by {saved[i]:.4g} on the probe gradient {PROBE_GRADIENT}, "
            f"this one by {now[i]:.4g} (another learning rate, schedule or optimizer?)")


def differences(saved: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, str]:
    """``{field: what differs}`` between a checkpoint's fingerprint and the run's (``{}``: the same run)."""
    out: Dict[str, str] = {}
    if saved.get("model") != now["model"]:
        out["model"] = f"{saved.get('model')} in the checkpoint, {now['model']} now"
    if saved.get("params") != now["params"] or saved.get("models") != now["models"]:
        a = {p: (d, s) for p, d, s in saved.get("params") or []}
        b = {p: (d, s) for p, d, s in now["params"]}
        diff = [f"{p}: {a.get(p)} in the checkpoint, {b.get(p)} now" for p in {**a, **b} if a.get(p) != b.get(p)]
        if saved.get("models") != now["models"]:
            diff.insert(0, f"models {saved.get('models')} in the checkpoint, {now['models']} now")
        out["params"] = "; ".join(diff[:4]) + (" ..." if len(diff) > 4 else "")
    if saved.get("loss") != now["loss"]:
        out["loss"] = f"{saved.get('loss')} in the checkpoint, {now['loss']} now"
    so, no = saved.get("optimizer") or {}, now["optimizer"]
    if so.get("state") != no["state"]:
        out["optimizer"] = "its state has another structure (another optimizer or chain)"
    elif so.get("probe") != no["probe"]:
        out["optimizer"] = _describe_probe(so.get("probe") or [], no["probe"])
    for field in ("batch_size", "shuffle"):
        if saved.get(field) != now[field]:
            out[field] = f"{saved.get(field)} in the checkpoint, {now[field]} now"
    sd, nd = saved.get("data") or {}, now["data"]
    if (sd.get("x"), sd.get("y")) != (nd["x"], nd["y"]):
        out["data"] = f"x {sd.get('x')}, y {sd.get('y')} in the checkpoint; x {nd['x']}, y {nd['y']} now"
    elif sd.get("sha256") and nd["sha256"] and sd["sha256"] != nd["sha256"]:
        out["data"] = f"another training set of the same shapes (content sha256 {sd['sha256'][:12]}... in the " \
                      f"checkpoint, {nd['sha256'][:12]}... now)"
    return out


def check_accept(where: str, accept: Sequence[str]) -> tuple:
    """``accept_changes`` as a tuple of names from :data:`FIELDS`, else a clear error."""
    if isinstance(accept, str):
        accept = (accept,)
    accept = tuple(accept)
    bad = [a for a in accept if a not in FIELDS]
    if bad:
        raise errors.BpjaxError(where, f"accept_changes: expected names from {FIELDS}, got {bad}")
    return accept


def refuse(where: str, path: str, step: int, diffs: Dict[str, str], accepted: Sequence[str]) -> None:
    """Raise unless every difference is accepted; params of other shapes can never be."""
    left = {k: v for k, v in diffs.items() if k not in accepted}
    if not left:
        return
    lines = "\n".join(f"  - {k}: {v}" for k, v in left.items())
    can = [k for k in left if k != "params"]
    fix = (f"To continue this run with these changes on purpose, pass accept_changes={tuple(can)!r}; to start "
           f"a new run, use another checkpoint_path." if can else "")
    if "params" in left:
        fix += (" The params have other shapes: this checkpoint cannot be resumed by this model; use another "
                "checkpoint_path.")
    raise errors.BpjaxError(where, f"the checkpoint in {path!r} (step {step}) was written by another run:\n"
                                   f"{lines}\n{fix.strip()}")
