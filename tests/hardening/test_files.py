"""Damaged, odd and hostile image files: a clear per-file error or a correct decode.

Files are made with Pillow (a test-only dependency) so they come from a second,
independent encoder rather than from the OpenCV the runtime decodes with.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from emostyle_rt import Stylizer
from emostyle_rt.imaging import io as image_io
from emostyle_rt.errors import EmostyleError, ImageReadError
from emostyle_rt.imaging.io import read_image

Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    d = tmp_path_factory.mktemp("files")
    small = np.ascontiguousarray(astronaut[::4, ::4])  # 128x128, still a real photo
    Image.fromarray(small).save(d / "ok.jpg", quality=92)
    Image.fromarray(small).save(d / "ok.png")
    Image.fromarray(small).save(d / "progressive.jpg", quality=92, progressive=True)
    Image.fromarray(small).save(d / "ok.tif")
    return d


@pytest.fixture(scope="module")
def st(demo_bundle: Path) -> Stylizer:
    return Stylizer(demo_bundle)


def _refused(path: Path, *words: str, **kw: int) -> ImageReadError:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kw)
    msg = str(info.value)
    assert str(path) in msg, f"the message does not name the file: {msg}"
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return info.value


def test_empty_file(files: Path) -> None:
    p = files / "empty.jpg"
    p.write_bytes(b"")
    _refused(p, "0 bytes")


@pytest.mark.parametrize("name", ["ok.jpg", "ok.png", "progressive.jpg", "ok.tif"])
@pytest.mark.parametrize("keep", [0.01, 0.25, 0.5, 0.9, 0.995])
def test_truncated_file(files: Path, name: str, keep: float) -> None:
    data = (files / name).read_bytes()
    p = files / f"cut-{keep}-{name}"
    p.write_bytes(data[: max(1, int(len(data) * keep))])
    _refused(p)


def test_text_named_jpg(files: Path) -> None:
    p = files / "notes.jpg"
    p.write_text("this is a shopping list, not a photo\n" * 20)
    _refused(p, "not an image")


def test_directory_named_png(files: Path) -> None:
    p = files / "folder.png"
    p.mkdir(exist_ok=True)
    _refused(p, "not a regular file")


def test_fifo_named_jpg_does_not_hang(files: Path) -> None:
    p = files / "pipe.jpg"
    if not p.exists():
        os.mkfifo(p)
    _refused(p, "not a regular file")  # reading it would block forever


def test_missing_file(files: Path) -> None:
    _refused(files / "nope.jpg", "does not exist")


def test_unreadable_permissions(files: Path) -> None:
    """chmod 000: refused with the OS reason. As root, read as 'nobody' in a forked child (root ignores modes)."""
    d = Path(tempfile.mkdtemp(prefix="emostyle-perm-"))
    try:
        d.chmod(0o755)
        p = d / "secret.jpg"
        p.write_bytes((files / "ok.jpg").read_bytes())
        p.chmod(0o000)
        if os.geteuid() != 0:
            _refused(p, "cannot be read", "Permission denied")
            return
        assert os.access(p, os.R_OK), "root can read a 000 file: the case the child covers"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, try the read, report the outcome through the pipe
            try:
                os.close(r)
                os.setgid(65534)
                os.setuid(65534)
                try:
                    read_image(p)
                    out = "read"
                except ImageReadError as exc:
                    out = f"ImageReadError:{exc}"
                except BaseException as exc:  # noqa: BLE001 - reported to the parent as a failure
                    out = f"{type(exc).__name__}:{exc}"
                os.write(w, out.encode())
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            out = f.read().decode()
        os.waitpid(pid, 0)
        assert out.startswith("ImageReadError:"), out
        assert str(p) in out and "Permission denied" in out, out
    finally:
        for q in d.iterdir():
            q.unlink()
        d.rmdir()


def test_16bit_png(files: Path, astronaut: np.ndarray) -> None:
    grey = np.ascontiguousarray(astronaut[::4, ::4, 0])
    Image.fromarray(grey.astype(np.uint16) * 257).save(files / "grey16.png")  # mode I;16
    out = read_image(files / "grey16.png")
    assert out.dtype == np.uint8 and out.shape == (*grey.shape, 3)
    np.testing.assert_array_equal(out[..., 0], grey)  # x*257 >> 8 == x: the 16-bit scale is undone exactly
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    colour = np.ascontiguousarray(astronaut[::4, ::4])
    cv2.imwrite(str(files / "rgb16.png"), colour[..., ::-1].astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_image(files / "rgb16.png"), colour)


def test_animated_gif_gives_its_first_frame(files: Path, st: Stylizer) -> None:
    frames = [Image.fromarray(np.full((40, 60, 3), v, np.uint8)) for v in (20, 130, 240)]
    frames[0].save(files / "anim.gif", save_all=True, append_images=frames[1:], duration=40, loop=0)
    out = read_image(files / "anim.gif")
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert abs(int(out.mean()) - 20) <= 2
    assert st.stylize(files / "anim.gif", emotion="sad").image.shape == (40, 60, 3)


def _exif_jpeg(path: Path, orientation: int) -> np.ndarray:
    """An 80x40 JPEG, left half red, with an EXIF Orientation tag; returns the stored pixels."""
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(path, quality=95, exif=exif.tobytes())
    return img


@pytest.mark.parametrize(
    "orientation, shape, red",
    [
        (1, (40, 80), (slice(None), slice(0, 40))),  # as stored: red on the left
        (3, (40, 80), (slice(None), slice(40, 80))),  # rotated 180: red on the right
        (6, (80, 40), (slice(0, 40), slice(None))),  # rotated 90 clockwise: red on top
        (8, (80, 40), (slice(40, 80), slice(None))),  # rotated 90 counter-clockwise: red at the bottom
        (2, (40, 80), (slice(None), slice(40, 80))),  # mirrored: red on the right
    ],
)
def test_exif_orientation_is_applied(files: Path, st: Stylizer, orientation: int, shape: tuple[int, int],
                                     red: tuple[slice, slice]) -> None:
    p = files / f"exif{orientation}.jpg"
    _exif_jpeg(p, orientation)
    out = read_image(p)
    assert out.shape == (*shape, 3)
    mask = np.zeros(shape, bool)
    mask[red] = True
    assert out[mask][:, 0].mean() > 220 and out[mask][:, 1].mean() < 30  # red where the viewer shows it
    assert out[~mask].mean() < 30
    assert st.stylize(p, emotion="happy").image.shape == (*shape, 3)  # the result has the shown size


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _patched(data: bytes, at: int, fmt: str, *values: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, at, *values)
    return bytes(b)


def _bombs(files: Path) -> dict[str, bytes]:
    """Files whose headers declare 60000x60000 (3.6 gigapixels, ~10 GB decoded) and hold almost nothing."""
    jpg = (files / "ok.jpg").read_bytes()
    sof = jpg.find(b"\xff\xc0")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files / "tiny.gif")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files / "tiny.bmp")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(files / "tiny.tif")
    gif, bmp, tif = ((files / f"tiny.{e}").read_bytes() for e in ("gif", "bmp", "tif"))
    tif_b = bytearray(tif)
    ifd = struct.unpack_from("<I", tif_b, 4)[0]
    for k in range(struct.unpack_from("<H", tif_b, ifd)[0]):
        e = ifd + 2 + 12 * k
        tag, kind = struct.unpack_from("<HH", tif_b, e)
        if tag in (256, 257):
            struct.pack_into("<H" if kind == 3 else "<I", tif_b, e + 8, 60000)
    return {
        "bomb.png": _png_header_only(60000, 60000),
        "bomb.jpg": _patched(jpg, sof + 5, ">HH", 60000, 60000),
        "bomb.gif": _patched(gif, 6, "<HH", 60000, 60000),
        "bomb.bmp": _patched(bmp, 18, "<ii", 60000, 60000),
        "bomb.tif": bytes(tif_b),
    }


def test_decompression_bombs_are_refused_before_decoding(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("the image was decoded before its declared size was checked")

    bombs = _bombs(files)
    monkeypatch.setattr(image_io.cv2, "imdecode", no_decode)
    for name, data in bombs.items():
        p = files / name
        p.write_bytes(data)
        _refused(p, "too large", "60000x60000", "max_pixels")


def test_pixel_limit_is_configurable(files: Path, demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 128 * 128
    for name in ("ok.jpg", "ok.png", "progressive.jpg", "ok.tif"):
        assert read_image(files / name, max_pixels=n).shape == (128, 128, 3)
        _refused(files / name, "too large", f"at most {n - 1} pixels", max_pixels=n - 1)
    small = Stylizer(demo_bundle, max_pixels=n - 1)
    with pytest.raises(ImageReadError, match="too large"):
        small.stylize(files / "ok.png", emotion="happy")
    with pytest.raises(EmostyleError, match="more pixels than the limit"):
        small.stylize(np.zeros((128, 128, 3), np.uint8), emotion="happy")


def test_bad_files_through_the_stylizer(files: Path, st: Stylizer) -> None:
    """The same refusals reach Stylizer users as ImageReadError naming the file."""
    (files / "empty2.png").write_bytes(b"")
    for p in (files / "empty2.png", files / "folder.png", files / "nope.png"):
        (files / "folder.png").mkdir(exist_ok=True)
        with pytest.raises(ImageReadError) as info:
            st.stylize(p)
        assert str(p) in str(info.value)


# -- property: arbitrary bytes behind each format's magic number -------------------------------------

MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xc0", b"GIF89a", b"GIF87a", b"BM",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"RIFF\x00\x00\x00\x00WEBPVP8L", b"II*\x00", b"MM\x00*", b"P6\n", b""]


@settings(deadline=None, max_examples=150, suppress_health_check=list(HealthCheck))
@given(magic=hs.sampled_from(MAGICS), body=hs.binary(max_size=300), cut=hs.integers(0, 6000))
def test_garbage_behind_a_magic_number(files: Path, magic: bytes, body: bytes, cut: int) -> None:
    """Random bytes (or a real file cut short and spliced) behind a format's magic: an image or ImageReadError."""
    real = (files / ("ok.png" if magic.startswith(b"\x89") else "ok.jpg")).read_bytes()
    data = magic + body if cut % 2 else (magic + real[len(magic):cut] + body)
    p = files / "garbage.img"
    p.write_bytes(data)
    try:
        out = read_image(p, max_pixels=4_000_000)
    except ImageReadError as exc:
        assert str(p) in str(exc)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.size > 0
