"""Shared code for the experiments: the run configuration, a compiled training loop, results and plots.

Every experiment writes to its results folder (default ``results/<name>/``):

- ``results.json``: the experiment's name, its configuration, the versions of everything it ran
  on, and its metrics (the numbers the README quotes);
- optional CSV tables and PNG pictures (matplotlib with the Agg backend, imported only when a
  picture is drawn, so ``import bpjax`` and ``import experiments`` stay light).
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import bpjax as bp


@dataclass(frozen=True)
class Config:
    """What the command line chose for one experiment run.

    Attributes:
      name: the experiment's name (its module under ``experiments``).
      quick: a few-seconds version (fewer steps, smaller sweeps) for the tests.
      backward: ``"manual"`` (bpjax's hand-written backward) or ``"autodiff"`` (``jax.grad``).
      seeds: number of independent runs (initialisations), trained side by side with ``vmap``.
      out: the results folder.
      verbose: print progress and tables.
    """

    name: str
    quick: bool = False
    backward: str = "manual"
    seeds: int = 1
    out: Path = Path("results")
    verbose: bool = True
    extra: dict = field(default_factory=dict)

    def log(self, *args) -> None:
        if self.verbose:
            print(*args, flush=True)


# ----------------------------------------------------------------------------- versions and results

def versions() -> dict:
    """Versions of Python, the libraries and the device the results were measured with."""
    out = {"python": platform.python_version(), "platform": platform.platform(), "bpjax": bp.__version__}
    for pkg in ("jax", "jaxlib", "optax", "numpy", "mnist1d", "scikit-learn", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    dev = jax.devices()[0]
    out["device"] = f"{dev.platform}: {getattr(dev, 'device_kind', '')}"
    try:
        out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)  # JSON has no NaN/Inf
    return x


def write_results(cfg: Config, config: dict, metrics: dict) -> Path:
    """Write ``results.json`` (name, command line, configuration, versions, metrics); return its path."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    record = {"experiment": cfg.name, "command": " ".join(["python -m experiments", *sys.argv[1:]]),
              "run": {k: v for k, v in asdict(cfg).items() if k not in ("verbose", "extra")},
              "config": config, "versions": versions(), "metrics": metrics,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = cfg.out / "results.json"
    path.write_text(json.dumps(_jsonable(record), indent=2) + "\n")
    return path


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    """Write a CSV table (numbers as they are) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow([_jsonable(v) for v in row])
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A markdown table (floats to 4 significant digits) for the console and the README."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_panels(path: Path, panels: List[dict], title: Optional[str] = None) -> Path:
    """Draw side-by-side line plots into a PNG.

    Each panel is a dict: ``lines`` (``{label: (x, y)}`` or ``{label: (x, y, style_dict)}``), and
    optional ``title``, ``xlabel``, ``ylabel``, ``logx``, ``logy``, ``ylim``, ``hlines``
    (``{label: y}``) and ``points`` (``{label: (x, y)}``, drawn as markers).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, p in zip(axes[0], panels):
        for label, line in p.get("lines", {}).items():
            style = line[2] if len(line) > 2 else {}
            ax.plot(np.asarray(line[0]), np.asarray(line[1]), label=label, **style)
        for label, (x, y) in p.get("points", {}).items():
            ax.plot(np.asarray(x), np.asarray(y), "o", ms=4, label=label)
        for label, y in p.get("hlines", {}).items():
            ax.axhline(y, ls="--", c="gray", lw=1, label=label)
        ax.set(title=p.get("title", ""), xlabel=p.get("xlabel", ""), ylabel=p.get("ylabel", ""))
        if p.get("logx"):
            ax.set_xscale("log")
        if p.get("logy"):
            ax.set_yscale("log")
        if "ylim" in p:
            ax.set_ylim(*p["ylim"])
        ax.grid(alpha=0.3)
        if p.get("lines") or p.get("points") or p.get("hlines"):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- training

def init_runs(model: bp.Layer, keys: jax.Array, input_shape) -> tuple:
    """Initialise one model per key, stacked on a leading run axis: ``(params, state)``."""
    input_shape = tuple(input_shape)
    params = jax.vmap(lambda k: model.init(k, input_shape)[1])(keys)
    state = jax.vmap(lambda k: bp.init_state(model, k, input_shape))(keys)
    return params, state


@dataclass
class History:
    """What :func:`train` measured; arrays carry a run axis ``S`` (seeds or swept settings).

    Attributes:
      loss: ``(steps, S)`` training loss of every step (on that step's batch).
      eval_steps: ``(E,)`` the steps after which the model was evaluated.
      test_acc, test_loss, train_acc: ``(E, S)``.
      grad_checks: ``[(step, max relative error)]``, manual vs ``jax.grad`` on run 0.
      params, state: the final (stacked) parameters and state.
      seconds: wall time of training (compilation included).
    """

    loss: np.ndarray
    eval_steps: np.ndarray
    test_acc: np.ndarray
    test_loss: np.ndarray
    train_acc: np.ndarray
    grad_checks: List[tuple]
    params: object
    state: object
    seconds: float

    @property
    def final_test_acc(self) -> np.ndarray:
        return self.test_acc[-1]


def to_float64(tree):
    """Cast the floating leaves of ``tree`` to float64 (call inside ``jax.enable_x64(True)``)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(jnp.result_type(a), jnp.floating)
                        else a, tree)


def check_run0(model: bp.Layer, loss, runs, batch, key) -> "bp.GradientReport":
    """:func:`bpjax.check_gradients` of run 0 of stacked ``(params, state)`` on ``batch = (x, y)``, in float64.

    Float64, because late in training the loss nears zero: ``dz = softmax(z) - y`` then cancels to
    a few float32 ulps of 1, and float32 gradients computed in two orders can differ by far more
    than any fixed relative tolerance while both are right. In float64 both are exact to ~1e-16 and
    the default ``rtol=1e-10`` separates a wrong backward from roundoff.
    """
    p0, s0 = jax.tree.map(lambda a: a[0], runs)
    with jax.enable_x64(True):
        p0, s0, (xb, yb) = to_float64((p0, s0, batch))
        ctx = {"state": s0, "key": key} if bp.is_contextual(model) else {}
        return bp.check_gradients(model, loss, p0, xb, yb, **ctx)


def train(model: bp.Layer, loss, optimizer, data: Dict[str, np.ndarray], params, opt_state, *, state=(),
          steps: int, batch: int = 100, backward: str = "manual", eval_every: int = 500,
          check_every: int = 0, key: Optional[jax.Array] = None, desc: str = "train",
          progress: bool = True, verbose: bool = True) -> History:
    """Train ``S`` runs side by side (``vmap``), ``eval_every`` steps per compiled ``lax.scan``.

    Batches are taken in order, the MNIST-1D recipe: step ``t`` uses rows
    ``(t * batch + i) % N`` for ``i < batch``. Every run sees the same batches; runs differ in
    their initial ``params`` (seeds) or in their ``opt_state`` (e.g. a learning rate injected with
    ``optax.inject_hyperparams``).

    Args:
      model, loss, optimizer: what to train and how (an optax transformation).
      data: ``x, y, x_test, y_test`` arrays.
      params, opt_state, state: stacked on a leading run axis ``S``.
      steps, batch: number of steps and batch size.
      backward: ``"manual"`` or ``"autodiff"`` (see :func:`bpjax.train.make_step`).
      eval_every: steps per compiled chunk; test accuracy and loss are measured after each chunk.
      check_every: every this many steps (a multiple of ``eval_every``; 0 = never) compare run 0's
        manual gradients with ``jax.grad`` on the current batch (:func:`bpjax.check_gradients`).
      key: PRNG key for stochastic layers (dropout); split per step and per run.
      desc, progress, verbose: progress bar label, whether to show it, print gradient checks.
    """
    loss_fn = bp.losses.as_loss(loss)
    contextual = bp.is_contextual(model)
    step = bp.train.make_step(model, loss_fn, optimizer, backward=backward, checks=False, jit=False)
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])
    n = x.shape[0]
    key = jax.random.key(0) if key is None else key
    n_runs = jax.tree.leaves(params)[0].shape[0]

    def one(p, o, s, xb, yb, k):
        if contextual:
            return step(p, o, xb, yb, state=s, key=k)
        p, o, v = step(p, o, xb, yb)
        return p, o, v, s

    many = jax.vmap(one, in_axes=(0, 0, 0, None, None, 0))

    def batch_at(t):
        idx = (t * batch + jnp.arange(batch)) % n
        return x[idx], y[idx]

    def body(carry, t):
        p, o, s = carry
        xb, yb = batch_at(t)
        keys = jax.random.split(jax.random.fold_in(key, t), n_runs)
        p, o, v, s = many(p, o, s, xb, yb, keys)
        return (p, o, s), v

    @jax.jit
    def chunk(p, o, s, t0, ts):
        return jax.lax.scan(body, (p, o, s), t0 + ts)

    @jax.jit
    def evaluate(p, s):
        def ev(p, s):
            kw = {"state": s} if contextual else {}
            logits = bp.predict(model, p, x_test, **kw)
            train_logits = bp.predict(model, p, x, **kw)
            return (bp.losses.accuracy(logits, y_test), loss_fn.value(logits, y_test),
                    bp.losses.accuracy(train_logits, y))
        return jax.vmap(ev)(p, s)

    from tqdm.auto import tqdm

    losses, evals, eval_steps, checks = [], [], [], []
    t, start = 0, time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="step")
    while t < steps:
        m = min(eval_every, steps - t)
        (params, opt_state, state), v = chunk(params, opt_state, state, t, jnp.arange(m))
        t += m
        losses.append(np.asarray(v))
        evals.append([np.asarray(a) for a in evaluate(params, state)])
        eval_steps.append(t)
        bar.update(m)
        bar.set_postfix(loss=f"{float(np.mean(v[-1])):.3f}", test_acc=f"{float(np.mean(evals[-1][0])):.3f}")
        if check_every and (t % check_every == 0 or t == steps):
            report = check_run0(model, loss_fn, (params, state), batch_at(t - 1), jax.random.key(t))
            checks.append((t, report.max_rel_error))
            if verbose:
                bar.write(f"step {t:5d}: manual vs jax.grad (float64) max rel error {report.max_rel_error:.2e} "
                          f"({'OK' if report.ok else 'MISMATCH'}, rtol {report.rtol:g})")
    bar.close()
    seconds = time.perf_counter() - start
    ev = [np.stack(e) for e in zip(*evals)]
    return History(np.concatenate(losses), np.asarray(eval_steps), ev[0], ev[1], ev[2], checks,
                   params, state, seconds)


def mean_std(a) -> tuple:
    """``(mean, std)`` of a 1-D array as floats (std 0 for one value)."""
    a = np.asarray(a, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
