"""The gallery: one page per experiment, written at build time from the committed results; nothing trains.

For every experiment of ``experiments.EXPERIMENTS`` this writes ``docs/gallery/<name>.rst`` from
``docs/results/<name>.json`` (what ``python -m experiments <name> --publish`` commits after a full run) and
``docs/figures/<name>.png``: the figure, the headline numbers (:data:`HEADLINES`, read from the JSON), the
commands, what the experiment does (its script's docstring), its settings (the JSON's ``config``) and the
run's provenance, plus ``docs/gallery/index.rst``, a grid of the figures. An experiment without a
published result, or a result that lacks a headline number, is a build warning (an error under ``-W``).
"""

from __future__ import annotations

import ast
import json
import math
import textwrap
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent
RESULTS, FIGURES, GALLERY = DOCS / "results", DOCS / "figures", DOCS / "gallery"


def num(x, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits; very small or large numbers in scientific notation."""
    if isinstance(x, str) or x is None:
        return str(x)
    if isinstance(x, bool) or (isinstance(x, int) and abs(x) < 10 ** 7):
        return str(x)
    if x == 0 or not math.isfinite(x):
        return str(x)
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"
    return f"{x:.{digits - 1}e}"


def duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


def pct(fraction) -> str:
    return f"{100 * fraction:.1f}%"


# ---------------------------------------------------------------- headline numbers, per experiment
# Each takes the results' ``metrics`` and returns a table: (header, rows), every row as long as the header.


def _mnist1d_mlp(m):
    return ("", "value"), [
        ("test accuracy (6000 steps)", f"{m['test_accuracy_percent']:.1f}%"),
        ("the authors' notebook, 6000 steps", f"{m['published_test_accuracy_percent']['notebook_6000_steps']}%"),
        ("the paper", f"{m['published_test_accuracy_percent']['paper']}%"),
        ("worst relative error vs jax.grad (float64, every 500 steps)", num(m["grad_check_max_rel_error"], 2))]


def _chain_rule(m):
    s, t = m["scalar"], m["two_layer"]
    return ("", "by hand", "jax.grad"), [
        ("dL/dw of (w x - 10)^2 at w=2, x=3", num(s["dL_dw"]), num(s["jax_dL_dw"])),
        ("dL/dx", num(s["dL_dx"]), num(s["jax_dL_dx"])),
        ("2-layer net: worst relative error of dz, dW, db, da", num(t["max_rel_error"], 2), "reference")]


def _gradient_descent_1d(m):
    return ("learning rate", "x after 30 steps", "overshoots"), [
        (name, num(run["x_final"], 4), str(run["overshoots"])) for name, run in m["runs"].items()] + [
        ("the minimum 3π/2", num(m["x_star"], 4), "")]


def _learning_rate(m):
    return ("Adam learning rate", "test accuracy", "final training loss"), [
        (num(rate), f"{acc:.1f}%", num(loss))
        for rate, acc, loss in zip(m["rates"], m["test_acc_percent"], m["final_train_loss"])]


def _optimizers(m):
    return ("optimizer", "test accuracy", "training loss"), [
        (name, f"{o['test_acc_percent']:.1f}%", num(o["train_loss"])) for name, o in m["optimizers"].items()]


def _mnist1d(m):
    return ("model", "bpjax (3 seeds)", "paper", "authors' notebook, 6000 steps"), [
        (name, f"{r['test_acc_percent']:.1f} ± {r['test_acc_std']:.1f}%", f"{r['paper']:g}%",
         f"{r['notebook_6000_steps']:g}%") for name, r in m["models"].items()]


def _digits(m):
    return ("", "test accuracy"), [
        (f"Conv2D network ({len(m['test_accuracy_per_seed'])} seeds)",
         f"{pct(m['test_accuracy'])} ± {100 * m['test_accuracy_std']:.1f}"),
        ("scikit-learn SVC(gamma=0.001), computed here", pct(m["svc_test_accuracy"])),
        ("scikit-learn's example, published", pct(m["published_svc_accuracy"])),
        ("worst relative gradient error vs jax.grad (float64)", num(m["grad_check_max_rel_error"], 2))]


def _regression(m):
    return ("", "test MSE", "training MSE"), [
        ("gradient descent (Dense(1), Adam)", num(m["gd_test_mse"], 5), num(m["gd_train_mse"], 5)),
        ("least squares (numpy.linalg.lstsq)", num(m["least_squares_test_mse"], 5),
         num(m["least_squares_train_mse"], 5))]


def _regularization(m):
    return ("setting", "train accuracy", "test accuracy", "gap", "wrong labels memorised"), [
        (name, pct(s["train_acc"]), pct(s["test_acc"]), f"{s['acc_gap']:.2f}", pct(s["memorised"]))
        for name, s in m["settings"].items()]


def _forgetting(m):
    return ("phase 2 (digits 5-9)", "task A (0-4) accuracy", "task B (5-9) accuracy"), [
        ("after phase 1", pct(m["task_a_acc_after_phase1"]), pct(m["task_b_acc_after_phase1"]))] + [
        (name, pct(v["task_a_acc"]), pct(v["task_b_acc"])) for name, v in m["variants"].items()]


def _vanishing_gradients(m):
    n = m["nielsen"]
    rows = [("Nielsen's sigmoid net: shrink factor per layer", ", ".join(num(f, 2) for f in n["factors"]),
             "published: " + ", ".join(num(f, 2) for f in n["published_factors"]), "")]
    rows += [(name, num(c["first_over_last_hidden_init"], 2), num(c["max_norm_init"], 2), pct(c["test_accuracy"]))
             for name, c in m["configs"].items()]
    return ("20 layers of 32, at init", "first / last hidden-layer gradient", "largest gradient norm",
            "test accuracy"), rows


def _alignment(m):
    rules = [r for r in m["mnist1d"] if r != "ordering"]
    return ("rule", "MNIST-1D test error", "digits test error"), [
        (r, f"{100 - 100 * m['mnist1d'][r]['test_accuracy_mean']:.1f}%",
         f"{100 - 100 * m['digits'][r]['test_accuracy_mean']:.1f}%") for r in rules]


def _hessian(m):
    rows = [("at init: manual HVP vs jax.grad's, relative", num(m["init_rel_diff"], 2), "", "")]
    rows += [(f"SGD, {key.split('_')[1]}", num(r["lambda_max"][0], 3), num(r["max_lambda"], 3),
              num(r["lambda_max"][-1], 3)) for key, r in m.items() if key.startswith("lr_")]
    return ("", "λ_max at init", "largest λ_max", "λ_max at the end"), rows


def _gpt(m):
    return ("", "value"), [
        ("validation loss (nats per character)", num(m["val_loss"], 4)),
        ("count-based bigram, the floor", num(m["bigram_val_loss"], 4)),
        ("parameters", f"{m['parameters']:,}"),
        ("worst relative gradient error vs jax.grad (float64)", num(m["grad_check_max_rel_error"], 2))]


def _char_rnn(m):
    return ("model", "parameters", "validation loss, state carried", "on 64-character windows"), [
        (name.upper(), f"{r['parameters']:,}", num(r["val_loss_streamed"], 4), num(r["val_loss_windows"], 4))
        for name, r in m.items() if isinstance(r, dict) and "parameters" in r] + [
        ("bigram, the floor", "", "", num(m["lstm"]["bigram_val_loss"], 4))]


def _dp_sgd(m):
    rows = [("per-example gradients vs vmap(grad), relative", num(m["per_example_max_rel_error"], 2), ""),
            ("private backward vs optax's aggregate, relative", num(m["private_backward_max_rel_error"], 2), "")]
    rows += [(name, pct(r["test_accuracy"]), num(r["final_loss"])) for name, r in m.items() if isinstance(r, dict)]
    return ("", "test accuracy / error", "final loss"), rows


HEADLINES = {
    "mnist1d_mlp": _mnist1d_mlp, "chain_rule": _chain_rule, "gradient_descent_1d": _gradient_descent_1d,
    "learning_rate": _learning_rate, "optimizers": _optimizers, "mnist1d": _mnist1d, "digits": _digits,
    "regression": _regression, "regularization": _regularization, "forgetting": _forgetting,
    "vanishing_gradients": _vanishing_gradients, "alignment": _alignment, "hessian": _hessian, "gpt": _gpt,
    "char_rnn": _char_rnn, "dp_sgd": _dp_sgd,
}

# ---------------------------------------------------------------- RST


def rst_text(s) -> str:
    """Plain text for a table cell: RST's inline markup characters escaped."""
    s = str(s).replace("\\", "\\\\")
    for c in "*`|_":
        s = s.replace(c, "\\" + c)
    return s


def table(header, rows, widths=None) -> list[str]:
    """An RST list-table, ``header`` its first row."""
    out = [".. list-table::", "   :class: gallery-numbers", "   :header-rows: 1",
           *([f"   :widths: {widths}"] if widths else []), ""]
    for row in [header, *rows]:
        out += [f"   * - {rst_text(row[0])}", *(f"     - {rst_text(c)}" for c in row[1:])]
    return out + [""]


def flat(tree, prefix="") -> list[tuple[str, object]]:
    """``(dotted key, value)`` for every leaf of the dicts in ``tree``; lists stay whole."""
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in flat(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, tree)]


