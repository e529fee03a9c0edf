"""Reading, checking and converting input images; atomic image writes.

Everything inside the runtime is HxWx3 uint8 RGB. Arrays are RGB unless the
caller says BGR; grey (HxW, HxWx1) is converted; the alpha of RGBA/BGRA arrays
and files is dropped, or with ``alpha=True`` returned as a fourth channel (the
Stylizer passes it through). Files are decoded by OpenCV (EXIF orientation
applied) after their header has been checked against a pixel limit, so a
decompression bomb is refused before it is decoded. Writes keep alpha (PNG,
WebP, TIFF) and carry ICC profile and EXIF over (see ``metadata``).
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Iterable, Union

import cv2
import numpy as np

from .. import fsutil
from ..errors import (
    ImageEncodeError,
    ImageReadError,
    ImageWriteError,
    InvalidArgumentError,
    InvalidImageError,
    note,
    sentence,
)
from ..fsutil import PART_SUFFIX
from .formats import sniff_format
from .metadata import KINDS, ImageMeta, embed_meta, file_orientation, may_have_alpha, read_meta, warn_once

log = logging.getLogger(__name__)

#: Largest image (in pixels) read from a file by default: 100 megapixels.
MAX_PIXELS = 100_000_000
#: How the pixel limit is set, as error messages name it.
PIXEL_LIMIT_NAMES = "Stylizer max_pixels; --max-pixels of emostyle and emostyle serve"
#: OpenCV's own decoder limit (``OPENCV_IO_MAX_IMAGE_PIXELS``, default 2**30): a larger ``max_pixels`` needs it raised.
OPENCV_MAX_PIXELS = 1 << 30
#: Encoder quality when none is given: JPEG 95, WebP 90 (lossy: a lossless WebP photo is ~10x larger).
DEFAULT_QUALITY = {"jpeg": 95, "webp": 90}
#: Output extensions that keep an alpha channel; others drop it (one warning).
ALPHA_EXTS = (".png", ".webp", ".tif", ".tiff")

ImageInput = Union[str, os.PathLike, np.ndarray]


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF, BMP, WebP or TIFF header; None if unknown."""
    kind = sniff_format(data)
    try:
        if kind == "png":
            return struct.unpack(">II", data[16:24])
        if kind == "gif":
            return struct.unpack("<HH", data[6:10])
        if kind == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if kind == "webp":
            return _webp_size(data)
        if kind == "jpeg":
            return _jpeg_size(data)
        if kind == "tiff":
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
            + note(f"at most {max_pixels} pixels ({PIXEL_LIMIT_NAMES})", w * h)
        )


def _file_bytes(p: Path) -> bytes:
    if p.exists() and not p.is_file():  # a folder, pipe or device: reading could block or never end
        raise ImageReadError(f"Image path {p} is not a regular file." + note("an image file", "a folder, pipe or device"))
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"Image file {p} does not exist.") from None
    except OSError as exc:
        raise ImageReadError(f"Image file {p} cannot be read: {exc.strerror or exc}.") from exc


def read_image_meta(path: str | os.PathLike) -> ImageMeta:
    """The ICC profile and EXIF of an image file, for ``write_image(meta=...)``.

    EXIF comes with Orientation 1 (``read_image`` already turned the pixels) and
    without its thumbnail. Damaged metadata is dropped with a warning; only an
    unreadable file raises ``ImageReadError``.
    """
    p = Path(path)
    return read_meta(_file_bytes(p), p)


