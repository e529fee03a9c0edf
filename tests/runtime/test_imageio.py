"""Input reading and conversion: real photos, colour orders, typed errors."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from emostyle_rt.errors import ImageEncodeError, ImageReadError, InvalidImageError
from emostyle_rt.imaging.io import header_size, load_image, read_image, to_rgb, write_image

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


def _encoded_kinds() -> dict[str, bytes]:
    """A JPEG turned by EXIF, an RGB PNG, a grey PNG and a 16-bit PNG of the astronaut (512 x 384, upright)."""
    bgr = np.ascontiguousarray(ASTRONAUT[:, :384, ::-1])
    kinds = {".jpg": cv2.imencode(".jpg", bgr)[1].tobytes(), ".png": cv2.imencode(".png", bgr)[1].tobytes(),
             "grey.png": cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))[1].tobytes(),
             "16bit.png": cv2.imencode(".png", bgr.astype(np.uint16) * 257 + 3)[1].tobytes()}
    kinds["exif6.jpg"] = _with_exif_orientation(kinds[".jpg"], 6)
    return kinds


@pytest.mark.parametrize("with_rgb_flag", [True, False])
def test_decode_without_imread_color_rgb_gives_the_same_pixels(with_rgb_flag: bool,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenCV < 4.11 has no IMREAD_COLOR_RGB: the IMREAD_COLOR + BGR -> RGB fallback reads every kind identically."""
    from emostyle_rt.imaging.io import decode_image

    if not with_rgb_flag:
        monkeypatch.delattr(cv2, "IMREAD_COLOR_RGB", raising=False)
    elif not hasattr(cv2, "IMREAD_COLOR_RGB"):
        pytest.skip(f"OpenCV {cv2.__version__} has no IMREAD_COLOR_RGB (4.11+)")
    for kind, blob in _encoded_kinds().items():
        want = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        got = decode_image(blob, source=kind)
        assert got.dtype == np.uint8 and got.shape == want.shape, kind
        np.testing.assert_array_equal(got, want, err_msg=kind)
    assert decode_image(_encoded_kinds()["exif6.jpg"]).shape == (384, 512, 3)  # turned by its EXIF


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
    with pytest.raises(ImageEncodeError, match="Cannot encode"):  # an ImageWriteError: nothing is written
        write_image(tmp_path / "out.nope", ASTRONAUT)
    assert not (tmp_path / "out.nope").exists()


# -- alpha --------------------------------------------------------------------------------------------


def _rgba(h: int = 120, w: int = 96) -> np.ndarray:
    """A photo crop with an alpha of every value: a gradient, a fully transparent band, an opaque band."""
    rgb = cv2.resize(ASTRONAUT, (w, h))
    alpha = np.tile(np.linspace(0, 255, w).astype(np.uint8), (h, 1))
    alpha[: h // 4] = 0
    alpha[-h // 4 :] = 255
    return np.dstack([rgb, alpha])


def test_to_rgb_keeps_alpha_on_request() -> None:
    rgba = _rgba()
    np.testing.assert_array_equal(to_rgb(rgba, alpha=True), rgba)
    np.testing.assert_array_equal(to_rgb(cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), bgr=True, alpha=True), rgba)
    assert to_rgb(ASTRONAUT, alpha=True).shape == ASTRONAUT.shape  # no alpha: still 3 channels
    assert load_image(rgba).shape == (*rgba.shape[:2], 3)  # the default drops it, as before


@pytest.mark.parametrize("ext", [".png", ".webp", ".tif"])
def test_rgba_file_round_trip_through_the_stylizer_keeps_alpha_exactly(
    tmp_path: Path, demo_bundle: Path, ext: str
) -> None:
    from emostyle_rt import Stylizer

    rgba = _rgba()
    src = write_image(tmp_path / f"in{ext}", rgba)
    assert read_image(src).shape == (120, 96, 3)  # alpha only when asked for
    np.testing.assert_array_equal(read_image(src, alpha=True)[..., 3], rgba[..., 3])
    res = Stylizer(demo_bundle).stylize(src, emotion="happy")
    assert res.image.shape == (120, 96, 4)
    np.testing.assert_array_equal(res.image[..., 3], rgba[..., 3])
    assert np.abs(res.image[..., :3].astype(int) - rgba[..., :3]).mean() > 5  # the colour was styled
    out = write_image(tmp_path / f"out{ext}", res.image)
    back = read_image(out, alpha=True)
    np.testing.assert_array_equal(back[..., 3], rgba[..., 3])
    Image = pytest.importorskip("PIL.Image")
    with Image.open(out) as im:  # a second decoder sees the same transparency
        assert im.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(im)[..., 3], rgba[..., 3])


