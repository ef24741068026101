"""Shared code for the experiments: the run configuration, results, tables, plots, progress and gradient checks.

Every experiment trains with the library's trainer (:func:`bpjax.train.fit`, or
:func:`bpjax.train.fit_many` for seeds and sweeps) and writes to its results folder (default
``results/<name>/``):

- ``results.json``: the experiment's name, its configuration, the versions of everything it ran
  on, and its metrics (the numbers the README quotes);
- at least one CSV table and one PNG picture, the main one named ``<name>.png`` (matplotlib with
  the Agg backend, imported only when a picture is drawn, so ``import experiments`` stays light).
"""

from __future__ import annotations

import csv
import json
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import bpjax as bp


@dataclass(frozen=True)
class Config:
    """What the command line chose for one experiment run.

    Attributes:
      name: the experiment's name (its module under ``experiments``).
      quick: a few-seconds version (fewer steps, smaller sweeps) for the tests.
      backward: ``"manual"`` (bpjax's hand-written backward) or ``"autodiff"`` (``jax.grad``).
      seeds: number of independent runs (initialisations), trained side by side by ``fit_many``.
      out: the results folder.
      verbose: print tables and gradient checks.
      extra: other command-line choices; ``extra["progress"]`` (default True) shows progress bars.
    """

    name: str
    quick: bool = False
    backward: str = "manual"
    seeds: int = 1
    out: Path = Path("results")
    verbose: bool = True
    extra: dict = field(default_factory=dict)

    @property
    def progress(self) -> bool:
        """Show progress bars (fit's ``verbose``, :func:`progress` for other loops)."""
        return bool(self.extra.get("progress", True))

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


def record_seconds(cfg: Config, seconds: float) -> None:
    """Add the run's wall time (``seconds``, compilation included) to its ``results.json``."""
    path = cfg.out / "results.json"
    record = json.loads(path.read_text())
    record["seconds"] = round(seconds, 1)
    path.write_text(json.dumps(record, indent=2) + "\n")


PUBLISHED_LIMIT = 50_000  # bytes: a docs/results file above this loses its long curves


def _size(x) -> int:
    return sum(_size(v) for v in x) if isinstance(x, list) else 1


def _without_long_lists(x, limit: int):
    """``x`` with every list of more than ``limit`` numbers replaced by a note of its length."""
    if isinstance(x, dict):
        return {k: _without_long_lists(v, limit) for k, v in x.items()}
    if isinstance(x, list):
        if _size(x) > limit:
            return f"omitted from the committed copy: {_size(x)} values (see the run's own results.json)"
        return [_without_long_lists(v, limit) for v in x]
    return x


def publish(cfg: Config, docs: Path) -> List[Path]:
    """Copy ``results.json`` to ``docs/results/<name>.json`` (long curves dropped above 50 kB) and the figure
    ``<name>.png`` to ``docs/figures/``; return the paths written."""
    record = json.loads((cfg.out / "results.json").read_text())
    text = json.dumps(record, indent=2) + "\n"
    for limit in (1000, 300, 100, 30):
        if len(text) <= PUBLISHED_LIMIT:
            break
        text = json.dumps(_without_long_lists(record, limit), indent=2) + "\n"
    written = [docs / "results" / f"{cfg.name}.json", docs / "figures" / f"{cfg.name}.png"]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
    written[0].write_text(text)
    shutil.copyfile(cfg.out / f"{cfg.name}.png", written[1])
    return written


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


# ----------------------------------------------------------------------------- progress and checks

def progress(items, cfg: Config, desc: str):
    """A tqdm bar over ``items`` for the loops that are not training runs (fit shows its own bar)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not cfg.progress, leave=False)


def model0(tree):
    """Model 0 of a :func:`bpjax.train.fit_many` pytree (every leaf has a leading model axis ``N``)."""
    return jax.tree.map(lambda a: a[0], tree)


def float64_check(model: bp.Layer, loss, params, x, y, *, state=None, key=None) -> "bp.GradientReport":
    """:func:`bpjax.check_gradients` at ``(params, x)`` cast to float64 (labels ``y`` and integer ``x`` as they are).

    Float64, because late in training the loss nears zero: ``dz = softmax(z) - y`` then cancels to
    a few float32 ulps of 1, and float32 gradients computed in two orders can differ by far more
    than any fixed relative tolerance while both are right. In float64 both are exact to ~1e-16 and
    check_gradients' default ``rtol=1e-10`` separates a wrong backward from roundoff.
    """
    with jax.enable_x64(True):
        params, state = optax.tree_utils.tree_cast((params, state), jnp.float64)
        x = jnp.asarray(x)
        x = x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x  # token ids stay integer
        return bp.check_gradients(model, loss, params, x, jnp.asarray(y), state=state, key=key)


class GradientChecks:
    """A :func:`bpjax.train.fit_many` ``callback``: manual vs ``jax.grad`` on model 0, in float64.

    Every ``every`` steps (and after the last step), model 0's params are checked with
    :func:`float64_check` on the batch of the step just taken; with ``shuffle=False`` step ``s``
    trains on rows ``b*B .. b*B+B-1``, ``b = s mod (N // B)``. ``records`` collects
    ``(steps_done, max relative error)``.
    """

    def __init__(self, model: bp.Layer, loss, train_data, *, batch_size: int, steps: int, every: int,
                 log=print):
        self.model, self.loss, self.batch_size, self.steps, self.every, self.log = \
            model, loss, batch_size, steps, every, log
        self.x, self.y = (np.asarray(a) for a in train_data)
        self.records: List[tuple] = []

    def __call__(self, done: int, result: "bp.train.FitResult") -> None:
        if done % self.every and done != self.steps:
            return
        B = self.batch_size
        b = (done - 1) % (len(self.x) // B)
        xb, yb = self.x[b * B:(b + 1) * B], self.y[b * B:(b + 1) * B]
        contextual = bp.is_contextual(self.model)
        report = float64_check(self.model, self.loss, model0(result.params), xb, yb,
                               state=model0(result.state) if contextual else None,
                               key=jax.random.key(done) if contextual else None)
        self.records.append((done, report.max_rel_error))
        self.log(f"step {done:5d}: manual vs jax.grad (float64) max rel error {report.max_rel_error:.2e} "
                 f"({'OK' if report.ok else 'MISMATCH'}, rtol {report.rtol:g})")

    @property
    def max_rel_error(self) -> float:
        return max(e for _, e in self.records)


def evaluate_many(model: bp.Layer, x, y, loss=bp.losses.softmax_cross_entropy):
    """``fn(params, state) -> (accuracy (N,), loss (N,))`` of ``N`` stacked models on ``(x, y)``, eval mode, jitted.

    For what fit's one ``eval_data`` does not measure (the training set, a subset, a second test set).
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    contextual = bp.is_contextual(model)

    def one(p, s):
        pred = bp.predict(model, p, x, state=s if contextual else None)
        return bp.losses.accuracy(pred, y), loss.value(pred, y)

    jitted = jax.jit(jax.vmap(one))
    return lambda params, state: tuple(np.asarray(a) for a in jitted(params, state))


def mean_std(a) -> tuple:
    """``(mean, std)`` of a 1-D array as floats (std 0 for one value)."""
    a = np.asarray(a, np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
