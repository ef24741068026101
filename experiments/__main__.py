"""Command line: ``python -m experiments <name> [--quick] [--backward manual|autodiff] [--seeds N] [--out DIR] [--force]
[--publish]``.

A results folder that already holds a ``results.json`` is refused before anything runs (``--force``
overwrites it). ``--publish`` copies a full run's ``results.json`` to ``docs/results/<name>.json`` and
its figure ``<name>.png`` to ``docs/figures/``, where the README's numbers and pictures come from.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import experiments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (at least 1), got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    names = experiments.available()
    p = argparse.ArgumentParser(
        prog="python -m experiments",
        description="Experiments that teach and reproduce backpropagation with bpjax. "
                    "`python -m experiments list` shows them all.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="experiments:\n" + "\n".join(f"  {n:<20} {d}" for n, d in names.items()))
    p.add_argument("name", nargs="?", default=experiments.DEFAULT, choices=[*names, "list"],
                   metavar="name", help=f"the experiment to run, or 'list' (default {experiments.DEFAULT})")
    p.add_argument("--quick", action="store_true", help="a few-seconds version (what the tests run)")
    p.add_argument("--backward", choices=["manual", "autodiff"], default="manual",
                   help="hand-written backward (default) or jax.grad, the reference")
    p.add_argument("--seeds", type=_positive_int, default=None,
                   help="independent runs, trained side by side with vmap (default: per experiment)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default results/<name>/)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--force", action="store_true", help="overwrite the results folder's existing results.json")
    p.add_argument("--publish", action="store_true",
                   help="after a full run, copy results.json to docs/results/<name>.json, <name>.png to docs/figures/")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.name == "list":
        for name, doc in experiments.available().items():
            print(f"{name:<20} {doc}")
        return 0
    from experiments import common

    out = args.out if args.out is not None else Path("results") / args.name
    if (out / "results.json").exists() and not args.force:
        p.error(f"{out / 'results.json'} exists already: pass --force to overwrite it, or --out another folder")
    if args.publish and args.quick:
        p.error("--publish copies a full run to docs/: run without --quick")
    module = experiments.load(args.name)
    seeds = args.seeds if args.seeds is not None else getattr(module, "DEFAULT_SEEDS", 1)
    cfg = common.Config(name=args.name, quick=args.quick, backward=args.backward, seeds=seeds, out=out,
                        extra={"progress": not args.no_progress})
    start = time.perf_counter()
    module.run(cfg)
    seconds = time.perf_counter() - start
    common.record_seconds(cfg, seconds)
    print(f"[{args.name}] done in {seconds:.1f} s; results in {cfg.out}/")
    if args.publish:
        for path in common.publish(cfg, Path(__file__).resolve().parent.parent / "docs"):
            print(f"[{args.name}] published {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