def test_alpha_arrays_through_the_stylizer(demo_bundle: Path) -> None:
    from emostyle_rt import Stylizer

    st = Stylizer(demo_bundle)
    rgba = _rgba()
    bgra = cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)
    res = st.stylize_batch([rgba, rgba[..., :3], ASTRONAUT[:64, :64]], emotion="sad", max_side=64)
    assert [r.image.shape for r in res] == [(120, 96, 4), (120, 96, 3), (64, 64, 3)]
    np.testing.assert_array_equal(res[0].image[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(res[0].image[..., :3], res[1].image)  # alpha does not change the styling
    out = st.stylize(bgra, emotion="sad", max_side=64, bgr=True).image
    np.testing.assert_array_equal(out, cv2.cvtColor(res[0].image, cv2.COLOR_RGBA2BGRA))


def test_alpha_of_other_png_kinds(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    rgba = _rgba()
    grey_a = np.dstack([rgba[..., 0], rgba[..., 3]])
    Image.fromarray(grey_a, "LA").save(tmp_path / "la.png")
    out = read_image(tmp_path / "la.png", alpha=True)
    assert out.shape == (120, 96, 4)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(out[..., 0], rgba[..., 0])
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png", transparency=0)  # palette + tRNS
    assert read_image(tmp_path / "p.png", alpha=True).shape == (120, 96, 4)
    cv2.imwrite(str(tmp_path / "16.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA).astype(np.uint16) * 257)
    out = read_image(tmp_path / "16.png", alpha=True)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgba)  # 16-bit colour and alpha back to 8 bits exactly
    assert read_image(write_image(tmp_path / "rgb.png", ASTRONAUT), alpha=True).shape == ASTRONAUT.shape


@pytest.mark.parametrize("orientation", range(1, 9))
def test_alpha_is_turned_like_the_colour(tmp_path: Path, orientation: int) -> None:
    """An RGBA PNG whose EXIF says 'turn me': the alpha plane follows the colour OpenCV turned."""
    from emostyle_rt.imaging.io import ImageMeta

    rng = np.random.default_rng(orientation)
    rgba = rng.integers(0, 256, (40, 70, 4), dtype=np.uint8)
    rgba[..., 3] = rgba[..., 0]  # alpha == red, so a mis-turned alpha shows
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    exif = b"II*\x00" + struct.pack("<I", 8) + ifd
    # write_image would reset nothing here: this EXIF is given as is, orientation included
    p = write_image(tmp_path / "o.png", rgba, meta=ImageMeta(exif=exif))
    out = read_image(p, alpha=True)
    assert out.shape[:2] == ((70, 40) if orientation >= 5 else (40, 70))
    np.testing.assert_array_equal(out[..., 3], out[..., 0])


def test_alpha_to_jpeg_is_dropped_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from emostyle_rt.imaging import metadata

    monkeypatch.setattr(metadata, "_warned", set())
    with caplog.at_level(logging.WARNING, "emostyle_rt"):
        for name in ("a.jpg", "b.jpg"):
            assert read_image(write_image(tmp_path / name, _rgba())).shape == (120, 96, 3)
    assert sum("transparency" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 2), np.uint8)]
)
def test_write_image_refuses_what_it_cannot_write(tmp_path: Path, bad: np.ndarray) -> None:
    with pytest.raises(InvalidImageError, match="Note: expected uint8 HxWx3 or HxWx4"):
        write_image(tmp_path / "x.png", bad)
