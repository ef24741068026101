"""The package's shape: no import cycle, only ``bpjax`` installed, a light core import, one version, ``py.typed``."""

import ast
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

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
    """``import bpjax`` (and its Autodiff layer) loads none of matplotlib, scikit-learn, mnist1d, torch, orbax, chex,
    Equinox or Flax (test or extra dependencies only), and fit's bar needs only tqdm."""
    heavy = ("matplotlib", "sklearn", "mnist1d", "torch", "orbax", "tensorstore", "chex", "equinox", "flax")
    code = f"import sys, bpjax; bpjax.layers.Autodiff; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="pyproject.toml is read with tomllib (Python 3.11+)")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_has_one_source_and_py_typed_ships():
    """``bpjax.__version__`` is the version: pyproject.toml reads it (setuptools ``attr``) and CITATION.cff quotes
    it; ``py.typed`` (PEP 561) is package data, so type checkers read bpjax's annotations in an installed copy."""
    import bpjax

    config = _pyproject()
    assert "version" not in config["project"] and "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bpjax.__version__"}
    cited = next(line.split(":", 1)[1].strip() for line in (ROOT / "CITATION.cff").read_text().splitlines()
                 if line.startswith("version:"))
    assert cited == bpjax.__version__
    assert (ROOT / "bpjax" / "py.typed").is_file()
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["bpjax"]


def test_chex_is_a_test_dependency_only():
    """The tests use chex's pytree assertions; the library does not import it, so it is not a core dependency."""
    config = _pyproject()
    name = lambda requirement: requirement.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip()  # noqa: E731
    assert "chex" not in {name(r) for r in config["project"]["dependencies"]}
    assert "chex" in {name(r) for r in config["project"]["optional-dependencies"]["test"]}
    users = [p for p in (ROOT / "bpjax").rglob("*.py") if "chex" in _imports_any(p)]
    assert not users, users


def _imports_any(path: pathlib.Path) -> set:
    """Top-level names of every module ``path`` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out


def test_meshes_come_from_jax_make_mesh_grouped_by_process(monkeypatch):
    """``make_mesh`` keeps ``jax.make_mesh``'s (topology-aware) order within each process and puts every
    process's devices together, process 0's first, with Auto axes: here make_mesh interleaves two processes."""
    import jax
    import numpy as np

    from bpjax.train import sharding

    class Device:
        def __init__(self, id, process_index):
            self.id, self.process_index = id, process_index

    laid_out = [Device(5, 1), Device(2, 0), Device(4, 1), Device(3, 0)]  # jax.make_mesh's order, processes mixed
    calls = []

    def make_mesh(shape, names, *, axis_types, devices):
        calls.append((shape, names, axis_types))
        return type("M", (), {"devices": np.asarray(laid_out, dtype=object).reshape(shape)})

    monkeypatch.setattr(jax, "make_mesh", make_mesh)
    monkeypatch.setattr(sharding, "Mesh", lambda devices, names, axis_types: (devices, names, axis_types))
    devices, names, axis_types = sharding.make_mesh((2, 2), ("data", "model"), devices=laid_out)
    assert [[d.id for d in row] for row in devices] == [[2, 3], [5, 4]]
    assert names == ("data", "model") and axis_types == (jax.sharding.AxisType.Auto,) * 2
    assert calls == [((2, 2), ("data", "model"), axis_types)]
    devices, names, _ = sharding.data_parallel_mesh(laid_out)
    assert [d.id for d in devices] == [2, 3, 5, 4] and names == ("data",)
    with pytest.raises(sharding.errors.BpjaxError, match=r"make_mesh: a mesh of shape \(4, 2\) needs 8 devices, "
                                                          r"got 4"):
        sharding.make_mesh((4, 2), ("data", "model"), devices=laid_out)


@pytest.mark.slow  # builds and installs a wheel (about 20 s); the default suite checks the settings above
def test_the_built_wheel_ships_py_typed_and_its_version_and_mypy_reads_it(tmp_path):
    import bpjax

    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        (src / name).parent.mkdir(exist_ok=True)
        (src / name).write_bytes((ROOT / name).read_bytes())
    shutil.copytree(ROOT / "bpjax", src / "bpjax", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist")], check=True, capture_output=True)
    wheel, = (tmp_path / "dist").glob("bpjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bpjax/py.typed" in names and "bpjax/layers/autodiff.py" in names
    assert wheel.name.startswith(f"bpjax-{bpjax.__version__}-")
    subprocess.run([sys.executable, "-m", "pip", "install", str(wheel), "--no-deps", "-q", "--target",
                    str(tmp_path / "site")], check=True, capture_output=True)
    user = tmp_path / "user.py"
    user.write_text("import bpjax\nreveal_type(bpjax.serial)\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-m", "mypy", str(user), "--no-incremental", "--cache-dir", os.devnull],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert "bpjax.core.Layer" in out.stdout and out.returncode == 0, out.stdout + out.stderr
