"""The ``Examples:`` of the public API's docstrings run, and every public function has one.

"Public" is what the API pages document: the names under ``.. api-names::`` in ``docs/api/*.rst``
(read by ``docs/_ext/public_api.py``, as the site reads them), with a constant's docstring
taken from the string under its assignment, as the site shows it.

- ``test_examples_run``: one test per public function, class and documented constant whose docstring
  has ``>>>`` lines; they run with the standard library's ``doctest`` (``ELLIPSIS``,
  ``NORMALIZE_WHITESPACE``) in a fresh namespace holding the imports the API pages state once
  (:data:`IMPORTS`), so an example reads on its own on its page. Examples print shapes, dtypes,
  ``round(float(x), 4)`` and booleans, never an array's repr (whose last digits vary with the machine and
  XLA's reduction order): an expected output holding ``Array(`` fails.
- ``test_every_public_name_has_a_docstring``: every public name, constants included, has a docstring of its own.
- ``test_every_public_function_has_an_example``: every public function and layer constructor (and every
  callable constant: the losses) has an ``Examples:`` section, except the few in :data:`EXEMPT`, each
  with its reason; an exemption that is no longer needed (the name has examples, or is gone) fails too.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
from pathlib import Path

import pytest
from conftest import docs_extension

DOCS = Path(__file__).resolve().parent.parent / "docs"

# What docs/api/index.rst says every example assumes.
IMPORTS = "import jax, jax.numpy as jnp, numpy as np, optax, bpjax as bp\nfrom bpjax import layers as L"

# Public functions without an example, and why.
EXEMPT = {
    "bpjax.train.initialize": "starts jax.distributed for a job of several processes; it runs once per process, "
                              "before any computation, so never inside another program's session",
}


API = docs_extension("public_api")
PUBLIC = [(module, name) for module, names in API.api_pages(DOCS / "api").items() for name in names]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def qualified(module: str, name: str) -> str:
    return f"{module}.{name}"


def value_of(module: str, name: str):
    return getattr(importlib.import_module(module), name)


def needs_example(value) -> bool:
    """A function, a layer constructor or a callable constant (a loss); not a class or a plain constant."""
    return callable(value) and not inspect.isclass(value)


def examples(module: str, name: str) -> doctest.DocTest:
    value = value_of(module, name)
    try:
        filename = inspect.getsourcefile(value) or ""
    except TypeError:  # a constant: its docstring sits in a module's source
        filename = inspect.getsourcefile(importlib.import_module(module)) or ""
    globs: dict = {}
    exec(IMPORTS, globs)
    return doctest.DocTestParser().get_doctest(API.docstring(module, name), globs, qualified(module, name),
                                               filename, None)


WITH_EXAMPLES = [(m, n) for m, n in PUBLIC if ">>>" in API.docstring(m, n)]


def test_the_public_names_are_found():
    assert len(PUBLIC) > 100 and ("bpjax.layers", "Dense") in PUBLIC and ("bpjax.train", "fit") in PUBLIC, PUBLIC


@pytest.mark.parametrize("module, name", WITH_EXAMPLES, ids=[qualified(m, n) for m, n in WITH_EXAMPLES])
def test_examples_run(module, name):
    test = examples(module, name)
    raw = [e.want for e in test.examples if "Array(" in e.want]
    assert not raw, f"{test.name}: an example prints an array's repr, {raw[0]!r}: print a shape or a rounded float"
    out: list = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)


def test_every_public_name_has_a_docstring():
    """A constant's is the string under its assignment (a ``dict`` or a ``Loss`` would show its type's)."""
    missing = [qualified(m, n) for m, n in PUBLIC if not API.docstring(m, n).strip()]
    assert not missing, f"public names without a docstring of their own: {missing}"


def test_every_public_function_has_an_example():
    missing, stale = [], []
    for module, name in PUBLIC:
        q, doc = qualified(module, name), API.docstring(module, name)
        has = "Examples:" in doc and ">>>" in doc
        if q in EXEMPT:
            stale += [q] if has else []
        elif needs_example(value_of(module, name)) and not has:
            missing.append(q)
    assert not missing, f"{len(missing)} public functions without an Examples: section: {missing}"
    assert not stale, f"exempt from examples but have them now (drop them from EXEMPT): {stale}"
    assert set(EXEMPT) <= {qualified(m, n) for m, n in PUBLIC}, "an EXEMPT name is no longer on an API page"
