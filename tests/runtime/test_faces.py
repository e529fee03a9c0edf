"""Face detection on real photos and the classifier crop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from emostyle_rt.errors import BackendError
from emostyle_rt.detection.faces import Face, HaarDetector, YuNetDetector, crop_face, haar_available, make_detector
from emostyle_rt.manifest import DEFAULT_CROP

ASTRONAUT = data.astronaut()
ASTRONAUT_FACE = (177, 66, 95, 95)
#: OpenCV 5 has no CascadeClassifier: the Haar tests run on OpenCV 4 only.
needs_haar = pytest.mark.skipif(not haar_available()[0], reason=haar_available()[1])


def _near(face: Face, box: tuple[int, int, int, int], tol: float) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(face.box, box))


@needs_haar
def test_haar_finds_the_astronaut() -> None:
    faces = HaarDetector().detect(ASTRONAUT)
    assert len(faces) == 1
    assert _near(faces[0], ASTRONAUT_FACE, 6)


@needs_haar
def test_boxes_map_back_from_the_downscaled_copy() -> None:
    big = cv2.resize(ASTRONAUT, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    faces = HaarDetector(detect_side=512).detect(big)
    assert len(faces) == 1
    assert _near(faces[0], tuple(4 * v for v in ASTRONAUT_FACE), 4 * 6)


@needs_haar
def test_no_face_in_a_photo_without_people() -> None:
    assert HaarDetector().detect(data.coffee()) == []
    assert HaarDetector().detect(np.zeros((50, 80, 3), np.uint8)) == []


@needs_haar
def test_largest_face_first() -> None:
    small = cv2.resize(ASTRONAUT, (352, 352), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((512, 1024, 3), np.uint8)
    canvas[:, :512], canvas[:352, 640:992] = ASTRONAUT, small
    faces = HaarDetector(detect_side=1024).detect(canvas)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    assert _near(faces[0], ASTRONAUT_FACE, 6)


def test_crop_matches_the_classifier_spec() -> None:
    face = Face(*ASTRONAUT_FACE)
    crop = crop_face(ASTRONAUT, face, (128, 128), 3, DEFAULT_CROP)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    side = round(95 * 1.4)
    x0, y0 = round(177 + 47.5 - side / 2), round(66 + 47.5 - side / 2)
    expected = cv2.resize(ASTRONAUT[y0 : y0 + side, x0 : x0 + side], (128, 128), interpolation=cv2.INTER_AREA)
    assert np.abs(crop.astype(int) - expected).mean() < 2
    grey = crop_face(ASTRONAUT, face, (48, 64), 1)
    assert grey.shape == (48, 64, 1)


def test_crop_is_clipped_at_the_borders() -> None:
    crop = crop_face(ASTRONAUT, Face(0, 0, 60, 60), (64, 64), spec=dataclasses.replace(DEFAULT_CROP, margin=0.5))
    # The square runs off the top-left corner: only the image part is used.
    expected = cv2.resize(ASTRONAUT[:90, :90], (64, 64), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(crop, expected)
    whole = crop_face(ASTRONAUT, None, (128, 128))
    np.testing.assert_array_equal(whole, cv2.resize(ASTRONAUT, (128, 128), interpolation=cv2.INTER_AREA))
    tiny = crop_face(ASTRONAUT[:10, :10], None, (128, 128))  # upscales
    assert tiny.shape == (128, 128, 3)


class _Fixed:
    def detect(self, rgb: np.ndarray) -> list[Face]:
        return [Face(1, 2, 3, 4)]


def test_make_detector(tmp_path: Path) -> None:
    if haar_available()[0]:
        assert isinstance(make_detector(None), HaarDetector)  # no bundle: Haar
        assert isinstance(make_detector("haar"), HaarDetector)
    else:
        for spec in (None, "haar", tmp_path / "a.xml"):
            with pytest.raises(BackendError, match="no Haar face detector"):
                make_detector(spec)
    fixed = _Fixed()
    assert make_detector(fixed) is fixed
    with pytest.raises(BackendError, match="Unknown face detector"):
        make_detector("retinaface")
    with pytest.raises(BackendError, match="does not exist"):
        make_detector(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="YuNet"):
        YuNetDetector(bad)
    with pytest.raises(BackendError, match="Haar"):
        make_detector(tmp_path / "missing.xml")
    with pytest.raises(BackendError, match="detect"):
        make_detector(42)  # type: ignore[arg-type]
