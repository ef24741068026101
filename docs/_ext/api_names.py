"""``.. api-names::``: a summary table and the documentation of the public names listed, one a line.

An API page names its module once, in its ``.. automodule::`` line, and lists its public names under
``.. api-names::``; each name is documented at its public path (``bpjax.train.fit``, never the file that
defines it), so a page changes only when a public name does::

    .. automodule:: bpjax.train
       :no-members:

    .. api-names::

       fit
       fit_many

Each name becomes a row of the summary table (its docstring's first sentence) and an ``autofunction``,
``autoclass``, ``autoexception`` or ``autodata`` entry, chosen by what the name is. Listing the names,
rather than ``:members:``, keeps a package's internals (``bpjax.train.driver``, ...) off the page. A class
shows the methods and properties it defines; its fields (a NamedTuple's, a dataclass's) are the
``Attributes:`` of its docstring, so they are not listed twice. A constant without a docstring of its own
shows its value only, not the docstring of its type (``dict``'s, ``Loss``'s); its docstring is the string literal
under its assignment, in whichever module of the package assigns it (``token_cross_entropy = Loss(...)`` in
``bpjax.zoo.language``, documented as ``bpjax.zoo.token_cross_entropy``). A reference to a function or class by
another of its paths (``bpjax.tied.tie``, ``bpjax.check_gradients``) links to where it is documented (``bpjax.tie``,
``bpjax.gradcheck.check_gradients``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re

from docutils import nodes
from docutils.statemachine import StringList
from public_api import attribute_doc, docstring, own_doc
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

# a sentence ends at a period followed by white space, outside ``inline literals``
_LITERAL_OR_END = re.compile(r"``.*?``|\.(\s|$)", re.S)


def directive_for(value) -> str:
    """The autodoc directive that documents ``value``."""
    if inspect.isclass(value):
        return "autoexception" if issubclass(value, BaseException) else "autoclass"
    if inspect.isfunction(value) or inspect.isbuiltin(value):
        return "autofunction"
    return "autodata"  # constants, and callable instances such as the losses


def first_sentence(doc: str) -> str:
    """The first sentence of the docstring ``doc``, on one line ("" for an empty one)."""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    paragraph = paragraph[:-1] if paragraph.endswith("::") else paragraph  # "...::" introduces a literal block
    for match in _LITERAL_OR_END.finditer(paragraph):
        if not match.group().startswith("``"):
            return paragraph[:match.start() + 1]
    return paragraph


def documented_members(cls) -> list[str]:
    """The public methods and properties ``cls`` defines with a docstring, less its fields."""
    fields = set(getattr(cls, "_fields", ())) | {f.name for f in dataclasses.fields(cls)} if \
        dataclasses.is_dataclass(cls) else set(getattr(cls, "_fields", ()))
    return [name for name, value in vars(cls).items()
            if not name.startswith("_") and name not in fields and inspect.getdoc(value)
            and (callable(value) or isinstance(value, (property, staticmethod, classmethod)))]


class ApiNames(SphinxDirective):
    has_content = True

    def run(self) -> list[nodes.Node]:
        module_name = self.env.ref_context.get("py:module")
        if not module_name:
            raise self.error("api-names: no current module; put an `.. automodule::` line above it")
        module = importlib.import_module(module_name)
        names = [line.strip() for line in self.content if line.strip()]
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise self.error(f"api-names: {module_name} has no {', '.join(missing)}")
        lines = [".. list-table::", "   :class: api-summary", "   :widths: 30 70", ""]
        for n in names:
            lines += [f"   * - :py:obj:`{n}`", f"     - {first_sentence(docstring(module_name, n))}"]
        lines.append("")
        for n in names:
            value = getattr(module, n)
            lines.append(f".. {directive_for(value)}:: {n}")
            if inspect.isclass(value) and documented_members(value):
                lines.append(f"   :members: {', '.join(documented_members(value))}")
            lines.append("")
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), node)
        return node.children


def constant_docstring(app, what, name, obj, options, lines):
    """A constant documented by ``autodata`` shows its own docstring (:func:`attribute_doc`), never its type's."""
    if what != "data" or own_doc(obj):
        return
    type_doc = inspect.cleandoc(getattr(type(obj), "__doc__", None) or "").splitlines()
    if [line for line in lines if line.strip()] in ([], [line for line in type_doc if line.strip()]):
        lines[:] = attribute_doc(*name.rsplit(".", 1)).splitlines()


@functools.lru_cache(maxsize=None)
def lookup(dotted: str):
    """The object named ``dotted`` (``bpjax.tied.tie``), or None."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            value = getattr(value, part, None)
        return value
    return None


def documented_elsewhere(app, env, node, contnode):
    """A reference to a bpjax function or class by another of its paths resolves to where it is documented."""
    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or not target.startswith("bpjax."):
        return None
    value = lookup(target)
    if not (inspect.isfunction(value) or inspect.isclass(value)):
        return None
    py = env.get_domain("py")
    for name in py.objects:
        if name != target and name.startswith("bpjax.") and lookup(name) is value:
            return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], name, node, contnode)
    return None


def setup(app):
    app.add_directive("api-names", ApiNames)
    app.connect("missing-reference", documented_elsewhere)
    app.connect("autodoc-process-docstring", constant_docstring, priority=400)  # before napoleon rewrites it
    return {"parallel_read_safe": True, "parallel_write_safe": True}
