"""What every experiment shares: its command line and what a run writes to its results folder.

An experiment's ``main(argv)`` calls :func:`command_line` first (the flags below; the results folder
is made then, and refused if it holds a ``results.json`` already), writes its tables
(:func:`write_csv`) and its figure (:func:`figure`, :func:`save_figure`), and calls :func:`save`
last: ``results.json`` holds the experiment's name, the command, its configuration, the versions of
everything it ran on, its metrics and its wall time. ``--publish`` then copies ``results.json`` to
``docs/results/<name>.json`` and the figure ``<name>.png`` to ``docs/figures/``, where the numbers and
pictures of the README, the guides and the gallery come from.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import List, Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

import bpjax as bp

DOCS = Path(__file__).resolve().parent.parent / "docs"
PUBLISHED_LIMIT = 50_000  # bytes: a docs/results file above this loses its long curves


def positive_int(text: str) -> int:
    """``--seeds``: an integer of at least 1 (an argparse error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (at least 1), got {value}")
    return value


def command_line(name: str, doc: str, argv=None, *, seeds: int = 1) -> argparse.Namespace:
    """Parse the flags every experiment takes and make its results folder.

    Args:
      name: the experiment's name (``python -m experiments <name>``; results in ``results/<name>/``).
      doc: its module docstring (the first line is the ``--help`` description).
      argv: the arguments (default ``sys.argv[1:]``).
      seeds: the number of seeds without ``--seeds``.

    Returns:
      The namespace: ``quick``, ``backward``, ``seeds``, ``out``, ``progress``, ``force``, ``publish``, and
      ``name``, ``command`` (the command line that reproduces the run) and ``started``
      (``time.perf_counter()`` now) for :func:`save`.
    """
    p = argparse.ArgumentParser(prog=f"python -m experiments {name}", description=doc.strip().split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few-seconds version (what the tests run)")
    p.add_argument("--backward", choices=["manual", "autodiff"], default="manual",
                   help="hand-written backward (default) or jax.grad, the reference")
    p.add_argument("--seeds", type=positive_int, default=seeds,
                   help=f"independent runs, trained side by side with vmap (default {seeds})")
    p.add_argument("--out", type=Path, default=Path("results") / name, help=f"results folder (default results/{name}/)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    p.add_argument("--force", action="store_true", help="overwrite the results folder's existing results.json")
    p.add_argument("--publish", action="store_true",
                   help=f"after a full run, copy results.json to docs/results/{name}.json, {name}.png to docs/figures/")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.publish and args.quick:
        p.error("--publish copies a full run to docs/: run without --quick")
    if (args.out / "results.json").exists() and not args.force:
        p.error(f"{args.out / 'results.json'} exists already: pass --force to overwrite it, or --out another folder")
    if args.out.exists() and not args.out.is_dir():
        p.error(f"argument --out: expected a folder for the results, got the file {args.out}: pass --out a folder")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a folder inside a file, or one this user may not write
        p.error(f"argument --out: cannot make the results folder {args.out}: {e.strerror or e}")
    args.name, args.started = name, time.perf_counter()
    args.command = " ".join(["python -m experiments", name, *argv])
    return args


def versions() -> dict:
    """Versions of Python, the libraries, the device and the git commit the results were measured with."""
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


def jsonable(x):
    """``x`` with arrays as lists, paths as strings and NaN/Inf as strings (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.ndarray, jax.Array)):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return str(x)
    return x


def write_csv(path: Path, header: Sequence[str], rows) -> Path:
    """Write a CSV table (numbers as they are) and return its path."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([jsonable(v) for v in row] for row in rows)
    return path


def markdown(header: Sequence[str], rows) -> str:
    """A markdown table (floats to 4 significant digits) for the console."""
    fmt = lambda v: f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows])


def figure(panels: int):
    """``(fig, axes)``: a row of ``panels`` gridded axes, 5.2 x 4 inches each (no pyplot: nothing global)."""
    fig = Figure(figsize=(5.2 * panels, 4.0))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig, axes


def save_figure(args: argparse.Namespace, fig: Figure) -> Path:
    """Save ``fig`` as the run's picture ``<out>/<name>.png``."""
    fig.tight_layout()
    path = args.out / f"{args.name}.png"
    fig.savefig(path, dpi=110)
    return path


def save(args: argparse.Namespace, config: dict, metrics: dict) -> Path:
    """Write ``results.json`` (the run's last step: its time counts everything before), and publish with
    ``--publish``. Returns its path."""
    seconds = time.perf_counter() - args.started
    record = {"experiment": args.name, "command": args.command,
              "run": {"name": args.name, "quick": args.quick, "backward": args.backward, "seeds": args.seeds,
                      "out": args.out},
              "config": config, "versions": versions(), "metrics": metrics,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(seconds, 1)}
    path = args.out / "results.json"
    path.write_text(json.dumps(jsonable(record), indent=2) + "\n")
    print(f"[{args.name}] done in {seconds:.1f} s; results in {args.out}/")
    if args.publish:
        for written in publish(args.out, args.name, DOCS):
            print(f"[{args.name}] published {written}")
    return path


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


def publish(out: Path, name: str, docs: Path) -> List[Path]:
    """Copy ``out/results.json`` to ``docs/results/<name>.json`` (long curves dropped above 50 kB) and the figure
    ``out/<name>.png`` to ``docs/figures/``; return the paths written."""
    record = json.loads((out / "results.json").read_text())
    text = json.dumps(record, indent=2) + "\n"
    for limit in (1000, 300, 100, 30):
        if len(text) <= PUBLISHED_LIMIT:
            break
        text = json.dumps(_without_long_lists(record, limit), indent=2) + "\n"
    written = [docs / "results" / f"{name}.json", docs / "figures" / f"{name}.png"]
    for path in written:
        path.parent.mkdir(parents=True, exist_ok=True)
    written[0].write_text(text)
    shutil.copyfile(out / f"{name}.png", written[1])
    return written
