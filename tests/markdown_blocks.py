"""The fenced code blocks of a Markdown page, and its ```python blocks run in order in one namespace.

A reader pastes a page's ```python blocks one after another into one Python session; :func:`run_in_order` does
the same, and reports the first block that fails with the block itself. Signatures and pseudo-code are fenced
as ```text and are not run; every fence names its language. A fence ```python slow: <reason> marks a block that
needs more than the default suite can give (several processes, a long run), and says why on the fence line,
which neither GitHub nor Sphinx shows; it runs in the slow set. No block after it may need what it defines, so
the default suite runs the others in order without it.

The packages a page imports beyond bpjax's own dependencies are the test extra's recipe packages
(:data:`RECIPE_PACKAGES`); a block that needs one that does not install on this Python is left out, with a
warning.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import traceback
import warnings
from pathlib import Path
from typing import NamedTuple

import pytest

# ```lang, or ```lang flag: reason (the flag: "slow"; the reason is for whoever reads the page's source)
FENCE = re.compile(r"^```(\S*)(?:[ \t]+([^\s:]+):?(?:[ \t]+(.*?))?)?[ \t]*$")
FLAGS = ("slow",)
# The packages the pages' blocks import beyond bpjax's own dependencies, each in pyproject.toml's test extra, and
# the oldest Python it installs on there (None: any): flax 0.12 (with orbax and tensorstore) needs Python 3.11.
RECIPE_PACKAGES = {"equinox": None, "flax": (3, 11)}


class Block(NamedTuple):
    lang: str
    flag: str | None
    reason: str | None  # why the block is flagged, from the fence line
    line: int  # the first line of the block's source, 1-based
    source: str


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of the page at ``path``, in order of appearance."""
    out: list[Block] = []
    opened = None
    body: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if opened is None and match:
            opened, body = (match.group(1), match.group(2), match.group(3), number + 1), []
        elif opened is not None and line.rstrip() == "```":
            out.append(Block(*opened, "\n".join(body) + "\n"))
            opened = None
        elif opened is not None:
            body.append(line)
    if opened is not None:
        raise AssertionError(f"{path.name}: the block opened at line {opened[3] - 1} is never closed")
    return out


def python_blocks(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang == "python"]


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


def run_in_order(path: Path, *, slow: bool) -> dict:
    """Run the page's ```python blocks in order in one namespace (``slow=False``: without the slow ones).

    Returns the namespace. A failing block fails the test with its source and the traceback.
    """
    ns: dict = {"__name__": f"__{path.stem}__"}
    left_out = []
    for block in python_blocks(path):
        where = f"{path.name}:{block.line}"
        if block.flag == "slow" and not slow:
            continue
        if not_installed_here(block.source):
            left_out.append(f"{where} (needs {', '.join(not_installed_here(block.source))})")
            continue
        try:
            exec(compile(block.source, where, "exec", dont_inherit=True), ns)  # not this file's __future__ flags
        except Exception:  # noqa: BLE001 - any failure of a pasted block is the finding, reported with the block
            pytest.fail(f"{path.name}: the ```python block starting at line {block.line} fails when pasted after "
                        f"the blocks before it:\n\n{textwrap.indent(block.source, '    ')}\n{traceback.format_exc()}",
                        pytrace=False)
    if left_out:
        warnings.warn(f"blocks not run on Python {sys.version_info[0]}.{sys.version_info[1]}: {'; '.join(left_out)}")
    return ns
