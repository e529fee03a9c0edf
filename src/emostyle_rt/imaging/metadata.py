"""ICC profile and EXIF of encoded images, read and written on the bytes (no Pillow).

OpenCV's encoders drop both, so a styled photo would lose its date, camera and
GPS tags and, worse, its colour space (a Display P3 photo shown as sRGB shifts
colour). Here they are read from an input file and put back into the bytes
``cv2.imencode`` returns:

=======  =========================================  ==========================================
format   read                                       written
=======  =========================================  ==========================================
JPEG     APP2 ``ICC_PROFILE`` (all parts), APP1     the same, after SOI/APP0
PNG      ``iCCP`` (zlib), ``eXIf``                  the same, before the first ``IDAT``
WebP     ``ICCP``, ``EXIF`` of an extended file     simple VP8/VP8L turned into VP8X + chunks
TIFF     ICC tag 34675 (EXIF IFD: not carried)      ICC tag 34675 (EXIF: dropped, logged)
=======  =========================================  ==========================================

EXIF is kept as TIFF-structured bytes (what follows ``Exif\\0\\0``) with its
Orientation set to 1, since pixels are turned upright on read, and its
thumbnail (a small copy of the unstyled photo) removed. Broken metadata never
raises: it is dropped with a log warning and the image is still written.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Iterator

from .. import logutil
from .formats import FORMATS, METADATA_SUFFIXES, sniff_format

log = logging.getLogger(__name__)

#: Output extensions -> container kind this module writes metadata into (the table of ``emostyle_rt.imaging.formats``).
KINDS = METADATA_SUFFIXES
_MAX_ICC = 16 << 20  # a decompressed iCCP larger than this is refused (zlib bomb)
_ORIENTATION, _ICC_TAG, _EXIF_IFD, _EXTRA_SAMPLES, _SAMPLES = 0x0112, 34675, 34665, 338, 277
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class ImageMeta:
    """An image's ICC profile and EXIF (TIFF-structured, no ``Exif\\0\\0`` prefix); None when absent."""

    icc: bytes | None = None
    exif: bytes | None = None


class _Malformed(ValueError):
    """Metadata whose structure does not hold together."""


_BAD = (_Malformed, struct.error, IndexError, ValueError, zlib.error, OverflowError)


def _kind(data: bytes) -> str | None:
    """The container kind of encoded bytes this module reads and writes metadata in (``formats.sniff_format``)."""
    kind = sniff_format(data)
    return kind if kind is not None and FORMATS[kind].metadata else None


def warn_once(key: tuple[str, str], msg: str, *args: object) -> None:
    """Log a warning the first time ``key`` is seen in this process (one per kind of loss, not per file)."""
    logutil.warn_once(log, _warned, key, msg, *args)


