"""Import a study (studies/<name>/<script>.py) in a test: the studies are not installed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

#: The repository root (this file is tests/support/studies.py).
REPO = Path(__file__).resolve().parents[2]
STUDIES = REPO / "studies"


def scripts() -> list[Path]:
    """Every study's script: studies/<name>/<name>.py."""
    return sorted(p / f"{p.name}.py" for p in STUDIES.iterdir() if (p / f"{p.name}.py").is_file())


def study(name: str) -> ModuleType:
    """The module of studies/<name>/<name>.py, imported as ``studies.<name>.<name>`` (the repository on sys.path)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(f"studies.{name}.{name}")