def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS, alpha: bool = False) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, EXIF orientation applied.

    ``alpha=True``: a file with an alpha channel (PNG, WebP, TIFF) comes back as
    HxWx4 RGBA, its alpha scaled to 8 bits and turned like the colour.
    """
    p = Path(path)
    return decode_image(_file_bytes(p), source=p, max_pixels=max_pixels, alpha=alpha)


def decode_image(data: bytes, *, source: object = "image", max_pixels: int = MAX_PIXELS,
                 alpha: bool = False) -> np.ndarray:
    """Decode an encoded image (the bytes of a file or an upload) as ``read_image`` reads a file.

    The pixel limit is checked from the header before decoding (a decompression
    bomb is refused unread); ``source`` names the image in error messages.
    """
    p = source
    size = header_size(data)
    if size is not None:
        _check_pixels(p, *size, max_pixels)
    try:
        image = _imdecode_rgb(data) if data else None
    except cv2.error as exc:  # e.g. a declared size over OpenCV's own pixel limit
        raise ImageReadError(f"File {p} cannot be decoded: {str(exc).strip().splitlines()[-1]}.") from exc
    if image is None:
        raise ImageReadError(
            f"File {p} is not an image OpenCV can decode ({len(data)} bytes)."
            + note("a JPEG, PNG, WebP, BMP, TIFF or similar file", f"a file starting {data[:8]!r}")
        )
    _check_pixels(p, image.shape[1], image.shape[0], max_pixels)
    a = _alpha_plane(data, image, p) if alpha and may_have_alpha(data) else None
    return image if a is None else np.dstack([image, a])


def _imdecode_rgb(data: bytes) -> np.ndarray | None:
    """OpenCV's colour decode as RGB: IMREAD_COLOR_RGB (OpenCV 4.11+), else IMREAD_COLOR and a BGR -> RGB swap.

    The two give the same pixels (the swap is exact); the fallback keeps the
    declared floor, OpenCV 4.x older than 4.11 (scripts/check_floors.sh runs it).
    """
    buf = np.frombuffer(data, np.uint8)
    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    if flag is not None:
        return cv2.imdecode(buf, flag)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


_ORIENT = {  # EXIF Orientation -> how OpenCV turns the stored pixels upright
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1], 5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1), 7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: np.rot90(a, 1),
}


def _alpha_plane(data: bytes, rgb: np.ndarray, source: Path) -> np.ndarray | None:
    """The file's alpha as HxW uint8, turned as OpenCV turned ``rgb``; None when it has none.

    IMREAD_UNCHANGED keeps alpha but neither applies the orientation nor makes
    8 bits, so both are done here; of the turned and unturned planes, the one
    whose colour matches ``rgb`` wins (OpenCV versions differ in which formats they turn).
    """
    try:
        full = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        full = None
    if full is None or full.ndim != 3 or full.shape[2] != 4 or full.dtype not in (np.uint8, np.uint16):
        return None
    if full.dtype == np.uint16:
        full = (full >> 8).astype(np.uint8)
    o = file_orientation(data)
    fits = [t for t in ([full] if o == 1 else [_ORIENT[o](full), full]) if t.shape[:2] == rgb.shape[:2]]
    if not fits:
        log.warning("Alpha of %s does not match its colour image; dropped.", source)
        return None
    if len(fits) > 1:
        fits.sort(key=lambda t: np.abs(t[::8, ::8, 2::-1].astype(np.int16) - rgb[::8, ::8]).mean())
    return np.ascontiguousarray(fits[0][..., 3])


def to_rgb(image: np.ndarray, *, bgr: bool = False, alpha: bool = False) -> np.ndarray:
    """Check an array and return it as C-contiguous HxWx3 uint8 RGB.

    Accepts HxW, HxWx1, HxWx3 and HxWx4 uint8 arrays; ``bgr`` says the colour
    channels are in OpenCV's order. Alpha is dropped, or with ``alpha=True``
    kept: an HxWx4 array comes back as HxWx4 RGBA.
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
    if image.shape[2] == 4 and alpha:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA) if bgr else np.ascontiguousarray(image)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    if bgr:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def load_image(
    image: ImageInput, *, bgr: bool = False, max_pixels: int = MAX_PIXELS, alpha: bool = False
) -> np.ndarray:
    """A path or an array -> HxWx3 uint8 RGB, or HxWx4 RGBA with ``alpha`` (``bgr`` applies to arrays only)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels=max_pixels, alpha=alpha)
    if isinstance(image, np.ndarray) and image.ndim >= 2 and image.shape[0] * image.shape[1] > max_pixels:
        raise InvalidImageError(
            f"Image array of {image.shape[1]}x{image.shape[0]} has more pixels than the limit."
            + note(f"at most {max_pixels} pixels ({PIXEL_LIMIT_NAMES})", image.shape[0] * image.shape[1])
        )
    return to_rgb(image, bgr=bgr, alpha=alpha)


def write_image(
    path: str | os.PathLike, image: np.ndarray, *, quality: int | None = None, meta: ImageMeta | None = None
) -> Path:
    """Write an HxWx3 RGB or HxWx4 RGBA uint8 image atomically: a temporary file in the same folder, then rename.

    The format follows the file extension (none: PNG). Alpha is kept in PNG,
    WebP and TIFF and dropped elsewhere (one warning). ``quality`` (1..100) is
    for JPEG (default 95) and WebP (default 90, lossy); lossless formats ignore
    it. ``meta`` (``read_image_meta`` of the input) goes into JPEG, PNG and WebP,
    and its ICC profile into TIFF. A reader never sees a half-written file.
    """
    p = Path(path)
    write_bytes_atomic(p, encode_image(image, p.suffix.lower() or ".png", quality=quality, meta=meta, target=p))
    return p


def encode_image(image: np.ndarray, ext: str, *, quality: int | None = None, meta: ImageMeta | None = None,
                 target: object = "an image") -> bytes:
    """The bytes ``write_image`` writes for a file ending in ``ext`` (".jpg", ".png", ...): for uploads and replies.

    Same rules: alpha kept in PNG, WebP and TIFF only; ``quality`` for JPEG /
    WebP; ``meta`` embedded. ``target`` names the destination in error messages.
    """
    p = target
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100
    ):
        raise InvalidArgumentError("Image quality must be an integer from 1 to 100." + note("1..100", repr(quality)))
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidImageError(f"Cannot write {p}: not an RGB or RGBA image." + note("uint8 HxWx3 or HxWx4", got))
    if image.shape[2] == 4 and ext not in ALPHA_EXTS:
        warn_once((ext, "alpha"), "%s outputs have no alpha channel; the transparency of RGBA images is dropped "
                  "(write .png, .webp or .tif to keep it).", ext)
        image = image[..., :3]
    bgr = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    kind = KINDS.get(ext, "")
    flag = {"jpeg": cv2.IMWRITE_JPEG_QUALITY, "webp": cv2.IMWRITE_WEBP_QUALITY}.get(kind)
    params = [] if flag is None else [flag, int(quality or DEFAULT_QUALITY[kind])]
    try:
        ok, buf = cv2.imencode(ext, bgr, params)
    except cv2.error as exc:
        raise ImageEncodeError(f"Cannot encode an image as {ext!r} for {p}: {exc}.") from exc
    if not ok:
        raise ImageEncodeError(f"Cannot encode an image as {ext!r} for {p}.")
    return embed_meta(buf.tobytes(), ext, meta)


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """``image`` (HxWxC) reflect-padded (reflect-101, ``dcb|abcd``) at the bottom and right to sides that are
    multiples of ``multiple``; the same array when they already are. What style graphs and engines are fed."""
    ph, pw = -image.shape[0] % multiple, -image.shape[1] % multiple
    if not ph and not pw:
        return image
    return cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically (``fsutil.write_bytes_atomic``); OS failures raise ``ImageWriteError``.

    Folder not creatable or not writable, disk full: a typed error naming the
    path. The temporary file is named by ``fsutil.temp_name``; ``clean_stale_parts``
    removes those left by a killed process.
    """
    try:
        fsutil.write_bytes_atomic(path, data)
    except OSError as exc:
        raise ImageWriteError(
            f"Cannot write {path}: " + sentence(exc.strerror or exc)
            + note("a writable folder with free space", Path(path).parent)
        ) from exc


def clean_stale_parts(folders: Iterable[str | os.PathLike], *, started: float) -> int:
    """Remove the temporary files killed writers left in ``folders`` (not below them); how many.

    A process killed mid-write leaves its temporary file behind (never the
    output itself). Only files ``fsutil.stale_temp_files`` lists go: our exact
    name, writer gone, older than ``started``; look-alikes of other programs,
    live writers' files and anything in subfolders are left alone.
    """
    removed = 0
    for part in fsutil.stale_temp_files(folders, started):
        try:
            part.unlink()
            removed += 1
            log.info("Removed %s, left by an interrupted run.", part)
        except OSError as exc:
            log.warning("Cannot remove stale temporary file %s: %s", part, sentence(exc.strerror or exc))
    return removed

