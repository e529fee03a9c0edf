"""Trained outputs go through emostyle-export unchanged, and the bundle runs in the runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emostyle_rt import Stylizer
from emostyle_rt.manifest import EMOTIONS
from emostyle_train.errors import TrainingError
from emostyle_train.pipeline import plan_all, run_all


def _config(tmp_path: Path, trained_style, trained_classifier, content_dir: Path, style_image: Path) -> Path:
    """Six emotions use the trained checkpoint; 'fear' trains a new style (2 steps) inside `all`."""
    styles = {e: {"checkpoint": str(trained_style.output)} for e in EMOTIONS}
    styles["fear"] = {"image": str(style_image), "steps": 2, "size": 32, "batch": 2}
    cfg = {"style": {"content": str(content_dir), "preview_every": 100},
           "styles": styles,
           "classifier": {"model": str(trained_classifier.output)},
           "export": {"classifier_crop": "default"}}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg))
    return path


def test_all_exports_a_bundle_that_stylizes(trained_style, trained_classifier, content_dir: Path,
                                            style_image: Path, tmp_path: Path, astronaut: np.ndarray) -> None:
    config = _config(tmp_path, trained_style, trained_classifier, content_dir, style_image)
    bundle = run_all(config, tmp_path / "bundle", progress=False)

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["demo"] is False
    assert len(manifest["styles"]) == 2  # the shared checkpoint is exported once, plus fear's own
    for style in manifest["styles"].values():
        assert style["source"]["family"] == "authors" and style["convention"] == "imagenet"
        assert style["parity"]["max_abs_diff"] <= 1.0
        assert style["source"]["metadata"]["style_weight"] == 4e5
    assert manifest["classifier"]["scale"] == "0..1" and manifest["classifier"]["input"]["height"] == 128

    st = Stylizer(bundle)
    res = st.stylize(astronaut)
    assert res.image.shape == astronaut.shape and res.emotion in EMOTIONS
    styled = st.stylize(astronaut, emotion="happy").image
    assert np.abs(styled.astype(int) - astronaut.astype(int)).mean() > 5  # restyled, not passed through


def test_all_checks_everything_before_training(trained_style, trained_classifier, content_dir: Path,
                                               style_image: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, trained_style, trained_classifier, content_dir, style_image)
    cfg = json.loads(config.read_text())
    cfg["styles"]["fear"]["size"] = 512  # larger than the 96 px style image
    config.write_text(json.dumps(cfg))
    with pytest.raises(TrainingError, match="smaller than the 512 px training crop"):
        plan_all(config, tmp_path / "b")
    cfg["styles"]["fear"]["size"] = "32"
    config.write_text(json.dumps(cfg))
    with pytest.raises(TrainingError, match=r"\[styles\].fear.size has the wrong type.*expected an integer"):
        plan_all(config, tmp_path / "b")
    cfg["styles"]["fear"] = {"image": str(style_image), "stpes": 2}
    config.write_text(json.dumps(cfg))
    with pytest.raises(TrainingError, match="Unknown option 'stpes'"):
        plan_all(config, tmp_path / "b")
    assert not (tmp_path / "b.train").exists()
