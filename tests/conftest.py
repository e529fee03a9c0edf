"""Shared fixtures: real photos and a demo bundle built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut: a real 512x512 RGB photo, face at about (177, 66, 95, 95)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle (seeded, untrained weights), exported once with every parity check.

    Set EMOSTYLE_TEST_BUNDLE to reuse a bundle already exported by the same code
    (e.g. the README's engines/demo) and save about a minute.
    """
    reuse = os.environ.get("EMOSTYLE_TEST_BUNDLE")
    if reuse:
        return Path(reuse)
    from emostyle_export.bundle import export_demo

    return export_demo(tmp_path_factory.mktemp("bundles") / "demo")
