"""``python -m experiments [name] [--quick] [--backward manual|autodiff] [--seeds N] [--out DIR] [--force]
[--publish]``.

Runs the experiment ``name`` (default ``mnist1d_mlp``, the main job) exactly as its script would run
(``python experiments/<name>.py ...``): the flags are the script's own (``python -m experiments <name>
--help``). ``python -m experiments list`` lists them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from experiments import DEFAULT, EXPERIMENTS, FILES, HERE


def main(argv=None) -> int:
    """Run ``python -m experiments ARGV`` in this process; 0 when the experiment finished (argparse exits 2 on a
    bad command line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(
        prog="python -m experiments", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Experiments that teach and reproduce backpropagation with bpjax; each also runs as "
                    "python experiments/<name>.py. `python -m experiments NAME --help` shows its flags.",
        epilog="experiments:\n" + "\n".join(f"  {n:<20} {d}" for n, d in EXPERIMENTS.items()))
    p.add_argument("name", nargs="?", default=DEFAULT, choices=[*EXPERIMENTS, "list"], metavar="name",
                   help=f"the experiment to run, or 'list' (default {DEFAULT})")
    name_given = bool(argv) and not argv[0].startswith("-")
    if not name_given and argv[:1] in (["-h"], ["--help"]):
        p.print_help()
        return 0
    name = p.parse_args(argv[:1] if name_given else []).name
    if name == "list":
        for n, doc in EXPERIMENTS.items():
            print(f"{n:<20} {doc}")
        return 0
    if str(HERE) not in sys.path:  # as `python experiments/<file>.py` has it: the scripts import their helpers
        sys.path.insert(0, str(HERE))
    importlib.import_module(FILES[name].stem).main(argv[1:] if name_given else argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
