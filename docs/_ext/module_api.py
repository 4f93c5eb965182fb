"""``module-api``: a module's reference section, generated from its ``__all__`` at build time.

``.. module-api:: recurnet.looped`` expands to the module docstring, an autosummary
table of the names in ``__all__`` and one autodoc entry per name (``autoclass``,
``autoexception``, ``autofunction`` or ``autodata``, chosen by the object's type), in
``__all__`` order. A name added to ``__all__`` thus appears in the reference without
editing the docs. Options:

``:exclude: a, b``
    names of ``__all__`` to leave out (for example names documented elsewhere).

The page supplies the section title; the directive adds no headings.
"""

from __future__ import annotations

import importlib
import inspect

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _directive(obj: object) -> str:
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "autofunction"
    return "autodata"


class ModuleApi(SphinxDirective):
    """``.. module-api:: dotted.module.name``."""

    required_arguments = 1
    option_spec = {"exclude": lambda arg: [n.strip() for n in arg.split(",") if n.strip()]}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            raise self.error(f"module-api: cannot import {name}: {err}") from err
        public = getattr(module, "__all__", None)
        if not public:
            raise self.error(f"module-api: {name} has no __all__; list its public names there")
        exclude = self.options.get("exclude", [])
        unknown = sorted(set(exclude) - set(public))
        if unknown:
            raise self.error(f"module-api: {name}.__all__ has no {', '.join(unknown)} to exclude")
        names = [n for n in public if n not in exclude]
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise self.error(f"module-api: {name}.__all__ lists {', '.join(missing)}, which the module lacks")

        lines = [f".. automodule:: {name}", "   :no-members:", "", f".. currentmodule:: {name}", ""]
        lines += [".. autosummary::", "   :nosignatures:", ""] + [f"   {n}" for n in names] + [""]
        for n in names:
            lines += [f".. {_directive(getattr(module, n))}:: {n}", ""]

        container = nodes.section()  # a throwaway parent; only its children are returned
        container.document = self.state.document
        source = self.get_source_info()[0]
        nested_parse_with_titles(self.state, StringList(lines, source=source), container)
        return list(container.children)


def setup(app: Sphinx) -> dict:
    app.add_directive("module-api", ModuleApi)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