def setting(value) -> str:
    if isinstance(value, list):
        return ", ".join(setting(v) for v in value) if value else "(none)"
    return num(value, 6) if isinstance(value, float) else str(value)


def docstring(path: Path) -> str:
    """The script's docstring less its "Run:" paragraph (the page shows the commands)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return "\n\n".join(p for p in doc.split("\n\n") if not p.startswith("Run:"))


def title_of(summary: str) -> str:
    """A page title from the docstring's first sentence: its words before a colon ("The chain rule by hand: ..."),
    when they are a short heading; else empty (the page is titled by the experiment's name alone)."""
    head, colon, _ = summary.partition(":")
    return " ".join(head.split()) if colon and len(head) <= 45 and "``" not in head else ""


def page(name: str, description: str, script: Path, result: dict) -> str:
    summary, _, details = docstring(script).partition("\n\n")
    heading = title_of(summary)
    title = rst_text(f"{heading} ({name})" if heading else name)
    lines = [f".. _gallery-{name}:", "", title, "=" * len(title), "", summary, ""]
    if (FIGURES / f"{name}.png").exists():
        lines += [f".. image:: ../figures/{name}.png", f"   :target: ../_images/{name}.png",  # opened whole
                  f"   :alt: {name}: {rst_text(description)}", ""]
    header, rows = HEADLINES[name](result["metrics"])
    lines += ["Headline numbers", "----------------", "", *table(header, rows)]
    lines += ["Run it", "------", "", "From a clone of the repository (``pip install -e \".[experiments]\"``):", "",
              ".. code-block:: bash", "", f"   python -m experiments {name}", f"   python experiments/{script.name}",
              f"   python -m experiments {name} --quick    # tens of seconds: a short version", "",
              f"The numbers and the figure come from ``{result['command']}``, run on {result['date'][:10]} in "
              f"{duration(result['seconds'])}, committed as ``docs/results/{name}.json`` and "
              f"``docs/figures/{name}.png``.", ""]
    lines += ["What it does", "------------", "", details, ""]
    samples = result["metrics"].get("samples")
    if isinstance(samples, dict) and samples:
        kind, texts = next(iter(samples.items()))
        lines += ["A sample", "--------", "", f"Generated by the trained model ({rst_text(kind)}):", "",
                  ".. code-block:: text", "",
                  textwrap.indent(texts[0] if isinstance(texts, list) else str(texts), "   "), ""]
    lines += ["Settings", "--------", "", *table(("setting", "value"), [(k, setting(v)) for k, v in
                                                                         flat(result["config"])], "30 70")]
    versions = result["versions"]
    lines += ["Versions: " + rst_text(", ".join(f"{k} {v}" for k, v in versions.items()
                                                if k not in ("platform", "git_commit"))) + ".", ""]
    return "\n".join(lines)


def index(names: list[str], descriptions: dict) -> str:
    lines = [".. _gallery:", "", "Gallery", "=======", "",
             "Every experiment of the repository, each one script that trains with ``bp.train.fit`` or "
             "``fit_many`` and the hand-written backward. The numbers and figures are those of its last full "
             "run, committed in ``docs/results`` and ``docs/figures``; ``python -m experiments list`` lists "
             "them and ``python -m experiments <name> --publish`` updates them.", "",
             ".. toctree::", "   :hidden:", "", *(f"   {n}" for n in names), "",
             ".. container:: gallery-grid", ""]
    for n in names:
        lines += [f"   .. figure:: ../figures/{n}.png", f"      :target: {n}.html", f"      :alt: {n}", "",
                  f"      :doc:`{n}`: {rst_text(descriptions[n])}", ""]
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    """Write ``text`` unless ``path`` already holds it (an unchanged page is not read again)."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def gallery() -> tuple[dict[str, str], list[str]]:
    """The gallery's pages, ``{file stem: RST}`` with ``"index"``, and the problems found, one line each."""
    from experiments import EXPERIMENTS, FILES

    pages, problems = {}, []
    for name, description in EXPERIMENTS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            problems.append(f"gallery: {name} has no published result {path.relative_to(DOCS.parent)}: run "
                            f"`python -m experiments {name} --publish` after a full run")
        elif name not in HEADLINES:
            problems.append(f"gallery: {name} has no entry in HEADLINES (docs/_ext/gallery.py): say which of its "
                            f"numbers are the headline")
        else:
            try:
                pages[name] = page(name, description, FILES[name], json.loads(path.read_text()))
            except (KeyError, IndexError, TypeError) as e:
                problems.append(f"gallery: {path.relative_to(DOCS.parent)} does not hold what the page reads "
                                f"({type(e).__name__}: {e}): update HEADLINES['{name}'] in docs/_ext/gallery.py")
    pages["index"] = index(list(pages), EXPERIMENTS)
    return pages, problems


def generate(app) -> None:
    """Write the gallery's pages into ``docs/gallery/`` (a problem is a build warning)."""
    from sphinx.util import logging

    pages, problems = gallery()
    for problem in problems:
        logging.getLogger(__name__).warning(problem)
    GALLERY.mkdir(exist_ok=True)
    for stale in {p.stem for p in GALLERY.glob("*.rst")} - set(pages):
        (GALLERY / f"{stale}.rst").unlink()
    for name, text in pages.items():
        write(GALLERY / f"{name}.rst", text)


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
