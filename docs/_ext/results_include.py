"""``results-include``: put a benchmark's markdown table into a page, or say how to make it.

Benchmark scripts under ``benchmarks/`` write their tables to
``benchmarks/results/<name>.md``; those files are generated, not typed by hand, and a
fresh checkout may not have them. A results page reads::

    Synthetic hand generation
    =========================

    .. results-include:: synth.md
       :command: python benchmarks/bench_synth.py

If the file exists, its markdown is parsed (MyST) and inserted, without its leading
``# title`` line since the page has its own title; the remaining headings are shifted
so the highest becomes a subsection of the page. If it does not, the page gets a
note with the command that generates it, and the build goes on without a warning.
Either way the file is recorded as a dependency of the page, so the page is read
again once the file appears or changes.

The folder is the ``results_dir`` config value, relative to the docs source folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from docutils import nodes, utils
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

_TITLE = re.compile(r"\A\s*#\s+[^\n]*(\n|\Z)")
_HEADING = re.compile(r"^(#{1,6})(\s)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _normalise(text: str) -> str:
    """Drop a leading ``# title`` and shift ATX headings (outside code fences) to start at ``#``."""
    lines = _TITLE.sub("", text, count=1).splitlines()
    fenced, levels = False, []
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            levels.append(len(m.group(1)))
    shift = min(levels, default=1) - 1
    if shift == 0:
        return "\n".join(lines) + "\n"
    out, fenced = [], False
    for line in lines:
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and _HEADING.match(line):
            line = line[shift:]
        out.append(line)
    return "\n".join(out) + "\n"


def _markdown_parser():
    from myst_parser.parsers.sphinx_ import MystParser

    return MystParser()


class ResultsInclude(SphinxDirective):
    """``.. results-include:: NAME.md`` with a ``:command:`` option that generates the file."""

    required_arguments = 1
    option_spec = {"command": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        if "command" not in self.options:
            raise self.error(f"results-include {name}: the :command: option (how to generate the file) is required")
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise self.error(f"results-include {name}: give a file name inside results_dir, not a path")
        folder = Path(self.env.srcdir) / self.config.results_dir
        path = (folder / name).resolve()
        # A missing dependency marks the page outdated, so it is re-read until the file exists.
        self.env.note_dependency(os.path.relpath(path, self.env.srcdir))
        shown = os.path.relpath(path, Path(self.env.srcdir).parent)
        if not path.is_file():
            return [self._missing(shown)]
        text = _normalise(path.read_text(encoding="utf-8"))
        document = utils.new_document(str(path), self.state.document.settings)
        _markdown_parser().parse(text, document)
        return list(document.children)

    def _missing(self, shown: str) -> nodes.Node:
        note = nodes.note()
        para = nodes.paragraph()
        para += nodes.Text("This table has not been generated yet. From the repository root, run ")
        para += nodes.literal(text=self.options["command"])
        para += nodes.Text("; it writes ")
        para += nodes.literal(text=shown)
        para += nodes.Text(", which this page then shows.")
        note += para
        return note


def setup(app: Sphinx) -> dict:
    app.add_config_value("results_dir", "../benchmarks/results", "env", types=[str])
    app.add_directive("results-include", ResultsInclude)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
