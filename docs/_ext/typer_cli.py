"""``typer-cli``: reference for a Typer application, generated from its commands and options.

``.. typer-cli:: recurnet_hand.cli:app`` with ``:prog: recurnet-hand`` expands to the
application's help, its global options, and for every command a subsection with the
usage line, the command's docstring and a table of its arguments and options (names,
type, default, help). Everything is read from the click-style command Typer builds
(duck-typed: recent Typer versions ship their own copy of click), so the page follows
the code without a help-text dump and without extra packages.
"""

from __future__ import annotations

import importlib

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles


def _load(spec: str):
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:attribute', got {spec!r}")
    obj = getattr(importlib.import_module(module_name), attr)
    if hasattr(obj, "get_params"):  # already a click-style command
        return obj
    import typer.main

    return typer.main.get_command(obj)


def _literal(text: str) -> str:
    return "``" + text.replace("`", "'") + "``"


def _type_name(param, ctx) -> str:
    """The value type shown for a parameter, across click and Typer's own click copy."""
    if getattr(param, "type", None) is not None:
        return str(param.type.name).lower()
    display = getattr(param, "display_type", None)
    if callable(display):
        return str(display(ctx)).strip("<>")
    return "value"


def _param_rows(command, ctx) -> list[tuple[str, str, str, str]]:
    rows = []
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False) or param.name == "help":
            continue
        argument = param.param_type_name == "argument"
        if argument:
            name = (getattr(param, "human_readable_name", None) or param.name).upper()
        else:
            name = ", ".join(list(param.opts) + list(param.secondary_opts))
        kind = "flag" if getattr(param, "is_flag", False) else _type_name(param, ctx)
        if getattr(param, "multiple", False) or (argument and param.nargs == -1):
            kind += ", repeatable"
        default = param.default
        shown = "" if default is None or default == () or callable(default) else str(default)
        if getattr(param, "is_flag", False) and default is False:
            shown = ""
        if param.required:
            shown = "required"
        help_text = " ".join((getattr(param, "help", None) or "").split())
        rows.append((name, kind, shown, help_text))
    return rows


def _arguments(command, ctx) -> list[str]:
    """Positional arguments for the usage line: ``NAME``, ``NAME...`` when repeatable."""
    out = []
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            name = (getattr(param, "human_readable_name", None) or param.name).upper()
            out.append(name + ("..." if param.nargs == -1 else ""))
    return out


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", "   :widths: 28 14 12 46", "", "   * - option", "     - type",
             "     - default", "     - meaning"]
    for name, kind, default, help_text in rows:
        lines += [f"   * - {_literal(name)}", f"     - {kind}", f"     - {_literal(default) if default else ''}",
                  f"     - {help_text}"]
    return lines + [""]


class TyperCli(SphinxDirective):
    """``.. typer-cli:: module:app`` with a ``:prog:`` option (the console-script name)."""

    required_arguments = 1
    option_spec = {"prog": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        try:
            group = _load(self.arguments[0])
        except (ImportError, AttributeError, ValueError) as err:
            raise self.error(f"typer-cli: cannot load {self.arguments[0]}: {err}") from err
        prog = self.options.get("prog", group.name or "cli")
        root = group.context_class(group, info_name=prog)
        lines = [" ".join((group.help or "").split()), ""]
        rows = _param_rows(group, root)
        if rows:
            lines += ["Global options, given before the command:", ""] + _table(rows)
        commands = group.list_commands(root) if hasattr(group, "list_commands") else []
        for name in commands:
            command = group.get_command(root, name)
            if command is None or command.hidden:
                continue
            ctx = command.context_class(command, info_name=name, parent=root)
            title = f"{prog} {name}"
            usage = " ".join([prog, name, "[OPTIONS]", *_arguments(command, ctx)])
            lines += [title, "-" * len(title), "", ".. code-block:: text", "", f"   {usage}", ""]
            lines += [" ".join((command.help or "").split()), ""]
            rows = _param_rows(command, ctx)
            if rows:
                lines += _table(rows)
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=self.get_source_info()[0]), container)
        return list(container.children)


def setup(app: Sphinx) -> dict:
    app.add_directive("typer-cli", TyperCli)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
