"""The package's shape: no import cycle inside ``bpjax``, only ``bpjax`` installed, a light core import."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports(path: pathlib.Path, module: str) -> set:
    """The ``bpjax`` modules that ``module`` imports at import time (top level, not inside functions)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("bpjax"):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("bpjax"))
    return out


def _graph() -> dict:
    modules = {}
    for path in (ROOT / "bpjax").rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    return {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}


def test_bpjax_has_no_import_cycle():
    graph = _graph()
    assert len(graph) > 20  # the walk found the package
    # a package's __init__ importing its own submodules is not a cycle with them; drop those edges
    graph = {m: {i for i in deps if not i.startswith(m + ".")} for m, deps in graph.items()}
    state, stack = {}, []

    def visit(m):
        state[m] = "active"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "active":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_only_the_library_is_installed():
    """The packages setuptools collects under pyproject.toml's settings are ``bpjax`` and its subpackages:
    experiments/ and benchmarks/ are tools of the repository, never top-level packages of site-packages."""
    tomllib = pytest.importorskip("tomllib", reason="pyproject.toml is read with tomllib (Python 3.11+)")
    setuptools = pytest.importorskip("setuptools")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(where=str(ROOT), **config)
    assert "bpjax" in packages and "bpjax.train" in packages and "bpjax.gradcheck" in packages
    assert {p.split(".")[0] for p in packages} == {"bpjax"}, packages


def test_core_import_is_light():
    """``import bpjax`` loads neither matplotlib, scikit-learn, mnist1d, torch nor orbax, and fit's bar needs only
    tqdm."""
    heavy = ('matplotlib', 'sklearn', 'mnist1d', 'torch', 'orbax', 'tensorstore')
    code = f"import sys, bpjax; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
