"""The documentation site's tests: the guides' code runs, the gallery reads every committed result, and the API
pages list every public name.

The guides (``docs/guides/*.md``) are pages of runnable code: their ```python blocks run in order, one namespace
per page (:mod:`markdown_blocks`), in the default suite, as the README's do; a ```python slow block (several
processes, a long run: its fence says why) runs in the slow set only. Every block parses, imports only what the
tests install, and uses only ``bp.*`` names that exist. The site itself is built by ``.ci/run``
(``sphinx-build -W``), not here: these tests need no Sphinx.
"""

import ast
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
from conftest import docs_extension
from markdown_blocks import FLAGS, RECIPE_PACKAGES, blocks, imported, python_blocks, run_in_order

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("guides/*.md")) + [DOCS / "index.md"]
README = ROOT / "README.md"
RUNNABLE = [p for p in PAGES if python_blocks(p)]


def ids(pages):
    return [str(p.relative_to(DOCS)) for p in pages]


def test_the_pages_are_found():
    assert len(PAGES) >= 12 and len(RUNNABLE) >= 10, ids(PAGES)


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_every_slow_block_says_why(page):
    """A block left to the slow set gives its reason on its fence line: ```python slow: <reason>."""
    silent = [b.line - 1 for b in blocks(page) if b.flag == "slow" and not b.reason]
    assert not silent, f"{page.name}: ```python slow fences without a reason at lines {silent}"


@pytest.mark.parametrize("page", PAGES, ids=ids(PAGES))
def test_every_fence_names_its_language_and_every_block_parses(page):
    for block in blocks(page):
        assert block.lang, f"{page.name}:{block.line - 1}: a fence without a language (use python, bash or text)"
        if block.lang == "python":  # (a MyST directive, ```{include} path, has its own arguments)
            assert block.flag in (None, *FLAGS), f"{page.name}:{block.line - 1}: unknown flag {block.flag!r}"
            ast.parse(block.source, f"{page.name}:{block.line}")


