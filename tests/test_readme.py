"""The README's code blocks are tests: every ```python block runs, in order, in one namespace.

A reader pastes the blocks of ``README.md`` one after another into one Python session; this test
does the same. The data the snippets need (``x, y, x_test, y_test, key, my_loss``) comes from a
visible ```python block of the README itself, so nothing is supplied behind the reader's back.
Signatures and pseudo-code are fenced as ```text and are not run; every fence names its language.
The interoperability recipes import Equinox and Flax, which bpjax does not need: they are in the test
extra, so the blocks run wherever the tests do (``RECIPE_PACKAGES``).
"""

import ast
import re
import sys
import textwrap
import traceback
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The names the README's data block must define for the snippets after it.
DATA_NAMES = ("x", "y", "x_test", "y_test", "key", "my_loss")
FENCE = re.compile(r"^```(\S*)[ \t]*$")
# The packages the README's blocks import beyond bpjax's own dependencies, each in pyproject.toml's test extra, and
# the oldest Python it installs on there (None: any): flax 0.12 (with orbax and tensorstore) needs Python 3.11, and
# the extra's marker says so. Below that version the blocks importing it are left out, with a warning; everywhere
# else (CI included) every block runs.
RECIPE_PACKAGES = {"equinox": None, "flax": (3, 11)}


def blocks(text: str):
    """Fenced blocks of ``text`` as ``(language, first_line_number, source)``, in order of appearance."""
    out, lang, start, body = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if lang is None and match:
            lang, start, body = match.group(1), number + 1, []
        elif lang is not None and line.rstrip() == "```":
            out.append((lang, start, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang is not None:
        raise AssertionError(f"README.md: the block opened at line {start - 1} is never closed")
    return out


def python_blocks():
    return [(line, src) for lang, line, src in blocks(README.read_text()) if lang == "python"]


def imported(src: str) -> set:
    """The top-level names of the modules a block imports."""
    out = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def not_installed_here(src: str) -> list:
    """The recipe packages a block imports that the test extra does not install on this Python."""
    return sorted(m for m in imported(src) if RECIPE_PACKAGES.get(m) and sys.version_info < RECIPE_PACKAGES[m])


def test_every_package_a_block_imports_is_installed_by_the_tests():
    """A block imports the standard library, bpjax's own dependencies, or a recipe package of the test extra."""
    tomllib = pytest.importorskip("tomllib", reason="pyproject.toml is read with tomllib (Python 3.11+)")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = lambda requirement: re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]  # noqa: E731
    core = {name(r) for r in project["dependencies"]}
    test = {name(r): r for r in project["optional-dependencies"]["test"]}
    for line, src in python_blocks():
        for module in imported(src) - set(sys.stdlib_module_names) - {"bpjax"}:
            assert module in core or module in RECIPE_PACKAGES, \
                f"README.md:{line} imports {module}: add it to the test extra and to RECIPE_PACKAGES"
    for package, python in RECIPE_PACKAGES.items():
        assert package in test, f"{package} (imported by the README) is missing from the test extra"
        marker = f"python_version >= '{python[0]}.{python[1]}'" if python else None
        assert (marker in test[package]) if marker else (";" not in test[package]), (package, test[package])


def test_every_block_names_its_language():
    unnamed = [line - 1 for lang, line, _ in blocks(README.read_text()) if not lang]
    assert not unnamed, f"README.md: fences without a language at lines {unnamed} (use python, bash or text)"


def test_the_data_block_is_visible_and_first_to_need_data():
    """The first block that defines the snippets' data defines all of it, before any block uses it."""
    srcs = python_blocks()
    defining = [i for i, (_, src) in enumerate(srcs) if re.search(r"^x, y\b|^x, x_test\b", src, re.M)]
    assert defining, "README.md: no ```python block defines the snippets' data (x, y, x_test, y_test, key, my_loss)"
    ns: dict = {}
    line, src = srcs[defining[0]]
    exec(compile(src, f"README.md:{line}", "exec"), ns)
    missing = [n for n in DATA_NAMES if n not in ns]
    assert not missing, f"README.md:{line}: the data block does not define {missing}"
    for earlier_line, earlier in srcs[:defining[0]]:
        used = [n for n in DATA_NAMES if re.search(rf"\b{n}\b", earlier)]
        assert not used, f"README.md:{earlier_line}: uses {used} before the data block at line {line}"


def test_readme_python_blocks_run_in_order(capsys):
    """Paste every ```python block of README.md, in order, into one namespace."""
    srcs = python_blocks()
    assert len(srcs) >= 6, f"README.md has only {len(srcs)} python blocks; the collector reads the wrong file?"
    ns: dict = {"__name__": "__readme__"}
    left_out = []
    for line, src in srcs:
        if not_installed_here(src):
            left_out.append(f"README.md:{line} (needs {', '.join(not_installed_here(src))})")
            continue
        try:
            exec(compile(src, f"README.md:{line}", "exec"), ns)
        except Exception:  # noqa: BLE001 - any failure of a pasted block is the finding, reported with the block
            pytest.fail(f"README.md: the ```python block starting at line {line} fails when pasted after the "
                        f"blocks before it:\n\n{textwrap.indent(src, '    ')}\n{traceback.format_exc()}",
                        pytrace=False)
    if left_out:
        warnings.warn(f"blocks not run on Python {sys.version_info[0]}.{sys.version_info[1]}: {'; '.join(left_out)}")


def test_the_dense_block_is_verbatim_from_dense_py():
    """The README says its Dense forward/backward are verbatim from ``bpjax/layers/dense.py``: they are."""
    source = (ROOT / "bpjax" / "layers" / "dense.py").read_text()
    src = next((s for _, s in python_blocks() if s.startswith("def forward(params, a_prev):")), None)
    assert src is not None, "README.md: the Dense forward/backward block is missing"
    indented = textwrap.indent(src.rstrip("\n"), "    ", lambda s: s.strip() != "")
    assert indented in source, "README.md's Dense block differs from the code in bpjax/layers/dense.py"


def test_the_error_messages_shown_are_bpjax_s():
    """The README's example error messages are, word for word, what bpjax raises for those mistakes."""
    import jax
    import jax.numpy as jnp

    import bpjax as bp
    from bpjax import layers as L

    text = README.read_text()
    shown = next((src for lang, _, src in blocks(text[text.index("### Errors"):]) if lang == "text"), "")
    model = bp.serial(L.Dense(100), L.Relu(), L.Dense(10))
    _, params = model.init(jax.random.key(0), (40,))
    grad = bp.value_and_grad(model, bp.losses.softmax_cross_entropy)
    raised = []
    for x, y in ((jnp.ones((32, 30)), jnp.zeros(32, int)), (jnp.ones((32, 40)), jnp.arange(32) % 10 + 5)):
        with pytest.raises(bp.BpjaxError) as e:
            grad(params, x, y)
        raised.append(str(e.value))
    assert shown.splitlines() == raised, f"README.md's Errors block:\n{shown}\nbpjax raises:\n" + "\n".join(raised)
