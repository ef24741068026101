"""Links into JAX's, optax's and numpy's documentation, online or not.

intersphinx reads each project's ``objects.inv`` from its site; where the site cannot be reached (a machine
without a network, CI), it falls back to a small inventory written here of the names this site links to
(:data:`OFFLINE`), so the build passes under ``-W`` either way and the links point to the same pages. Type hints
that autodoc reads at run time name a class where it is defined (``jax.jaxlib._jax.Array``); :data:`ALIASES`
maps them to the public name each project documents (``jax.Array``).
"""

from __future__ import annotations

import zlib
from pathlib import Path

SITES = {
    "jax": "https://docs.jax.dev/en/latest",
    "optax": "https://optax.readthedocs.io/en/latest",
    "numpy": "https://numpy.org/doc/stable",
}

# project -> {(name, py role): page and anchor on its site}; "$" stands for the name, as in objects.inv
OFFLINE = {
    "jax": {("jax.Array", "class"): "_autosummary/jax.Array.html#$",
            ("jax.Device", "class"): "_autosummary/jax.Device.html#$",
            ("jax.custom_vjp", "class"): "_autosummary/jax.custom_vjp.html#$",
            ("jax.make_mesh", "function"): "_autosummary/jax.make_mesh.html#$",
            ("jax.sharding.Mesh", "class"): "jax.sharding.html#$"},
    "optax": {("optax.GradientTransformation", "class"): "api/transformations.html#$"},
    "numpy": {("numpy.ndarray", "class"): "reference/generated/numpy.ndarray.html#$",
              ("numpy.dtype", "class"): "reference/generated/numpy.dtype.html#$"},
}

ALIASES = {
    "jax.jaxlib._jax.Array": "jax.Array",
    "jaxlib._jax.Array": "jax.Array",
    "jaxlib._jax.Device": "jax.Device",
    "jax._src.mesh.Mesh": "jax.sharding.Mesh",
    "optax._src.base.GradientTransformation": "optax.GradientTransformation",
}


def write_inventory(path: Path, project: str, entries: dict) -> Path:
    """An ``objects.inv`` (format 2) at ``path`` holding ``entries``."""
    header = f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n" \
             "# The remainder of this file is compressed using zlib.\n"
    lines = "".join(f"{name} py:{role} 1 {uri} -\n" for (name, role), uri in sorted(entries.items()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + zlib.compress(lines.encode()))
    return path


def intersphinx_mapping(folder: Path) -> dict:
    """``intersphinx_mapping`` for conf.py: each site first, then its offline inventory written into ``folder``."""
    return {project: (url, (None, str(write_inventory(folder / f"{project}.inv", project, OFFLINE[project]))))
            for project, url in SITES.items()}


def resolve_alias(app, env, node, contnode):
    """A reference to a class by the module that defines it, resolved and shown by the public name its project
    documents."""
    alias = node.get("reftarget")
    target = ALIASES.get(alias)
    if target is None:
        return None
    from docutils import nodes
    from sphinx.ext.intersphinx import missing_reference

    node["reftarget"] = target
    if contnode.astext() == alias:
        contnode = nodes.Text(target) if isinstance(contnode, nodes.Text) else type(contnode)(target, target)
    return missing_reference(app, env, node, contnode)


def setup(app):
    app.connect("missing-reference", resolve_alias)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
