"""The classifier's crop spec (issue 17): manifest format, presets, and the runtime crop pixel for pixel.

The runtime crop (``emostyle_rt.detection.faces.crop_face``) is checked against
``emostyle_bench.crop_agreement.reference_crop``, an independent plain-numpy
implementation of the spec (index maths for the padding, OpenCV's fixed-point
grey formula written out; only the last resize is ``cv2.resize``). The bench
uses the same reference for its classification-agreement check.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from emostyle_bench.crop_agreement import border_faces, check_crop_agreement, fer_inputs, pipeline_faces, reference_crop
from skimage import data

from emostyle_rt import Stylizer
from emostyle_rt.errors import BundleError, InvalidArgumentError
from emostyle_rt.detection.faces import Face, crop_face, crop_rect
from emostyle_rt.manifest import (
    CROP_PRESETS,
    CV2_GREY,
    DEFAULT_CROP,
    CropSpec,
    crop_from_json,
    load_manifest,
    parse_crop,
)

rng = np.random.default_rng(17)
ASTRONAUT = np.ascontiguousarray(data.astronaut())
#: Images of odd and even sizes: the astronaut, an odd window, a tiny one, one pixel high.
IMAGES = {
    "512x512": ASTRONAUT,
    "301x257": np.ascontiguousarray(ASTRONAUT[40:297, 100:401]),
    "7x5": np.ascontiguousarray(ASTRONAUT[100:105, 200:207]),
    "9x1": np.ascontiguousarray(ASTRONAUT[150:151, 200:209]),
}


def _boxes(h: int, w: int) -> dict[str, tuple[int, int, int, int]]:
    """Boxes touching each edge and corner, inside, and the whole image (every margin leaves the image)."""
    bw, bh = max(1, w // 3), max(1, h // 2)
    return {
        "left": (0, (h - bh) // 2, bw, bh), "right": (w - bw, (h - bh) // 2, bw, bh),
        "top": ((w - bw) // 2, 0, bw, bh), "bottom": ((w - bw) // 2, h - bh, bw, bh),
        "top-left": (0, 0, bw, bh), "bottom-right": (w - bw, h - bh, bw, bh),
        "inside": (w // 3, h // 4, max(1, w // 4), max(1, h // 3)), "whole": (0, 0, w, h),
    }


CASES = [(img, box) for img, im in IMAGES.items() for box in _boxes(*im.shape[:2])]


@pytest.mark.parametrize("preset", list(CROP_PRESETS))
@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("size", [(64, 64), (48, 33)])
def test_presets_match_the_reference_pixel_for_pixel(preset: str, channels: int, size: tuple[int, int]) -> None:
    spec = CROP_PRESETS[preset]
    for img_name, box_name in CASES:
        img = IMAGES[img_name]
        box = _boxes(*img.shape[:2])[box_name]
        ours = crop_face(img, Face(*box), size, channels, spec)
        ref = reference_crop(img, box, spec, size, channels)
        assert ours.shape == (*size, channels) and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, ref, err_msg=f"{preset} {img_name} {box_name} {channels}ch")
    whole = reference_crop(ASTRONAUT, None, spec, size, channels)
    np.testing.assert_array_equal(crop_face(ASTRONAUT, None, size, channels, spec), whole)


def _random_spec() -> CropSpec:
    px = bool(rng.random() < 0.5)
    border = str(rng.choice(["clip", "constant", "mean", "bottom-rows-mean", "reflect"]))
    return CropSpec(
        margin=float(rng.choice([0, 1, 7, 10, 33.5] if px else [0, 0.13, 0.2, 0.5, 2.0])),
        margin_unit="px" if px else "fraction",
        square=str(rng.choice(["expand", "none"])),
        border=border,
        border_value=int(rng.integers(0, 256)),
        interpolation=str(rng.choice(["auto", "area", "linear", "cubic", "nearest"])),
        grey_weights=[CV2_GREY, (1 / 3, 1 / 3, 1 / 3), (0.5, 0.5, 0.0)][int(rng.integers(0, 3))],
        rounding=str(rng.choice(["half-even", "half-up"])),
        border_width=None if border == "clip" or rng.random() < 0.5 else int(rng.choice([0, 3, 40])),
    )


def test_every_field_matches_the_reference_on_random_boxes() -> None:
    """600 random specs, images (1..120 px), boxes and sizes: constant/reflect pads, px margins, all interpolations."""
    for _ in range(600):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        y, x = int(rng.integers(0, 512 - h)), int(rng.integers(0, 512 - w))
        img = np.ascontiguousarray(ASTRONAUT[y : y + h, x : x + w])
        bx, by = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (bx, by, int(rng.integers(1, w - bx + 1)), int(rng.integers(1, h - by + 1)))
        spec, channels = _random_spec(), int(rng.choice([1, 3]))
        size = (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
        np.testing.assert_array_equal(crop_face(img, Face(*box), size, channels, spec),
                                      reference_crop(img, box, spec, size, channels), err_msg=f"{spec} {box} {h}x{w}")


def test_default_spec_is_the_01_crop() -> None:
    """RGB crops of the default spec are exactly the 0.1.0 crop (square, 20%, clipped, area/linear)."""
    for box in [(177, 66, 95, 95), (0, 0, 60, 60), (400, 300, 112, 150), (10, 450, 90, 62)]:
        side = max(box[2], box[3]) * 1.4
        cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
        x0, y0 = max(0, round(cx - side / 2)), max(0, round(cy - side / 2))
        x1, y1 = min(512, round(cx + side / 2)), min(512, round(cy + side / 2))
        part = ASTRONAUT[y0:y1, x0:x1]
        old = cv2.resize(part, (128, 128), interpolation=cv2.INTER_AREA if max(part.shape[:2]) > 128 else cv2.INTER_LINEAR)
        np.testing.assert_array_equal(crop_face(ASTRONAUT, Face(*box), (128, 128), 3), old)


def test_mean_pads_fer_style_pads_the_bottom_rows_mean_and_tight_is_the_box() -> None:
    img = IMAGES["301x257"]
    grey_img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    spec = CropSpec(margin=10, margin_unit="px", border="mean", interpolation="nearest")
    grey = crop_face(img, Face(0, 0, 40, 40), (60, 60), 1, spec)
    assert (grey[:5, :5] == int(np.rint(grey_img.mean()))).all()  # the 10 px outside the top-left corner
    fer = dataclasses.replace(CROP_PRESETS["fer-style"], interpolation="nearest")
    bottom = int(np.rint(grey_img[-2:].mean()))
    assert bottom != int(np.rint(grey_img.mean()))
    assert (crop_face(img, Face(0, 0, 40, 40), (60, 60), 1, fer)[:5, :5] == bottom).all()
    # fer's frame is 40 px: a crop reaching 60 px out is cut at 40 (not square any more, then stretched)
    unlimited = dataclasses.replace(fer, border_width=None)
    far, near = Face(0, 100, 1, 100), Face(0, 100, 20, 40)
    assert crop_rect(far, fer)[0] == -49 - 10 and crop_rect(near, fer)[0] == -10 - 10  # squaring + 10 px margin
    assert not np.array_equal(crop_face(img, far, (60, 60), 1, fer), crop_face(img, far, (60, 60), 1, unlimited))
    np.testing.assert_array_equal(crop_face(img, near, (60, 60), 1, fer), crop_face(img, near, (60, 60), 1, unlimited))
    # half-up rounding: an odd squaring difference puts the extra pixel right / at the bottom, as fer's x -= d // 2
    assert crop_rect(Face(100, 50, 10, 13), fer) == (100 - 1 - 10, 50 - 10, 100 - 1 + 13 + 10, 50 + 13 + 10)
    assert crop_rect(Face(100, 50, 10, 13), dataclasses.replace(fer, rounding="half-even"))[0] == 100 - 2 - 10
    tight = crop_face(img, Face(30, 20, 50, 40), (40, 50), 3, CROP_PRESETS["tight"])
    np.testing.assert_array_equal(tight, img[20:60, 30:80])  # same size: linear resize is the identity


def test_fer_style_is_fers_own_preprocessing_pixel_for_pixel() -> None:
    """The preset against fer 25.10.3's detect_emotions preprocessing, written from its code (fer_inputs): faces at
    and cut by every border (beyond its 40 px frame too), odd and even squaring differences, random boxes."""
    spec = CROP_PRESETS["fer-style"]
    cases = [(img, box) for _, img, box in pipeline_faces()]
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(8, 200, 2))
        y, x = int(rng.integers(0, 512 - h)), int(rng.integers(0, 512 - w))
        img = np.ascontiguousarray(ASTRONAUT[y: y + h, x: x + w])
        bx, by = int(rng.integers(0, w)), int(rng.integers(0, h))
        cases.append((img, (bx, by, int(rng.integers(1, w - bx + 1)), int(rng.integers(1, h - by + 1)))))
    odd = 0
    for img, box in cases:
        ours = crop_face(img, Face(*box), (64, 64), 1, spec).astype(np.float32)[None]
        ours = (ours / 255.0 - 0.5) * 2.0  # fer's scaling; the bundle's graph does x / 127.5 - 1 inside
        np.testing.assert_array_equal(ours, fer_inputs(img, [box]), err_msg=f"{box} in {img.shape}")
        odd += abs(box[2] - box[3]) % 2
    assert odd > 50


# ---------------------------------------------------------------- the manifest field


def test_round_trip_through_json() -> None:
    for spec in [*CROP_PRESETS.values(), _random_spec(), _random_spec()]:
        block = json.loads(json.dumps(spec.to_json()))
        assert crop_from_json(block, "classifier.crop") == spec
    assert DEFAULT_CROP.to_json() == {"margin": 0.2, "margin_unit": "fraction", "square": "expand", "border": "clip",
                                      "border_value": 0, "interpolation": "auto", "grey_weights": [0.299, 0.587, 0.114],
                                      "alignment": "none"}


def _manifest_copy(demo_bundle: Path, tmp_path: Path, crop: Any = "absent") -> Path:
    """A bundle folder holding only the demo manifest (opened with verify_files=False), crop set or removed."""
    raw = json.loads((demo_bundle / "manifest.json").read_text())
    raw["classifier"].pop("crop", None)
    if crop != "absent":
        raw["classifier"]["crop"] = crop
    root = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps(raw))
    return root


def test_manifest_crop_is_read(demo_bundle: Path, tmp_path: Path) -> None:
    fer = CROP_PRESETS["fer-style"]
    m = load_manifest(_manifest_copy(demo_bundle, tmp_path, fer.to_json()), verify_files=False)
    assert m.classifier.crop == fer
    assert fer.to_json()["rounding"] == "half-up" and fer.to_json()["border_width"] == 40


def test_fields_added_after_010_are_optional_and_written_only_when_set(demo_bundle: Path, tmp_path: Path) -> None:
    """A crop block of the first format (no rounding, no border_width) still loads; default specs are written
    without them, so an older emostyle-rt still opens such a bundle."""
    old = {k: v for k, v in CROP_PRESETS["fer-style"].to_json().items() if k not in ("rounding", "border_width")}
    old["border"] = "mean"
    m = load_manifest(_manifest_copy(demo_bundle, tmp_path, old), verify_files=False)
    assert (m.classifier.crop.rounding, m.classifier.crop.border_width) == ("half-even", None)
    assert "rounding" not in DEFAULT_CROP.to_json() and "border_width" not in m.classifier.crop.to_json()
    assert parse_crop("default,border=bottom-rows-mean,border_width=40px,rounding=half-up") == dataclasses.replace(
        DEFAULT_CROP, border="bottom-rows-mean", border_width=40, rounding="half-up")
    assert parse_crop({"preset": "fer-style", "border_width": "none"}).border_width is None
    with pytest.raises(InvalidArgumentError, match=r"border_width='x' is not a valid value.*whole pixels"):
        parse_crop("fer-style,border_width=x")


def test_old_manifest_gets_the_default_spec_and_says_so_once(demo_bundle: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    root = _manifest_copy(demo_bundle, tmp_path)
    with caplog.at_level(logging.INFO, logger="emostyle_rt.manifest"):
        first = load_manifest(root, verify_files=False)
        load_manifest(root, verify_files=False)
    assert first.classifier.crop == DEFAULT_CROP
    said = [r for r in caplog.records if "no classifier crop spec" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "--classifier-crop" in said[0].getMessage()


@pytest.mark.parametrize(("crop", "match"), [
    ("fer-style", "wrong type"),
    ({k: v for k, v in DEFAULT_CROP.to_json().items() if k != "border"}, r"missing \['border'\]"),
    (DEFAULT_CROP.to_json() | {"rotate": 5}, r"unknown \['rotate'\]"),
    (DEFAULT_CROP.to_json() | {"margin": -0.1}, "Crop margin must be"),
    (DEFAULT_CROP.to_json() | {"border": "wrap"}, "border cannot be 'wrap'"),
    (DEFAULT_CROP.to_json() | {"grey_weights": [1, 2]}, "grey_weights"),
    (DEFAULT_CROP.to_json() | {"alignment": "mouth"}, r"alignment cannot be 'mouth'.*\['none', 'eyes'\]"),
    (DEFAULT_CROP.to_json() | {"alignment": "eyes"}, r"alignment 'eyes' turns the crop.*border clip"),
    (DEFAULT_CROP.to_json() | {"border_value": 256}, "border_value"),
    (DEFAULT_CROP.to_json() | {"rounding": "up"}, r"rounding cannot be 'up'.*half-up"),
    (DEFAULT_CROP.to_json() | {"border_width": 40}, r"border_width limits.*border clip"),
    (DEFAULT_CROP.to_json() | {"border": "mean", "border_width": -1}, "border_width must be a whole number"),
])
def test_bad_manifest_crop_is_a_bundle_error(demo_bundle: Path, tmp_path: Path, crop: Any, match: str) -> None:
    with pytest.raises(BundleError, match=match) as err:
        load_manifest(_manifest_copy(demo_bundle, tmp_path, crop), verify_files=False)
    assert "classifier.crop" in str(err.value) and "Note: expected" in str(err.value)


# ---------------------------------------------------------------- --classifier-crop text


def test_presets_and_key_values() -> None:
    fer = CROP_PRESETS["fer-style"]
    assert parse_crop("fer-style") == fer
    assert parse_crop("margin=10px,border=bottom-rows-mean,border_width=40,interp=linear,rounding=half-up") == fer
    assert parse_crop("tight") == CropSpec(margin=0.0, square="none", border="clip")
    assert parse_crop("fer-style, margin=0.1") == dataclasses.replace(fer, margin=0.1, margin_unit="fraction")
    assert parse_crop("border=constant,value=114,grey=1/0/0").grey_weights == (1.0, 0.0, 0.0)
    assert parse_crop({"preset": "tight", "margin": "4px"}) == CropSpec(margin=4.0, margin_unit="px", square="none")
    assert parse_crop("") == DEFAULT_CROP


@pytest.mark.parametrize(("text", "match"), [
    ("fer", r"Unknown crop preset 'fer'.*\['default', 'fer-style', 'tight'\]"),
    ("margin=-2px", "Crop margin must be"),
    ("margin=-0.2", "Crop margin must be"),
    ("margin=3", "Crop margin must be a number from 0 to 2"),
    ("colour=red", r"Unknown crop spec key 'colour'.*'margin', 'square'"),
    ("interp=bicubic", r"interpolation cannot be 'bicubic'.*'linear'"),
    ("margin=ten", "margin='ten' is not a valid value"),
    ("default,tight", "'tight' is not key=value"),
    ("value=1.5", "integer grey level"),
])
def test_bad_crop_text_is_a_typed_error(text: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        parse_crop(text)


# ---------------------------------------------------------------- the export side


def test_export_refuses_bad_crop_specs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from emostyle_export.cli import main as export_main

    assert export_main(["--demo", "--classifier-crop", "fer", "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "Unknown crop preset 'fer'" in capsys.readouterr().err
    assert export_main(["--demo", "--classifier-crop", "margin=-3px", "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "Crop margin must be" in capsys.readouterr().err
    cfg = tmp_path / "export.toml"
    cfg.write_text('classifier_crop = { preset = "fer-style", pad = 3 }\n')
    assert export_main(["--demo", "--config", str(cfg), "-o", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "key 'classifier_crop'" in err and "Unknown crop spec key 'pad'" in err
    cfg.write_text("classifier_crop = 3\n")
    assert export_main(["--demo", "--config", str(cfg), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert "classifier_crop" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_sets_the_crop_of_an_existing_bundle(demo_bundle: Path, tmp_path: Path) -> None:
    from emostyle_export.cli import main as export_main

    dest = tmp_path / "b"
    shutil.copytree(demo_bundle, dest)
    assert export_main(["--bundle", str(dest), "--classifier-crop", "fer-style,value=9", "-q"]) == 0
    raw = json.loads((dest / "manifest.json").read_text())
    assert raw["classifier"]["crop"]["margin_unit"] == "px" and "fp16" not in raw["classifier"]
    st = Stylizer(dest)
    assert st.crop == dataclasses.replace(CROP_PRESETS["fer-style"], border_value=9) == st.manifest.classifier.crop
    assert Stylizer(dest, margin=0.3).crop == dataclasses.replace(st.crop, margin=0.3, margin_unit="fraction")


def test_stylizer_crops_as_the_bundle_says(demo_bundle: Path, tmp_path: Path) -> None:
    """Runtime vs the classifier graph on reference crops: identical with the bundle's spec, not with another."""
    import onnxruntime as ort

    dest = tmp_path / "b"
    shutil.copytree(demo_bundle, dest)
    raw = json.loads((dest / "manifest.json").read_text())
    raw["classifier"]["crop"] = CROP_PRESETS["fer-style"].to_json()
    (dest / "manifest.json").write_text(json.dumps(raw))
    sess = ort.InferenceSession(str(dest / "classifier.onnx"), providers=["CPUExecutionProvider"])
    probs = lambda crops: np.concatenate([sess.run(None, {"face": c[None]})[0] for c in crops])  # noqa: E731
    same, other = check_crop_agreement(load_manifest(dest), probs)
    assert same.matched and same.ok and same.faces == len(border_faces()) == 20
    assert same.top1_agree == 20 and same.max_abs_diff <= 1e-5
    assert not other.matched and other.ok is None and other.max_abs_diff > 100 * max(same.max_abs_diff, 1e-7)


def test_bad_stylizer_margin_keeps_its_message(demo_bundle: Path) -> None:
    with pytest.raises(InvalidArgumentError, match=r"margin must be.*Note: expected 0 <= margin.*or None"):
        Stylizer(demo_bundle, margin=-1)


def test_config_and_flag_reach_the_export_plan(tmp_path: Path) -> None:
    from emostyle_export.cli import build_parser, plan_from_args

    cfg = tmp_path / "export.toml"
    cfg.write_text('classifier_crop = { preset = "tight", margin = "4px" }\n')
    plan = plan_from_args(build_parser().parse_args(["--demo", "--config", str(cfg), "-o", "x"]))
    assert plan.classifier_crop == CropSpec(margin=4.0, margin_unit="px", square="none")
    flag = ["--demo", "--config", str(cfg), "--classifier-crop", "fer-style", "-o", "x"]
    assert plan_from_args(build_parser().parse_args(flag)).classifier_crop == CROP_PRESETS["fer-style"]  # flag wins
    # neither given: None, the classifier's own (the demo's vendored fer model: fer-style; others: the default)
    assert plan_from_args(build_parser().parse_args(["--demo", "-o", "x"])).classifier_crop is None
