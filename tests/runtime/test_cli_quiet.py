"""``emostyle`` is quiet by default: the library's INFO lines (providers, graphs loaded) only with ``-v``."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import pytest
from skimage import data

from emostyle_rt.cli import main
from emostyle_rt.imaging.io import write_image


@pytest.fixture(autouse=True)
def _restore_loggers() -> None:
    levels = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate) for n in ("emostyle", "emostyle_rt")}
    yield
    for name, (level, propagate) in levels.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers = [h for h in logger.handlers if type(h).__name__ != "_StderrHandler"]


def test_library_info_only_with_verbose(demo_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = write_image(tmp_path / "p.png", cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA))
    assert main([str(src), "-o", str(tmp_path / "a.png"), "--bundle", str(demo_bundle)]) == 0
    quiet = capsys.readouterr().err
    assert "onnxruntime providers" not in quiet and "Loaded classifier.onnx" not in quiet
    assert main([str(src), "-o", str(tmp_path / "b.png"), "--bundle", str(demo_bundle), "-v"]) == 0
    loud = capsys.readouterr().err
    assert "Loaded classifier.onnx" in loud