def test_every_package_a_block_imports_is_installed_by_the_tests():
    """A block imports the standard library, bpjax's own dependencies, or a recipe package of the test extra."""
    tomllib = pytest.importorskip("tomllib", reason="pyproject.toml is read with tomllib (Python 3.11+)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda requirement: re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]  # noqa: E731
    core = {name(r) for r in project["dependencies"]}
    test = {name(r) for r in project["optional-dependencies"]["test"]}
    for page in [*RUNNABLE, README]:
        for block in python_blocks(page):
            for module in imported(block.source) - set(sys.stdlib_module_names) - {"bpjax"}:
                assert module in core or module in RECIPE_PACKAGES, \
                    f"{page.name}:{block.line} imports {module}: add it to the test extra and to RECIPE_PACKAGES"
    assert set(RECIPE_PACKAGES) <= test, (RECIPE_PACKAGES, test)


def aliases(src: str) -> dict:
    """``{name: module}`` for the block's imports of bpjax and its modules (``import bpjax as bp``, ``from bpjax
    import layers as L``)."""
    out = {}
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out.update({a.asname or a.name: a.name for a in node.names if a.name.split(".")[0] == "bpjax"})
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "bpjax":
            out.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
    return out


def chain(node) -> list:
    """``["bp", "train", "fit"]`` for the expression ``bp.train.fit``; ``[]`` when it is not a dotted name."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return [node.id, *reversed(names)] if isinstance(node, ast.Name) else []


@pytest.mark.parametrize("page", RUNNABLE, ids=ids(RUNNABLE))
def test_every_bpjax_name_a_page_uses_exists(page):
    """Every ``bp.x.y`` (and ``L.Dense``, ``zoo.gpt``, ...) of the page's blocks is a name of bpjax today."""
    known: dict = {}
    missing = []
    for block in python_blocks(page):
        known.update(aliases(block.source))
        for node in ast.walk(ast.parse(block.source)):
            names = chain(node) if isinstance(node, ast.Attribute) else []
            if names and names[0] in known:
                value = resolve(known[names[0]])
                for i, attr in enumerate(names[1:], 1):
                    if not hasattr(value, attr):
                        missing.append(f"{page.name}:{block.line}: {'.'.join(names[:i + 1])}")
                        break
                    value = getattr(value, attr)
    assert not missing, f"names the page uses that bpjax does not have: {sorted(set(missing))}"


def resolve(dotted: str):
    """The object named ``dotted`` (``bpjax.layers``): modules imported, attributes read."""
    parts = dotted.split(".")
    value = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        value = getattr(value, part) if hasattr(value, part) else importlib.import_module(".".join(parts[:i + 1]))
    return value


@pytest.mark.parametrize("page", RUNNABLE, ids=ids(RUNNABLE))
def test_page_blocks_run_in_order(page):
    """Paste the page's ```python blocks in order into one namespace, without the ```python slow ones."""
    run_in_order(page, slow=False)


SLOW_PAGES = [p for p in RUNNABLE if any(b.flag == "slow" for b in python_blocks(p))]


@pytest.mark.slow  # the blocks the default suite leaves out (their fences say why); it runs the others
@pytest.mark.parametrize("page", SLOW_PAGES, ids=ids(SLOW_PAGES))
def test_page_blocks_run_in_order_with_the_slow_ones(page):
    """Paste the page's ```python blocks in order into one namespace, the ```python slow ones included."""
    run_in_order(page, slow=True)


def test_the_dense_block_is_verbatim_from_dense_py():
    """The guide says its Dense forward/backward are verbatim from ``bpjax/layers/dense.py``: they are."""
    source = (ROOT / "bpjax" / "layers" / "dense.py").read_text()
    block = next((b for b in python_blocks(DOCS / "guides" / "idea.md")
                  if b.source.startswith("def forward(params, a_prev):")), None)
    assert block is not None, "docs/guides/idea.md: the Dense forward/backward block is missing"
    indented = "\n".join(("    " + line) if line.strip() else line for line in block.source.rstrip("\n").split("\n"))
    assert indented in source, "docs/guides/idea.md's Dense block differs from the code in bpjax/layers/dense.py"


def test_the_errors_shown_are_what_the_errors_guide_prints(capsys):
    """The errors guide's first block prints, word for word, the ```text block that follows it."""
    page = DOCS / "guides" / "errors.md"
    first = python_blocks(page)[0]
    shown = next(b for b in blocks(page) if b.lang == "text" and b.line > first.line)
    exec(compile(first.source, f"{page.name}:{first.line}", "exec"), {})
    assert capsys.readouterr().out.splitlines() == shown.source.splitlines()


# ---------------------------------------------------------------- the gallery


def test_the_gallery_has_a_page_for_every_experiment_from_its_committed_result():
    from experiments import EXPERIMENTS

    gallery = docs_extension("gallery")
    pages, problems = gallery.gallery()
    assert not problems, "\n".join(problems)
    assert set(pages) == {*EXPERIMENTS, "index"}
    for name in EXPERIMENTS:
        assert f"python -m experiments {name}\n" in pages[name] and f"../figures/{name}.png" in pages[name]
        assert (DOCS / "figures" / f"{name}.png").exists(), name


def test_a_result_without_a_headline_number_is_a_problem(monkeypatch):
    gallery = docs_extension("gallery")
    monkeypatch.setitem(gallery.HEADLINES, "digits", lambda m: (("", "x"), [("missing", m["no such number"])]))
    _, problems = gallery.gallery()
    assert len(problems) == 1 and "docs/results/digits.json does not hold" in problems[0], problems


# ---------------------------------------------------------------- the API pages


def public_names(module) -> list:
    """``__all__``, or else the functions and classes the module defines without a leading underscore."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, v in vars(module).items() if not n.startswith("_") and (inspect.isfunction(v) or
            inspect.isclass(v)) and v.__module__ == module.__name__]


def test_the_api_pages_document_every_public_name():
    """Every public name of every documented module is on a page (here or, as ``bp.check_gradients``, where the
    same object is documented), and every name listed exists."""
    pages = docs_extension("public_api").api_pages(DOCS / "api")
    assert {"bpjax", "bpjax.layers", "bpjax.losses", "bpjax.train", "bpjax.checkpoint"} <= set(pages), pages
    documented = set()
    for module_name, names in pages.items():
        module = importlib.import_module(module_name)
        documented.update(id(getattr(module, n)) for n in names)  # AttributeError: a listed name is gone
    missing = []
    for module_name in pages:
        module = importlib.import_module(module_name)
        for n in public_names(module):
            value = getattr(module, n)
            if inspect.ismodule(value):
                assert value.__name__ in pages, f"{module_name}.{n}: a public module without an API page"
            elif id(value) not in documented:
                missing.append(f"{module_name}.{n}")
    assert not missing, f"public names on no API page (docs/api/*.rst): {missing}"
