"""The documentation site: built strictly, complete, and the strict build can fail.

``make docs`` runs ``sphinx-build -b html -W --keep-going -q docs reports/docs``; the test
runs the same command into a temporary directory (one build, shared by the checks).
"""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
pytest.importorskip("sphinxarg")
pytest.importorskip("furo")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGES = ("models", "ppl_bandits", "validation")
STRICT = ["-b", "html", "-W", "--keep-going", "-q"]


def sphinx_build(src: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sphinx", *STRICT, str(src), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "html"
    proc = sphinx_build(DOCS, out)
    assert proc.returncode == 0, f"strict docs build failed:\n{proc.stderr[-5000:]}"
    return out


def test_make_target_is_strict():
    """``make docs`` uses the same strict flags as this test."""
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^docs:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert rule is not None, "the Makefile has no docs target"
    assert "sphinx-build -b html -W --keep-going" in rule.group(1)


def test_site_pages(site):
    for page in ("index.html", "cli.html", "api/models.html", "api/ppl_bandits.html"):
        assert (site / page).is_file(), page
    tutorials = {p.stem for p in (site / "tutorials").glob("*.html")}
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert notebooks <= tutorials, f"tutorial pages missing: {sorted(notebooks - tutorials)}"


def test_cli_reference_lists_every_subcommand(site):
    from ppl_bandits.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = (site / "cli.html").read_text()
    missing = [name for name in sub.choices if f'id="{name}"' not in text]
    assert not missing, f"subcommands missing from the CLI reference: {missing}"


def test_api_renders_maths(site):
    """Docstring maths reaches MathJax (napoleon + mathjax), e.g. the meTS posterior."""
    text = (site / "api" / "ppl_bandits.html").read_text()
    assert "ppl_bandits.mixed_effect.posterior.effect_posterior" in text
    assert text.count('class="math notranslate nohighlight"') > 10


def test_tutorials_symlink_the_notebooks():
    """docs/tutorials holds links to notebooks/, so the two cannot drift apart."""
    links = {p.name: p for p in (DOCS / "tutorials").glob("*.ipynb")}
    names = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert set(links) == names
    for name, link in links.items():
        assert link.is_symlink() and link.resolve() == (ROOT / "notebooks" / name).resolve()


def test_every_module_is_documented():
    """Every module of the three packages has an ``automodule`` in docs/api/."""
    documented = set()
    for page in (DOCS / "api").glob("*.rst"):
        documented |= set(re.findall(r"^\.\. automodule:: (\S+)", page.read_text(), re.M))
    modules = {
        m.name
        for pkg in PACKAGES
        for m in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}.")
        if not m.name.split(".")[-1].startswith("_")
    }
    missing = sorted(modules - documented)
    assert not missing, f"add these modules to docs/api/<package>.rst: {missing}"


def test_strict_build_rejects_a_warning(tmp_path):
    """Negative control: the same flags fail a page with a malformed table."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text("project = 'control'\n")
    (src / "index.rst").write_text(
        "Control\n=======\n\n=====  =====\na      b\nlong text  c\n=====  =====\n"
    )
    proc = sphinx_build(src, tmp_path / "html")
    assert proc.returncode != 0
    assert "Malformed table" in proc.stderr
