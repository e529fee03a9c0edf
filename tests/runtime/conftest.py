"""Fixtures of the runtime tests: a demo bundle whose ``angry`` style has tiled graphs (test_tiling*.py); an empty
user cache with OpenVINO's record of failed graphs reset (test_openvino*.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emostyle_rt.manifest import StyleSpec, load_manifest

TILED_EMOTION = "angry"


@pytest.fixture(scope="session")
def tiled_bundle(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle when its ``angry`` style has tiled graphs; else a copy with them added to that style only."""
    m = load_manifest(demo_bundle, verify_files=False)
    sid = m.emotions[TILED_EMOTION]
    if m.styles[sid].tiled is not None:
        return demo_bundle
    from emostyle_export.bundle import add_to_bundle

    copy = tmp_path_factory.mktemp("bundles") / "demo-tiled"
    shutil.copytree(demo_bundle, copy)
    add_to_bundle(copy, fp16=False, tiled=[sid])
    return copy


@pytest.fixture(scope="module")
def style(tiled_bundle: Path) -> StyleSpec:
    """The tiled style of :func:`tiled_bundle`."""
    return load_manifest(tiled_bundle).style_for(TILED_EMOTION)


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user cache for this test; no graph has passed OpenVINO's gate, or failed it, in this process."""
    from emostyle_rt.backends import openvino as ovb

    monkeypatch.setenv("EMOSTYLE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ovb, "_FAILED", {})
    return tmp_path / "cache"
