"""Input reading and conversion: real photos, colour orders, typed errors."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from emostyle_rt.errors import ImageReadError, InvalidImageError
from emostyle_rt.imageio import header_size, load_image, read_image, to_rgb, write_image

ASTRONAUT = data.astronaut()


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF APP1 segment holding only the Orientation tag."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_png_round_trip_is_rgb(tmp_path: Path) -> None:
    p = write_image(tmp_path / "a.png", ASTRONAUT)
    np.testing.assert_array_equal(read_image(p), ASTRONAUT)
    np.testing.assert_array_equal(load_image(str(p)), ASTRONAUT)


def test_jpeg_is_rgb_not_bgr(tmp_path: Path) -> None:
    red = np.zeros((32, 48, 3), np.uint8)
    red[..., 0] = 255
    out = read_image(write_image(tmp_path / "r.jpg", red))
    assert out[..., 0].mean() > 240 and out[..., 2].mean() < 15


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    ok, buf = cv2.imencode(".jpg", np.zeros((40, 60, 3), np.uint8))
    p = tmp_path / "rot.jpg"
    p.write_bytes(_with_exif_orientation(buf.tobytes(), 6))
    assert read_image(p).shape == (60, 40, 3)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_header_size_matches_decoded_size(ext: str) -> None:
    ok, buf = cv2.imencode(ext, ASTRONAUT[:301, :255])
    assert header_size(buf.tobytes()) == (255, 301)


def test_pixel_limit_refuses_before_decoding(tmp_path: Path) -> None:
    # A PNG header claiming 100000 x 100000 pixels and no pixel data at all.
    p = tmp_path / "bomb.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 100_000, 100_000) + b"\x08\x02\0\0\0")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(p)
    small = write_image(tmp_path / "s.jpg", ASTRONAUT[:20, :20])
    with pytest.raises(ImageReadError, match="Note: expected at most 100 pixels"):
        read_image(small, max_pixels=100)


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "does not exist"), (b"", "not an image"), (b"this is not an image at all", "not an image")],
)
def test_unreadable_files(tmp_path: Path, content: bytes | None, match: str) -> None:
    p = tmp_path / "x.jpg"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageReadError, match=match):
        load_image(p)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError):
        read_image(tmp_path)


def test_conversions() -> None:
    grey = cv2.cvtColor(ASTRONAUT, cv2.COLOR_RGB2GRAY)
    for g in (grey, grey[:, :, None]):
        out = to_rgb(g)
        assert out.shape == ASTRONAUT.shape and (out[..., 0] == grey).all() and (out[..., 2] == grey).all()
    bgr = cv2.cvtColor(ASTRONAUT, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(to_rgb(bgr, bgr=True), ASTRONAUT)
    rgba = np.dstack([ASTRONAUT, np.full(ASTRONAUT.shape[:2], 7, np.uint8)])
    np.testing.assert_array_equal(to_rgb(rgba), ASTRONAUT)
    np.testing.assert_array_equal(to_rgb(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), bgr=True), ASTRONAUT)
    view = ASTRONAUT[:, ::2]
    assert to_rgb(view).flags.c_contiguous


@pytest.mark.parametrize(
    ("image", "match"),
    [
        ([[0, 1], [2, 3]], "numpy array or a path"),
        (None, "numpy array or a path"),
        (ASTRONAUT.astype(np.float32), "dtype.*expected uint8"),
        (ASTRONAUT.astype(bool), "dtype"),
        (ASTRONAUT.astype(np.uint16), "dtype"),
        (np.zeros(10, np.uint8), "shape"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4, 4, 5), np.uint8), "shape"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        (np.zeros((5, 0), np.uint8), "empty"),
    ],
)
def test_bad_arrays_get_typed_errors(image: object, match: str) -> None:
    with pytest.raises(InvalidImageError, match=match) as err:
        load_image(image)  # type: ignore[arg-type]
    assert "Note: expected" in str(err.value)


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "out.jpg"
    write_image(p, ASTRONAUT)
    write_image(p, ASTRONAUT[:100, :100])  # replaces in one step
    assert read_image(p).shape == (100, 100, 3)
    assert [f.name for f in p.parent.iterdir()] == ["out.jpg"]
    with pytest.raises(ImageReadError):
        write_image(tmp_path / "out.nope", ASTRONAUT)
    assert not (tmp_path / "out.nope").exists()
