"""Reading, checking and converting input images; atomic image writes.

Everything inside the runtime is HxWx3 uint8 RGB. Arrays are RGB unless the
caller says BGR; grey (HxW, HxWx1) and RGBA/BGRA inputs are converted. Files are
decoded by OpenCV (EXIF orientation applied) after their header has been checked
against a pixel limit, so a decompression bomb is refused before it is decoded.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Union

import cv2
import numpy as np

from . import fsutil
from .errors import ImageReadError, ImageWriteError, InvalidImageError, note
from .fsutil import PART_SUFFIX

log = logging.getLogger(__name__)

#: Largest image (in pixels) read from a file by default: 100 megapixels.
MAX_PIXELS = 100_000_000

ImageInput = Union[str, os.PathLike, np.ndarray]


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF, BMP or WebP header; None if unknown."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", data[16:24])
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return struct.unpack("<HH", data[6:10])
        if data[:2] == b"BM":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = int.from_bytes(data[21:25], "little")
        return (b & 0x3FFF) + 1, ((b >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of a classic TIFF's first IFD."""
    e = "<" if data[:2] == b"II" else ">"
    off = struct.unpack(e + "I", data[4:8])[0]
    (count,) = struct.unpack(e + "H", data[off : off + 2])
    dims: dict[int, int] = {}
    for k in range(count):
        entry = data[off + 2 + 12 * k : off + 14 + 12 * k]
        tag, kind = struct.unpack(e + "HH", entry[:4])
        if tag in (256, 257) and kind in (3, 4):
            dims[tag] = struct.unpack(e + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
    return (dims[256], dims[257]) if len(dims) == 2 else None


def _check_pixels(path: Path, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ImageReadError(
            f"Image {path} is too large to read ({w}x{h} = {w * h} pixels)."
            + note(f"at most {max_pixels} pixels (max_pixels)", w * h)
        )


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation applied."""
    p = Path(path)
    if p.exists() and not p.is_file():  # a folder, pipe or device: reading could block or never end
        raise ImageReadError(f"Image path {p} is not a regular file." + note("an image file", "a folder, pipe or device"))
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"Image file {p} does not exist.") from None
    except OSError as exc:
        raise ImageReadError(f"Image file {p} cannot be read: {exc.strerror or exc}.") from exc
    size = header_size(data)
    if size is not None:
        _check_pixels(p, *size, max_pixels)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB) if data else None
    except cv2.error as exc:  # e.g. a declared size over OpenCV's own pixel limit
        raise ImageReadError(f"File {p} cannot be decoded: {str(exc).strip().splitlines()[-1]}.") from exc
    if image is None:
        raise ImageReadError(
            f"File {p} is not an image OpenCV can decode ({len(data)} bytes)."
            + note("a JPEG, PNG, WebP, BMP, TIFF or similar file", f"{data[:8]!r}...")
        )
    _check_pixels(p, image.shape[1], image.shape[0], max_pixels)
    return image


def to_rgb(image: np.ndarray, *, bgr: bool = False) -> np.ndarray:
    """Check an array and return it as C-contiguous HxWx3 uint8 RGB.

    Accepts HxW, HxWx1, HxWx3 and HxWx4 uint8 arrays; ``bgr`` says the colour
    channels are in OpenCV's order. Alpha is dropped.
    """
    if not isinstance(image, np.ndarray):
        raise InvalidImageError(
            "Image must be a numpy array or a path." + note("numpy.ndarray, str or Path", type(image).__name__)
        )
    if image.dtype != np.uint8:
        raise InvalidImageError(
            "Image array has the wrong dtype; convert it to 8-bit first." + note("uint8", image.dtype)
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or image.ndim == 3 and image.shape[2] not in (3, 4):
        raise InvalidImageError(
            "Image array has the wrong shape." + note("HxW, HxWx1, HxWx3 or HxWx4", image.shape)
        )
    if image.size == 0:
        raise InvalidImageError("Image array is empty." + note("height and width >= 1", image.shape))
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    if bgr:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def load_image(image: ImageInput, *, bgr: bool = False, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A path or an array -> HxWx3 uint8 RGB (``bgr`` applies to arrays only)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels=max_pixels)
    if isinstance(image, np.ndarray) and image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
        raise InvalidImageError(
            f"Image array of {image.shape[1]}x{image.shape[0]} has more pixels than the limit."
            + note(f"at most {max_pixels} pixels (max_pixels)", image.shape[0] * image.shape[1])
        )
    return to_rgb(image, bgr=bgr)


def write_image(path: str | os.PathLike, rgb: np.ndarray, *, quality: int = 95) -> Path:
    """Write an RGB image atomically: a temporary file in the same folder, then rename.

    The format follows the file extension. A reader never sees a half-written file.
    """
    p = Path(path)
    ext = p.suffix.lower() or ".png"
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext in (".jpg", ".jpeg") else []
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    try:
        ok, buf = cv2.imencode(ext, bgr, params)
    except cv2.error as exc:
        raise ImageReadError(f"Cannot encode an image as {ext!r} for {p}: {exc}.") from exc
    if not ok:
        raise ImageReadError(f"Cannot encode an image as {ext!r} for {p}.")
    write_bytes_atomic(p, buf.tobytes())
    return p


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically (``fsutil.write_bytes_atomic``); OS failures raise ``ImageWriteError``.

    Folder not creatable or not writable, disk full: a typed error naming the
    path. The temporary file is ``.<name>.<pid>.<random>.part``; ``clean_stale_parts``
    removes those left by a killed process.
    """
    try:
        fsutil.write_bytes_atomic(path, data)
    except OSError as exc:
        raise ImageWriteError(
            f"Cannot write {path}: {exc.strerror or exc}." + note("a writable folder with free space", Path(path).parent)
        ) from exc


def clean_stale_parts(folder: str | os.PathLike) -> int:
    """Remove temporary ``.part`` files of ``write_bytes_atomic`` whose process is gone; how many.

    A process killed mid-write leaves its temporary file behind (never the
    output itself). Files of live processes are kept, so concurrent runs are safe.
    """
    removed = 0
    root = Path(folder)
    if not root.is_dir():
        return 0
    for part in root.rglob(f".*{PART_SUFFIX}"):
        fields = part.name.rsplit(".", 3)  # [".<name>", "<pid>", "<random>", "part"]
        pid = fields[1] if len(fields) == 4 else ""
        if not pid.isdigit() or fsutil.pid_alive(int(pid)):
            continue
        try:
            part.unlink()
            removed += 1
        except OSError as exc:
            log.warning("Cannot remove stale temporary file %s: %s", part, exc)
    if removed:
        log.info("Removed %d temporary file(s) left by interrupted runs in %s.", removed, root)
    return removed