# -- container walkers --------------------------------------------------------------------------------


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each segment before the scan data."""
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise _Malformed(f"no JPEG marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers
            i += 2
        elif marker in (0xDA, 0xD9):  # start of scan, end of image: metadata comes before
            return
        else:
            (n,) = struct.unpack_from(">H", data, i + 2)
            if n < 2 or i + 2 + n > len(data):
                raise _Malformed(f"JPEG segment at byte {i} runs past the end")
            yield marker, i + 4, i + 2 + n
            i += 2 + n


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each chunk; a bad CRC raises."""
    i = 8
    while i + 12 <= len(data):
        (n,) = struct.unpack_from(">I", data, i)
        kind, end = data[i + 4 : i + 8], i + 8 + n
        if end + 4 > len(data):
            raise _Malformed(f"PNG chunk {kind!r} runs past the end")
        if zlib.crc32(data[i + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            raise _Malformed(f"PNG chunk {kind!r} has a bad CRC")
        yield kind, i + 8, end
        if kind == b"IEND":
            return
        i = end + 4


def _riff_chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(FourCC, payload start, payload end) of each WebP chunk."""
    (size,) = struct.unpack_from("<I", data, 4)
    end, i = min(len(data), 8 + size), 12
    while i + 8 <= end:
        fourcc, (n,) = data[i : i + 4], struct.unpack_from("<I", data, i + 4)
        if i + 8 + n > end:
            raise _Malformed(f"WebP chunk {fourcc!r} runs past the end")
        yield fourcc, i + 8, i + 8 + n
        i += 8 + n + (n & 1)


def _tiff_ifd(data: bytes | bytearray, off: int) -> tuple[str, list[tuple[int, int, int, int]], int]:
    """(byte order, [(tag, type, count, entry offset)], offset of the next-IFD pointer) of the IFD at ``off``."""
    e = {b"II": "<", b"MM": ">"}.get(bytes(data[:2]))
    if e is None or struct.unpack_from(e + "H", data, 2)[0] != 42:
        raise _Malformed("no TIFF header")
    if off < 8:
        raise _Malformed(f"IFD offset {off} inside the header")
    (n,) = struct.unpack_from(e + "H", data, off)
    if off + 6 + 12 * n > len(data):
        raise _Malformed(f"IFD at {off} runs past the end")
    entries = [(*struct.unpack_from(e + "HHI", data, off + 2 + 12 * k), off + 2 + 12 * k) for k in range(n)]
    return e, entries, off + 2 + 12 * n


def _ifd0(data: bytes | bytearray) -> tuple[str, list[tuple[int, int, int, int]], int]:
    e = "<" if data[:2] == b"II" else ">"
    return _tiff_ifd(data, struct.unpack_from(e + "I", data, 4)[0])


def _value(data: bytes | bytearray, e: str, typ: int, count: int, pos: int) -> int:
    """First value of a SHORT or LONG entry."""
    if typ == 3:
        return struct.unpack_from(e + "H", data, pos + 8)[0]
    if typ == 4:
        return struct.unpack_from(e + "I", data, pos + 8)[0]
    raise _Malformed(f"entry type {typ} where SHORT or LONG was expected")


# -- EXIF and ICC checks ------------------------------------------------------------------------------


def orientation(exif: bytes | bytearray | None) -> int:
    """EXIF (or TIFF IFD0) Orientation 1..8; 1 when absent or unreadable."""
    try:
        b = exif or b""
        e, entries, _ = _ifd0(b)
        o = next((_value(b, e, t, c, p) for tag, t, c, p in entries if tag == _ORIENTATION), 1)
    except _BAD:
        return 1
    return o if 1 <= o <= 8 else 1


def clean_exif(exif: bytes) -> bytes:
    """EXIF with Orientation set to 1 and the thumbnail (IFD1) unlinked and blanked; malformed raises ValueError."""
    b = bytearray(exif)
    e, entries, next_at = _ifd0(b)
    for tag, typ, count, pos in entries:
        if tag == _ORIENTATION and count >= 1 and typ in (3, 4):
            struct.pack_into(e + ("H" if typ == 3 else "I"), b, pos + 8, 1)
    (ifd1,) = struct.unpack_from(e + "I", b, next_at)
    if ifd1:
        struct.pack_into(e + "I", b, next_at, 0)
        try:
            _, thumb, _ = _tiff_ifd(b, ifd1)
            fields = {tag: _value(b, e, t, c, p) for tag, t, c, p in thumb if tag in (0x0201, 0x0202)}
            start, n = fields[0x0201], fields[0x0202]
        except (*_BAD, KeyError):
            return bytes(b)  # no JPEG thumbnail found: the unlinked IFD1 is harmless
        if 8 <= start and start + n <= len(b):
            if start + n == len(b):
                del b[start:]
            else:
                b[start : start + n] = bytes(n)
    return bytes(b)


def _check_icc(icc: bytes) -> bytes:
    """The profile cut to its declared size; not an ICC profile raises."""
    if len(icc) < 128 or icc[36:40] != b"acsp":
        raise _Malformed("not an ICC profile (no 'acsp' signature)")
    (size,) = struct.unpack_from(">I", icc, 0)
    if not 128 <= size <= len(icc):
        raise _Malformed(f"ICC profile declares {size} bytes but has {len(icc)}")
    return icc[:size]


# -- reading ------------------------------------------------------------------------------------------


def _read_jpeg(data: bytes, source: object) -> tuple[bytes | None, bytes | None]:
    exif, parts = None, {}
    for marker, a, z in _jpeg_segments(data):
        if marker == 0xE1 and exif is None and data[a : a + 5] == b"Exif\x00":
            exif = data[a + 6 : z]
        elif marker == 0xE2 and data[a : a + 12] == b"ICC_PROFILE\x00" and z - a > 14:
            parts[data[a + 12]] = (data[a + 13], data[a + 14 : z])
    if not parts:
        return None, exif
    totals = {total for total, _ in parts.values()}
    if len(totals) != 1 or sorted(parts) != list(range(1, max(totals) + 1)):
        log.warning("ICC profile of %s is damaged (parts %s of %s); dropped.", source, sorted(parts), sorted(totals))
        return None, exif
    return b"".join(parts[k][1] for k in sorted(parts)), exif


def _read_png(data: bytes, source: object) -> tuple[bytes | None, bytes | None]:
    icc = exif = None
    for kind, a, z in _png_chunks(data):
        if kind == b"iCCP" and icc is None:
            name_end = data.index(b"\x00", a, z)
            inflate = zlib.decompressobj()
            icc = inflate.decompress(data[name_end + 2 : z], _MAX_ICC)
            if inflate.unconsumed_tail:
                raise _Malformed(f"iCCP profile over {_MAX_ICC} bytes")
        elif kind == b"eXIf" and exif is None:
            exif = data[a:z]
    return icc, exif


def _read_webp(data: bytes, source: object) -> tuple[bytes | None, bytes | None]:
    icc = exif = None
    for fourcc, a, z in _riff_chunks(data):
        if fourcc == b"ICCP" and icc is None:
            icc = data[a:z]
        elif fourcc == b"EXIF" and exif is None:
            exif = data[a + 6 : z] if data[a : a + 6] == b"Exif\x00\x00" else data[a:z]
    return icc, exif


def _read_tiff(data: bytes, source: object) -> tuple[bytes | None, bytes | None]:
    e, entries, _ = _ifd0(data)
    icc = None
    for tag, typ, count, pos in entries:
        if tag == _ICC_TAG and typ in (1, 7):
            (off,) = struct.unpack_from(e + "I", data, pos + 8) if count > 4 else (pos + 8,)
            if off + count > len(data):
                raise _Malformed("TIFF ICC profile runs past the end")
            icc = data[off : off + count]
        elif tag == _EXIF_IFD:
            warn_once(("read", "tiff-exif"), "EXIF of TIFF inputs is not carried over (only their ICC profile is).")
    return icc, None


_READERS = {"jpeg": _read_jpeg, "png": _read_png, "webp": _read_webp, "tiff": _read_tiff}


def read_meta(data: bytes, source: object = "image") -> ImageMeta:
    """ICC profile and EXIF (orientation reset, thumbnail removed) of an encoded image; never raises.

    ``source`` names the file in warnings. A part that cannot be parsed is
    dropped with a warning; the rest is kept.
    """
    kind = _kind(data)
    if kind is None:
        return ImageMeta()
    try:
        icc, exif = _READERS[kind](data, source)
    except _BAD as exc:
        log.warning("Metadata of %s cannot be read (%s); the output gets none.", source, exc)
        return ImageMeta()
    try:
        icc = _check_icc(icc) if icc else None
    except _BAD as exc:
        log.warning("ICC profile of %s is damaged (%s); dropped.", source, exc)
        icc = None
    try:
        exif = clean_exif(exif) if exif else None
    except _BAD as exc:
        log.warning("EXIF of %s is damaged (%s); dropped.", source, exc)
        exif = None
    return ImageMeta(icc, exif)


# -- writing ------------------------------------------------------------------------------------------


def _write_jpeg(data: bytes, meta: ImageMeta) -> bytes:
    at = 2
    while data[at : at + 2] == b"\xff\xe0":  # keep APP0 (JFIF) first
        at += 2 + struct.unpack_from(">H", data, at + 2)[0]
    extra = b""
    if meta.exif:
        if len(meta.exif) + 8 > 0xFFFF:
            warn_once(("jpeg", "exif-size"), "EXIF over 64 KB does not fit a JPEG segment; dropped.")
        else:
            extra += b"\xff\xe1" + struct.pack(">H", len(meta.exif) + 8) + b"Exif\x00\x00" + meta.exif
    if meta.icc:
        step = 0xFFFF - 16
        parts = [meta.icc[k : k + step] for k in range(0, len(meta.icc), step)]
        if len(parts) > 255:
            warn_once(("jpeg", "icc-size"), "ICC profile too large for JPEG (over 255 segments); dropped.")
        for k, part in enumerate(parts if len(parts) <= 255 else []):
            head = struct.pack(">H", len(part) + 16) + b"ICC_PROFILE\x00" + bytes((k + 1, len(parts)))
            extra += b"\xff\xe2" + head + part
    return data[:at] + extra + data[at:]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _write_png(data: bytes, meta: ImageMeta) -> bytes:
    extra = b""
    if meta.icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(meta.icc, 9))
    if meta.exif:
        extra += _png_chunk(b"eXIf", meta.exif)
    drop = ({b"iCCP", b"sRGB"} if meta.icc else set()) | ({b"eXIf"} if meta.exif else set())
    out, placed = [data[:8]], False
    for kind, a, z in _png_chunks(data):
        if kind == b"IDAT" and not placed:
            out.append(extra)
            placed = True
        if kind not in drop:
            out.append(data[a - 8 : z + 4])
    if not placed:
        raise _Malformed("PNG without IDAT")
    return b"".join(out)


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + b"\x00" * (len(payload) & 1)


def _write_webp(data: bytes, meta: ImageMeta) -> bytes:
    chunks = [(fourcc, data[a:z]) for fourcc, a, z in _riff_chunks(data)]
    first, head = chunks[0]
    if first == b"VP8X":
        flags, w1, h1 = head[0], head[4:7], head[7:10]
        chunks = chunks[1:]
    elif first == b"VP8 ":  # frame tag (3), start code (3), 14-bit width and height
        w, h = (v & 0x3FFF for v in struct.unpack_from("<HH", head, 6))
        flags, w1, h1 = 0, (w - 1).to_bytes(3, "little"), (h - 1).to_bytes(3, "little")
    elif first == b"VP8L":  # signature, then 14-bit width-1, 14-bit height-1, alpha_is_used bit
        (b,) = struct.unpack_from("<I", head, 1)
        flags = 0x10 if b >> 28 & 1 else 0
        w1, h1 = (b & 0x3FFF).to_bytes(3, "little"), (b >> 14 & 0x3FFF).to_bytes(3, "little")
    else:
        raise _Malformed(f"WebP starting with chunk {first!r}")
    flags = flags & ~0x28 | (0x20 if meta.icc else 0) | (0x08 if meta.exif else 0)  # ICC, EXIF bits
    body = _riff_chunk(b"VP8X", bytes((flags, 0, 0, 0)) + w1 + h1)
    if meta.icc:
        body += _riff_chunk(b"ICCP", meta.icc)
    body += b"".join(_riff_chunk(f, p) for f, p in chunks if f not in (b"ICCP", b"EXIF"))
    if meta.exif:
        body += _riff_chunk(b"EXIF", meta.exif)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _write_tiff(data: bytes, meta: ImageMeta) -> bytes:
    """Move IFD0 to the end with the ICC tag (and ExtraSamples=alpha for 4 samples) added."""
    if meta.exif:
        warn_once(("tiff", "exif"), "EXIF is not written into TIFF outputs; dropped (the ICC profile is kept).")
    e, entries, next_at = _ifd0(data)
    tags = {tag: bytes(data[p : p + 12]) for tag, _, _, p in entries}
    out = bytearray(data) + b"\x00" * (len(data) & 1)
    samples = next((_value(data, e, t, c, p) for tag, t, c, p in entries if tag == _SAMPLES), 1)
    if samples == 4 and _EXTRA_SAMPLES not in tags:
        tags[_EXTRA_SAMPLES] = struct.pack(e + "HHIHH", _EXTRA_SAMPLES, 3, 1, 2, 0)  # unassociated alpha
    if meta.icc:
        tags[_ICC_TAG] = struct.pack(e + "HHII", _ICC_TAG, 7, len(meta.icc), len(out))
        out += meta.icc + b"\x00" * (len(meta.icc) & 1)
    if len(tags) == len(entries) and not meta.icc:
        return data
    struct.pack_into(e + "I", out, 4, len(out))
    out += struct.pack(e + "H", len(tags)) + b"".join(tags[t] for t in sorted(tags)) + data[next_at : next_at + 4]
    return bytes(out)


def _checked(meta: ImageMeta) -> ImageMeta:
    """``meta`` without a part that is not an ICC profile or TIFF-structured EXIF (dropped, logged)."""
    icc, exif = meta.icc, meta.exif
    try:
        icc = _check_icc(icc) if icc else None
    except _BAD as exc:
        log.warning("The ICC profile to write is damaged (%s); dropped.", exc)
        icc = None
    try:
        exif = exif if exif and _ifd0(exif) else None
    except _BAD as exc:
        log.warning("The EXIF to write is damaged (%s); dropped.", exc)
        exif = None
    return ImageMeta(icc, exif)


_WRITERS = {"jpeg": _write_jpeg, "png": _write_png, "webp": _write_webp, "tiff": _write_tiff}


def embed_meta(data: bytes, ext: str, meta: ImageMeta | None) -> bytes:
    """``data`` (as ``cv2.imencode`` wrote it for ``ext``) with ``meta`` put in; never raises.

    A format that cannot carry the metadata logs one warning naming what was
    dropped; a failure to insert it logs a warning and returns ``data`` as is.
    """
    meta = meta or ImageMeta()
    kind = KINDS.get(ext.lower())
    if kind is None:
        what = " and ".join(n for n, v in (("ICC profile", meta.icc), ("EXIF", meta.exif)) if v)
        if what:
            warn_once((ext, what), "%s outputs cannot carry the input's %s; dropped%s.", ext, what,
                       " (colours may look different: the pixels are in the input's colour space)" if meta.icc else "")
        return data
    meta = _checked(meta)
    if kind != "tiff" and not (meta.icc or meta.exif):
        return data
    try:
        return _WRITERS[kind](data, meta)
    except _BAD as exc:
        log.warning("Metadata could not be written into the %s output (%s); written without it.", ext, exc)
        return data


def file_orientation(data: bytes) -> int:
    """The Orientation OpenCV applies on decode: EXIF's (JPEG, PNG, WebP) or TIFF IFD0's; 1 if none."""
    kind = _kind(data)
    if kind == "tiff":
        return orientation(data)
    try:
        return orientation(_READERS[kind](data, "image")[1]) if kind else 1
    except _BAD:
        return 1


def may_have_alpha(data: bytes) -> bool:
    """Whether the header says the image has an alpha channel (PNG, WebP, TIFF); never raises."""
    try:
        kind = _kind(data)
        if kind == "png":
            if data[25] in (4, 6):  # colour type: grey + alpha, RGBA
                return True
            return any(k == b"tRNS" for k, _, _ in _chunks_before_idat(data))
        if kind == "webp":
            fourcc = data[12:16]
            return fourcc == b"VP8X" and bool(data[20] & 0x10) or fourcc == b"VP8L" and bool(data[21 + 3] >> 4 & 1)
        if kind == "tiff":
            e, entries, _ = _ifd0(data)
            return any(tag == _EXTRA_SAMPLES for tag, *_ in entries) or next(
                (_value(data, e, t, c, p) for tag, t, c, p in entries if tag == _SAMPLES), 1) in (2, 4)
    except _BAD:
        return False
    return False


def _chunks_before_idat(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    for chunk in _png_chunks(data):
        if chunk[0] == b"IDAT":
            return
        yield chunk
