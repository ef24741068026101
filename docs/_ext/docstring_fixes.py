"""Docstring lines that Sphinx cannot read, rewritten at build time until the docstrings themselves are fixed.

Each entry names a documented object, a line of its docstring as it is, and the lines Sphinx needs instead. An
entry whose line is no longer in the docstring is a build warning (an error under ``-W``): the docstring was
fixed, so delete the entry. The list is meant to be empty.
"""

from __future__ import annotations

# object -> [(the line as it is, the lines that replace it)]
FIXES: dict = {}


def fix(app, what, name, obj, options, lines):
    for old, new in FIXES.get(name, ()):
        if old not in lines:
            from sphinx.util import logging

            logging.getLogger(__name__).warning(f"docstring_fixes: {name}'s docstring no longer has the line "
                                                f"{old!r}: delete its entry in docs/_ext/docstring_fixes.py")
            continue
        i = lines.index(old)
        lines[i:i + 1] = new


def setup(app):
    app.connect("autodoc-process-docstring", fix, priority=300)  # before napoleon reads the sections
    return {"parallel_read_safe": True, "parallel_write_safe": True}
