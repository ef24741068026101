"""The README is the front door: its code runs, its commands are CI's, and its links lead somewhere.

A reader pastes the ```python blocks of ``README.md`` one after another into one Python session; the test does the
same (:mod:`markdown_blocks`, the helper the guides' tests use). Signatures and pseudo-code are fenced as ```text
and are not run; every fence names its language. The guides under ``docs/guides/`` hold the details; their code
runs in ``test_docs.py``.
"""

import re
from pathlib import Path

from markdown_blocks import blocks, python_blocks, run_in_order

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_every_block_names_its_language():
    unnamed = [b.line - 1 for b in blocks(README) if not b.lang]
    assert not unnamed, f"README.md: fences without a language at lines {unnamed} (use python, bash or text)"


def test_readme_python_blocks_run_in_order():
    """Paste every ```python block of README.md, in order, into one namespace: the tour as a reader runs it."""
    assert len(python_blocks(README)) >= 3, "README.md: fewer than 3 python blocks; the collector reads the wrong file?"
    assert not any(b.flag for b in python_blocks(README)), "README.md: the tour runs whole in the default suite"
    run_in_order(README, slow=False)


def test_the_test_command_is_the_one_ci_runs():
    """The README's second command is, character for character, the line ``.ci/run`` runs."""
    commands = "".join(b.source for b in blocks(README) if b.lang == "bash")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line and "pytest" in
          line]
    assert len(ci) == 1 and ci[0] in commands.splitlines(), f".ci/run's test line {ci} is not a line of the README"


def test_every_relative_link_of_the_readme_exists():
    """``[text](path)`` and ``![alt](path)`` links to files of the repository point at files that exist."""
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert local, "README.md links to no file of the repository: the pattern reads the wrong syntax?"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
