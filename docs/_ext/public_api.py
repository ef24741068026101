"""What the API pages document: their public names (``docs/api/*.rst``) and the docstrings the site shows.

Read by the ``api-names`` directive (``api_names.py``) and by ``tests/test_docstring_examples.py``, which runs the
examples of every public name; nothing here imports Sphinx.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import sys
from pathlib import Path


def api_pages(folder: Path) -> dict:
    """``{module name: [names]}`` from the API pages ``folder/*.rst``: each page's ``.. automodule::`` and the names
    of its ``.. api-names::`` lists, in page order."""
    out: dict = {}
    for page in sorted(Path(folder).glob("*.rst")):
        module, listing = None, False
        for line in page.read_text().splitlines():
            if line.startswith(".. automodule:: "):
                module = line.split()[-1]
                out.setdefault(module, [])
            elif line.startswith(".. api-names::"):
                if module is None:
                    raise ValueError(f"{page}: api-names before any automodule")
                listing = True
            elif listing and line.startswith("   ") and line.strip():
                out[module].append(line.strip())
            elif listing and line.strip():
                listing = False
    return out


def own_doc(value) -> str:
    """``value``'s docstring, or "" for an instance that only carries its type's."""
    doc = getattr(value, "__doc__", None)
    if not inspect.isclass(value) and not inspect.isroutine(value) and doc == getattr(type(value), "__doc__", None):
        return ""
    return inspect.cleandoc(doc or "")


@functools.lru_cache(maxsize=None)
def _attribute_docs(module_name: str) -> dict:
    """``{name: docstring}`` of the module's top-level assignments followed by a string literal."""
    try:
        tree = ast.parse(inspect.getsource(sys.modules[module_name]))
    except (OSError, TypeError, KeyError):
        return {}
    docs = {}
    for node, after in zip(tree.body, tree.body[1:]):
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            docs.update((t.id, inspect.cleandoc(after.value.value)) for t in targets if isinstance(t, ast.Name))
    return docs


def attribute_doc(module_name: str, name: str) -> str:
    """The docstring under the assignment of ``module_name.name``, in that module or in the module of the same
    package that assigns the same object (``bpjax.train.BACKWARDS`` is assigned in ``bpjax.grad``); "" without one."""
    value = getattr(importlib.import_module(module_name), name)
    package = module_name.split(".")[0]
    def order(m):  # the module itself, its submodules, then the rest of the package
        return m != module_name, not m.startswith(module_name + "."), m

    for m in sorted((m for m in list(sys.modules) if m.split(".")[0] == package), key=order):
        module = sys.modules.get(m)
        if module is not None and vars(module).get(name, None) is value:
            doc = _attribute_docs(m).get(name)
            if doc:
                return doc
    return ""


def docstring(module_name: str, name: str) -> str:
    """The docstring of the public name ``module_name.name``: its own, or a constant's attribute docstring."""
    return own_doc(getattr(importlib.import_module(module_name), name)) or attribute_doc(module_name, name)
