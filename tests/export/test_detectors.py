"""The MTCNN face detector export: conventions from the package, graph parity, the package's own faces."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

pytest.importorskip("tf2onnx")
pytest.importorskip("mtcnn")

from emostyle_export.cli import main as export_main  # noqa: E402
from emostyle_export.cli import needed_modules  # noqa: E402
from emostyle_export.detectors import box_iou, mtcnn_conventions  # noqa: E402
from emostyle_rt.manifest import load_manifest, sha256_file  # noqa: E402
from emostyle_rt.detection.mtcnn import MtcnnDetector, crop_and_resize  # noqa: E402


def test_conventions_are_read_from_the_package() -> None:
    conv = mtcnn_conventions()
    assert (conv["offset"], conv["divisor"], conv["pad_value"]) == (127.5, 128.0, 127.5)  # (x - 127.5) / 128
    assert (conv["min_face_size"], conv["min_size"], conv["scale_factor"]) == (20.0, 12, 0.709)
    assert (conv["cell"], conv["stride"], conv["rnet_size"], conv["onet_size"]) == (12, 2, 24, 48)
    assert conv["thresholds"] == (0.6, 0.7, 0.8) and conv["nms"] == (0.5, 0.7, 0.7, 0.7)


def test_bundle_records_the_detector_and_its_parity(mtcnn_bundle: Path) -> None:
    import onnx

    raw = json.loads((mtcnn_bundle / "manifest.json").read_text())["detector"]
    assert raw["kind"] == "mtcnn" and raw["source"]["package"] == "mtcnn" and raw["source"]["version"] >= "1.0"
    assert raw["input"] == {"layout": "NHWC", "dtype": "float32", "range": "0..255", "color": "RGB",
                            "transposed": False, "normalization": {"offset": 127.5, "divisor": 128.0, "in_graph": True},
                            "pad_value": 127.5}
    assert raw["parity"]["max_abs_diff"] <= 1e-4 and raw["parity"]["cascade"]["min_iou"] >= 0.9
    assert raw["parity"]["cascade"]["faces"] >= 4
    for name, size in (("pnet", None), ("rnet", 24), ("onet", 48)):
        g = raw[name]
        assert g["onnx"] == f"detector/{name}.onnx" and g["sha256"] == sha256_file(mtcnn_bundle / g["onnx"])
        assert g["parity"]["max_abs_diff"] <= 1e-4 and g["size"] == size and g["parity"]["inputs"]
        dims = onnx.load(str(mtcnn_bundle / g["onnx"])).graph.input[0].type.tensor_type.shape.dim
        assert [d.dim_value or None for d in dims][1:] == [size, size, 3]  # P-Net: dynamic H and W
    assert any("level" in name for name in raw["pnet"]["parity"]["inputs"])


def test_patches_are_tf_crop_and_resize() -> None:
    import tensorflow as tf

    img = data.astronaut().astype(np.float32)
    rng = np.random.default_rng(3)
    xy = rng.uniform(-60, 560, (40, 2))
    boxes = np.hstack([xy, xy + rng.uniform(5, 300, (40, 1))])
    h, w = img.shape[:2]
    norm = boxes[:, [1, 0, 3, 2]] / np.asarray([[h, w, h, w]])
    for size in (24, 48):
        want = tf.image.crop_and_resize((img[None] - 127.5) / 128, norm, np.zeros(len(boxes), np.int32),
                                        (size, size)).numpy()
        got = (crop_and_resize(img, boxes, size, 127.5) - 127.5) / 128
        np.testing.assert_allclose(got, want, atol=2e-5)


def _scenes() -> list[tuple[str, np.ndarray]]:
    """Real photos the package should find faces in: turned, small, several, on real backgrounds."""
    astro = data.astronaut()
    cam = np.ascontiguousarray(np.dstack([data.camera()] * 3))
    rocket = cv2.resize(np.ascontiguousarray(data.rocket()), (800, 534), interpolation=cv2.INTER_AREA)
    for x, y, s in ((40, 40, 300), (420, 60, 150), (620, 330, 90)):
        rocket[y : y + s, x : x + s] = cv2.resize(astro, (s, s), interpolation=cv2.INTER_AREA)
    scenes = [("camera", cam), ("rocket + three astronauts", rocket)]
    centre = (230, 120)
    for angle in (-20, 20):
        m = cv2.getRotationMatrix2D(centre, angle, 1.0)
        scenes.append((f"astronaut turned {angle}", cv2.warpAffine(astro, m, (512, 512), borderMode=cv2.BORDER_REFLECT)))
    return scenes


def test_runtime_finds_the_packages_faces(mtcnn_bundle: Path) -> None:
    """Same faces as mtcnn.MTCNN().detect_faces, IoU >= 0.9 (full resolution, as the package runs)."""
    from mtcnn import MTCNN

    m = load_manifest(mtcnn_bundle)
    ours = MtcnnDetector(m.detector, m.root, provider="cpu", detect_side=None)  # type: ignore[arg-type]
    package = MTCNN()
    for name, rgb in _scenes():
        want = [f["box"] for f in package.detect_faces(rgb)]
        got = [f.box for f in ours.detect(rgb)]
        assert len(got) == len(want) >= 1, (name, want, got)
        for w in want:
            assert max(box_iou(g, w) for g in got) >= 0.9, (name, want, got)


def test_export_adds_the_detector_to_an_existing_bundle(mtcnn_bundle: Path, demo_bundle: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``emostyle-export --bundle DIR --detector mtcnn`` (the mtcnn_bundle fixture ran it if the demo had none)."""
    copy = tmp_path / "b"
    shutil.copytree(mtcnn_bundle, copy)
    if mtcnn_bundle == demo_bundle:  # the demo was exported with its detector: take it out and add it back
        raw = json.loads((copy / "manifest.json").read_text())
        del raw["detector"]
        shutil.rmtree(copy / "detector")
        (copy / "manifest.json").write_text(json.dumps(raw))
        assert export_main(["--bundle", str(copy), "--detector", "mtcnn", "-q"]) == 0
    assert load_manifest(copy).detector is not None
    before = (copy / "manifest.json").read_bytes()
    assert export_main(["--bundle", str(copy), "--detector", "mtcnn"]) == 0  # has one: kept, nothing redone
    assert "already has a face detector" in capsys.readouterr().err
    assert json.loads((copy / "manifest.json").read_bytes())["detector"] == json.loads(before)["detector"]


def test_detector_options_and_needed_modules(tmp_path: Path) -> None:
    from emostyle_export.cli import build_parser

    assert "mtcnn" in needed_modules(build_parser().parse_args(["--demo", "-o", "x"]))
    assert "mtcnn" not in needed_modules(build_parser().parse_args(["--demo", "--detector", "none", "-o", "x"]))
    assert "mtcnn" in needed_modules(build_parser().parse_args(["--bundle", "x", "--detector", "mtcnn"]))
    cfg = tmp_path / "c.toml"
    cfg.write_text('detector = "yunet"\n')
    assert export_main(["--demo", "--config", str(cfg), "-o", str(tmp_path / "x"), "-q"]) == 2
    assert export_main(["--bundle", str(tmp_path), "-q"]) == 2  # nothing to add
    assert not (tmp_path / "x").exists()
