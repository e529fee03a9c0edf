"""Every study stays runnable from the repository: ``python studies/<name>/<name>.py --help`` exits 0 and teaches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from support.studies import REPO, scripts

SCRIPTS = scripts()


def test_every_study_folder_has_its_script_and_readme() -> None:
    folders = sorted(p for p in (REPO / "studies").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    assert [s.parent for s in SCRIPTS] == folders
    assert all((f / "README.md").is_file() for f in folders), [f.name for f in folders if not (f / "README.md").is_file()]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.parent.name for s in SCRIPTS])
def test_help_runs_from_anywhere(script: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:") and "--help" in done.stdout, done.stdout[:500]
