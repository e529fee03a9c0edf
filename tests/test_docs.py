"""The documentation: the site builds with ``mkdocs build --strict``, and the README stays short and unbroken.

``mkdocs build --strict`` turns every warning into a failure: a broken link or anchor (between pages, or to a
repository file: scripts/mkdocs_hooks.py), a page under docs/ missing from ``nav`` in mkdocs.yml, a docstring
mkdocstrings cannot render. It takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: issue 24: "a README of at most about 250 lines"
README_MAX_LINES = 250
#: [text](target) and ![alt](target)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(markdown: str) -> list[str]:
    """Relative link targets outside code fences (no scheme, no bare #anchor)."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in LINK.findall(line):
            if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("#"):
                continue
            out.append(target)
    return out


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines. Note: expected at most {README_MAX_LINES}; move the detail to a page under docs/ "
        "(and its nav entry in mkdocs.yml) and link it")


def test_readme_keeps_the_commands_ci_runs() -> None:
    """.ci/run runs the README's two quick-start commands: they must stay in it, verbatim."""
    text = README.read_text(encoding="utf-8")
    ci = (ROOT / ".ci/run").read_text(encoding="utf-8")
    for command in ("bash scripts/demo.sh", ".venv/bin/python -m pytest"):
        assert command in ci, f".ci/run no longer runs {command!r}: update this test with it"
        assert f"```bash\n{command}\n```" in text, f"README.md lost the quick-start command {command!r}"


def test_readme_links_point_at_files_that_exist() -> None:
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert len(links) > 10, links  # the scan itself found the README's links
    missing = [t for t in links if not (ROOT / t.partition("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_link_scan_skips_code_and_urls() -> None:
    md = "[a](docs/a.md) [b](https://x.org/b.md) [c](#c) ![d](docs/img/d.png)\n```\n[e](e.md)\n```\n[f](f.md#x)\n"
    assert _relative_links(md) == ["docs/a.md", "docs/img/d.png", "f.md#x"]


@pytest.fixture(scope="module")
def mkdocs() -> list[str]:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (the docs extra, which dev includes: pip install -e '.[docs]')")
    return [sys.executable, "-m", "mkdocs"]


def _build(mkdocs: list[str], config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*mkdocs, "build", "--strict", "-f", str(config), "-d", str(site)],
                          cwd=config.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def test_the_site_builds_strict(mkdocs: list[str], tmp_path: Path) -> None:
    """Every page in the nav, every link and anchor resolved, every API page rendered; nothing written in the tree."""
    before = sorted(p.name for p in ROOT.iterdir())
    r = _build(mkdocs, ROOT / "mkdocs.yml", tmp_path / "site")
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stderr[-6000:]}"
    assert sorted(p.name for p in ROOT.iterdir()) == before  # no site/ or cache left in the checkout
    site = tmp_path / "site"
    stylizer = (site / "api/stylizer/index.html").read_text(encoding="utf-8")
    # the reference was generated from the docstrings, not left as a "::: name" line
    assert "emostyle_rt.stylizer.Stylizer" in stylizer and "stylize_batch" in stylizer and ":::" not in stylizer
    assert "InvalidImageError" in (site / "api/errors/index.html").read_text(encoding="utf-8")
    # repository files the pages link to are in the site (the bundle format, reference results)
    assert (site / "repo/bundles/index.html").is_file()
    assert list((site / "repo/benchmarks/results").rglob("index.html"))


def test_a_broken_link_fails_the_build(mkdocs: list[str], tmp_path: Path) -> None:
    """The check can fail: a copy of the docs with one broken link and one page left out of the nav."""
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/mkdocs_hooks.py", tmp_path / "scripts")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    # only the pages, not the API reference (which needs the packages' source beside the config)
    (tmp_path / "mkdocs.yml").write_text(config.replace("paths: [src]", f"paths: [{ROOT / 'src'}]"), encoding="utf-8")
    page = tmp_path / "docs/quickstart.md"
    page.write_text(page.read_text(encoding="utf-8") + "\n[gone](no-such-page.md)\n", encoding="utf-8")
    (tmp_path / "docs/orphan.md").write_text("# Not in the nav\n", encoding="utf-8")
    r = _build(mkdocs, tmp_path / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0
    assert "no-such-page.md" in r.stderr and "orphan.md" in r.stderr, r.stderr[-3000:]
