"""The documentation: gallery scripts are valid Python, and the Sphinx site builds with warnings as errors."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))


def test_gallery_has_examples():
    names = {p.name for p in EXAMPLES}
    assert {"plot_custom_exit_policy.py", "plot_temperature_sweep.py", "plot_dirnet_uncertainty.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_compiles_and_has_a_title(path: Path):
    source = path.read_text(encoding="utf-8")
    compile(source, str(path), "exec")
    # sphinx-gallery takes the title from the module docstring's first underlined line.
    doc = ast.get_docstring(ast.parse(source))
    assert doc, f"{path.name}: the module docstring (gallery title and intro) is missing"
    lines = [line for line in doc.splitlines() if line.strip()]
    assert len(lines) >= 2 and set(lines[1].strip()) == {"="}, f"{path.name}: docstring must start with a '=' title"
    assert len(lines[1].strip()) >= len(lines[0].strip()), f"{path.name}: title underline is too short"
    assert "# %%" in source, f"{path.name}: no '# %%' cells"


def test_results_directive_writes_a_note_for_a_missing_file(tmp_path: Path):
    """A results page whose markdown file does not exist says how to make it, without a warning."""
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_parser")
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "results").mkdir()
    # A leading title (dropped) and a second-level heading (shifted up: MyST warns on a
    # document that starts at level 2, and -W turns that into a failure).
    (tmp_path / "results" / "present.md").write_text(
        "# Dropped title\n\n## Part one\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n```text\n## not a heading\n```\n"
    )
    (src / "conf.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(DOCS / '_ext')!r})\n"
        "extensions = ['myst_parser', 'results_include']\n"
        "results_dir = '../results'\n"
    )
    (src / "index.rst").write_text(
        "Results\n=======\n\n"
        ".. results-include:: missing.md\n   :command: python make_missing.py\n\n"
        ".. results-include:: present.md\n   :command: python make_present.py\n"
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(src), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    html = (out / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    assert "run python make_missing.py; it writes results/missing.md" in text
    assert "<table" in html and "Dropped title" not in text  # the present file's table, without its title
    assert re.search(r"<h2>Part one", html) and "## not a heading" in text


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path: Path):
    for module in ("sphinx", "sphinx_gallery", "myst_parser"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(tmp_path / "doctrees"),
         str(DOCS), str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-10000:]
    assert (out / "index.html").is_file()
    for example in EXAMPLES:
        assert (out / "auto_examples" / example.with_suffix(".html").name).is_file(), example.name
