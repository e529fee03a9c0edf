"""Keep an old import path working after a module moved (issue 24's renovation).

A moved module leaves a two-line file at its old path::

    from emostyle_rt._moved import moved_module
    moved_module(__name__, "emostyle_rt.video.io")

Importing the old path warns once (``DeprecationWarning``) and binds the old name
to the new module object itself, so ``isinstance`` checks, ``monkeypatch`` and
``from old import name`` all see the same objects as the new path.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType


def moved_module(old: str, new: str) -> ModuleType:
    """Warn that ``old`` moved to ``new`` and make ``old`` an alias of ``new``."""
    warnings.warn(
        f"{old} moved to {new}; the old path is deprecated and will be removed. "
        f"Note: import {new} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    module = importlib.import_module(new)
    sys.modules[old] = module
    parent, _, leaf = old.rpartition(".")
    if parent and parent in sys.modules:
        setattr(sys.modules[parent], leaf, module)
    return module
