"""ICC profile and EXIF carried from a photo into its styled output, checked by our reader and by Pillow.

The input files are built here byte by byte (a Display P3 ICC profile, an EXIF
block with orientation 6, a date, GPS and a thumbnail, inserted into an OpenCV
JPEG), so neither side of the check is the code under test alone.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from skimage import data

from emostyle_rt.imaging import metadata
from emostyle_rt.errors import InvalidArgumentError
from emostyle_rt.imaging.io import ImageMeta, read_image, read_image_meta, write_image
from emostyle_rt.imaging.metadata import clean_exif, embed_meta, orientation, read_meta

PHOTO = np.ascontiguousarray(data.astronaut()[:301, :255])  # odd sizes on purpose
DATE = "2024:05:17 10:20:30"
LAT = ((48, 1), (51, 1), (2417, 100))


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def display_p3_icc() -> bytes:
    """A valid ICC v2 display profile with Display P3 primaries (D50-adapted) and gamma 2.2 curves."""
    desc = b"Display P3 (test)"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(desc) + 1) + desc + b"\0" + bytes(4 + 4 + 2 + 1 + 67),
        b"cprt": b"text\0\0\0\0" + b"No copyright, test profile\0",
        b"wtpt": b"XYZ \0\0\0\0" + _s15(0.964203) + _s15(1.0) + _s15(0.824905),
        b"rXYZ": b"XYZ \0\0\0\0" + _s15(0.515102) + _s15(0.241182) + _s15(-0.001050),
        b"gXYZ": b"XYZ \0\0\0\0" + _s15(0.291965) + _s15(0.692236) + _s15(0.041882),
        b"bXYZ": b"XYZ \0\0\0\0" + _s15(0.157153) + _s15(0.066582) + _s15(0.784073),
        b"rTRC": b"curv\0\0\0\0" + struct.pack(">IH", 1, 563) + b"\0\0",  # gamma 2.2 in u8.8
    }
    tags[b"gTRC"] = tags[b"bTRC"] = tags[b"rTRC"]
    table, body, at = b"", b"", 128 + 4 + 12 * len(tags)
    for sig, blob in tags.items():
        blob += b"\0" * (-len(blob) % 4)
        table += sig + struct.pack(">II", at + len(body), len(blob))
        body += blob
    size = at + len(body)
    header = (struct.pack(">I", size) + b"\0\0\0\0" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2024, 5, 17, 10, 20, 30) + b"acsp" + bytes(24) + struct.pack(">I", 0)
              + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + bytes(4 + 16 + 28))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def build_exif(e: str = "<", orient: int = 6, thumb: bytes = b"\xff\xd8thumb\xff\xd9") -> tuple[bytes, dict[str, int]]:
    """A TIFF-structured EXIF: IFD0 (Make, Model, Orientation, Exif and GPS pointers), Exif IFD
    (DateTimeOriginal), GPS IFD (latitude), IFD1 pointing at a thumbnail at the end.

    Returns the bytes and where the orientation value, the next-IFD pointer and the thumbnail are.
    """
    def asc(s: str) -> tuple[int, int, bytes]:
        return 2, len(s) + 1, s.encode() + b"\0"

    def rat(*vals: tuple[int, int]) -> tuple[int, int, bytes]:
        return 5, len(vals), b"".join(struct.pack(e + "II", n, d) for n, d in vals)

    def short(v: int) -> tuple[int, int, bytes]:
        return 3, 1, struct.pack(e + "H", v)

    def long_(v: int) -> tuple[int, int, bytes]:
        return 4, 1, struct.pack(e + "I", v)

    counts = [5, 1, 4, 2]
    offs = [8]
    for n in counts[:-1]:
        offs.append(offs[-1] + 6 + 12 * n)
    data_at = offs[-1] + 6 + 12 * counts[-1]
    ifds = [
        [(0x010F, *asc("EmoCam")), (0x0110, *asc("Model X-100")), (0x0112, *short(orient)),
         (0x8769, *long_(offs[1])), (0x8825, *long_(offs[2]))],
        [(0x9003, *asc(DATE))],
        [(1, *asc("N")), (2, *rat(*LAT)), (3, *asc("E")), (4, *rat((2, 1), (21, 1), (700, 100)))],
    ]
    out, extra, where = bytearray(b"II*\0" if e == "<" else b"MM\0*") + struct.pack(e + "I", 8), b"", {}

    def put(entries: list, next_ifd: int) -> None:
        nonlocal extra
        out.extend(struct.pack(e + "H", len(entries)))
        for tag, typ, count, payload in entries:
            if tag == 0x0112:
                where["orientation"] = len(out) + 8
            if len(payload) <= 4:
                value = payload + b"\0" * (4 - len(payload))
            else:
                value = struct.pack(e + "I", data_at + len(extra))
                extra += payload + b"\0" * (len(payload) & 1)
            out.extend(struct.pack(e + "HHI", tag, typ, count) + value)
        where.setdefault("next", len(out))
        out.extend(struct.pack(e + "I", next_ifd))

    # IFD1 goes last in the IFD area; the thumbnail goes after all other data, so its offset is known at the end.
    for k, entries in enumerate(ifds):
        put(entries, offs[3] if k == 0 else 0)
    thumb_at = data_at + len(extra)
    put([(0x0201, *long_(thumb_at)), (0x0202, *long_(len(thumb)))], 0)
    assert len(out) == data_at
    where["thumb"] = thumb_at
    return bytes(out) + extra + thumb, where


def jpeg_with(rgb: np.ndarray, exif: bytes | None, icc: bytes | None, chunk: int = 65519) -> bytes:
    """An OpenCV JPEG with APP1 Exif and APP2 ICC_PROFILE segments inserted by hand after APP0."""
    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    jpg = buf.tobytes()
    at = 4 + struct.unpack(">H", jpg[4:6])[0]  # after SOI and APP0
    segs = b""
    if exif:
        segs += b"\xff\xe1" + struct.pack(">H", len(exif) + 8) + b"Exif\0\0" + exif
    if icc:
        parts = [icc[k : k + chunk] for k in range(0, len(icc), chunk)]
        for k, p in enumerate(parts):
            segs += b"\xff\xe2" + struct.pack(">H", len(p) + 16) + b"ICC_PROFILE\0" + bytes((k + 1, len(parts))) + p
    return jpg[:at] + segs + jpg[at:]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metadata, "_warned", set())


@pytest.fixture(scope="module")
def icc() -> bytes:
    return display_p3_icc()


@pytest.fixture
def src(tmp_path: Path, icc: bytes) -> Path:
    p = tmp_path / "in.jpg"
    p.write_bytes(jpeg_with(PHOTO, build_exif()[0], icc))
    return p


# -- EXIF cleaning -------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_clean_exif_resets_orientation_and_drops_thumbnail_only(order: str) -> None:
    exif, where = build_exif(order, orient=6)
    assert orientation(exif) == 6
    clean = clean_exif(exif)
    assert orientation(clean) == 1
    assert len(clean) == where["thumb"]  # the thumbnail (a copy of the unstyled photo) is gone
    changed = {i for i in range(len(clean)) if clean[i] != exif[i]}
    allowed = set(range(where["orientation"], where["orientation"] + 2)) | set(range(where["next"], where["next"] + 4))
    assert changed and changed <= allowed  # every other byte, so every other tag, is untouched


def test_pillow_reads_the_test_inputs_as_intended(src: Path, icc: bytes) -> None:
    """Independent check of the hand-built inputs: Pillow sees the profile, orientation 6, date and GPS."""
    Image = pytest.importorskip("PIL.Image")
    ImageCms = pytest.importorskip("PIL.ImageCms")
    im = Image.open(src)
    assert im.info["icc_profile"] == icc
    assert "P3" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    ex = im.getexif()
    assert ex[0x0112] == 6 and ex[0x010F] == "EmoCam"
    assert ex.get_ifd(0x8769)[0x9003] == DATE
    assert ex.get_ifd(0x8825)[1] == "N" and [float(v) for v in ex.get_ifd(0x8825)[2]] == [48, 51, 24.17]


# -- carried into every output format ------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp"])
def test_icc_and_exif_are_carried_with_orientation_1(tmp_path: Path, src: Path, icc: bytes, ext: str) -> None:
    meta = read_image_meta(src)
    assert meta.icc == icc and orientation(meta.exif) == 1
    upright = read_image(src)
    assert upright.shape == (255, 301, 3)  # orientation 6 applied on read
    out = write_image(tmp_path / f"out{ext}", upright, meta=meta)
    bare = write_image(tmp_path / f"bare{ext}", upright)
    # our reader: the same profile, and the EXIF exactly as cleaned
    got = read_meta(out.read_bytes())
    assert got == ImageMeta(icc, clean_exif(build_exif()[0]))
    # OpenCV decodes the same pixels with and without the metadata (and does not turn them again)
    with_meta = cv2.imdecode(np.frombuffer(out.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(with_meta, cv2.imdecode(np.frombuffer(bare.read_bytes(), np.uint8), cv2.IMREAD_COLOR))
    # Pillow, independently
    Image = pytest.importorskip("PIL.Image")
    im = Image.open(out)
    im.load()
    assert im.size == (301, 255)
    assert im.info["icc_profile"] == icc
    ex = im.getexif()
    assert ex[0x0112] == 1 and ex[0x010F] == "EmoCam" and ex[0x0110] == "Model X-100"
    assert ex.get_ifd(0x8769)[0x9003] == DATE
    gps = ex.get_ifd(0x8825)
    assert gps[1] == "N" and [float(v) for v in gps[2]] == [48, 51, 24.17] and gps[3] == "E"


def test_webp_extended_header_is_consistent(tmp_path: Path, src: Path, icc: bytes) -> None:
    out = write_image(tmp_path / "o.webp", read_image(src), meta=read_image_meta(src)).read_bytes()
    assert out[:4] == b"RIFF" and struct.unpack("<I", out[4:8])[0] == len(out) - 8 and len(out) % 2 == 0
    assert out[12:16] == b"VP8X" and out[20] & 0x20 and out[20] & 0x08 and not out[20] & 0x10  # ICC, EXIF, no alpha
    w, h = (int.from_bytes(out[i : i + 3], "little") + 1 for i in (24, 27))
    assert (w, h) == (301, 255)
    fourccs = [f for f, _, _ in metadata._riff_chunks(out)]
    assert fourccs == [b"VP8X", b"ICCP", b"VP8 ", b"EXIF"]  # the order the WebP container spec requires


def test_webp_with_alpha_keeps_alpha_flag(tmp_path: Path, icc: bytes) -> None:
    rgba = np.dstack([PHOTO, np.tile(np.arange(255, dtype=np.uint8), (301, 1))])
    out = write_image(tmp_path / "a.webp", rgba, meta=ImageMeta(icc=icc))
    b = out.read_bytes()
    assert b[20] & 0x10 and b[20] & 0x20 and read_meta(b).icc == icc
    np.testing.assert_array_equal(read_image(out, alpha=True)[..., 3], rgba[..., 3])


def test_tiff_carries_icc_and_drops_exif_with_a_warning(tmp_path: Path, src: Path, icc: bytes,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "emostyle_rt"):
        out = write_image(tmp_path / "o.tif", read_image(src), meta=read_image_meta(src))
    assert "EXIF is not written into TIFF" in caplog.text
    assert read_image_meta(out) == ImageMeta(icc, None)
    np.testing.assert_array_equal(read_image(out), read_image(src))
    Image = pytest.importorskip("PIL.Image")
    assert Image.open(out).info["icc_profile"] == icc


def test_png_and_webp_inputs_from_pillow(tmp_path: Path, icc: bytes) -> None:
    """Metadata written by a second encoder (Pillow) is read back by ours."""
    Image = pytest.importorskip("PIL.Image")
    exif = build_exif(">", orient=3)[0]
    for ext, kw in ((".png", {}), (".webp", {"quality": 80})):
        p = tmp_path / f"pil{ext}"
        Image.fromarray(PHOTO).save(p, icc_profile=icc, exif=b"Exif\0\0" + exif, **kw)
        meta = read_image_meta(p)
        assert meta.icc == icc, ext
        assert meta.exif is not None and orientation(meta.exif) == 1 and b"EmoCam" in meta.exif, ext
        assert read_image(p).shape == PHOTO.shape  # orientation 3 keeps the shape


def test_large_icc_spans_several_jpeg_segments(tmp_path: Path, icc: bytes) -> None:
    big = bytearray(icc + bytes(150_000))
    struct.pack_into(">I", big, 0, len(big))
    out = write_image(tmp_path / "big.jpg", PHOTO, meta=ImageMeta(icc=bytes(big))).read_bytes()
    assert out.count(b"ICC_PROFILE\0") == 3
    assert read_meta(out).icc == bytes(big)
    Image = pytest.importorskip("PIL.Image")
    assert Image.open(io.BytesIO(out)).info["icc_profile"] == bytes(big)


def test_formats_without_metadata_warn_once(tmp_path: Path, src: Path, caplog: pytest.LogCaptureFixture) -> None:
    meta = read_image_meta(src)
    with caplog.at_level(logging.WARNING, "emostyle_rt"):
        for k in range(3):
            write_image(tmp_path / f"o{k}.bmp", PHOTO, meta=meta)
    msgs = [r.getMessage() for r in caplog.records if "cannot carry" in r.getMessage()]
    assert len(msgs) == 1 and "ICC profile and EXIF" in msgs[0] and ".bmp" in msgs[0]


def test_no_meta_means_plain_encoder_output(tmp_path: Path) -> None:
    for ext in (".jpg", ".png", ".webp"):
        ok, buf = cv2.imencode(ext, PHOTO[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == ".jpg" else
                               [cv2.IMWRITE_WEBP_QUALITY, 90] if ext == ".webp" else [])
        assert write_image(tmp_path / f"p{ext}", PHOTO).read_bytes() == buf.tobytes()
        assert read_image_meta(tmp_path / f"p{ext}") == ImageMeta()


# -- damaged metadata never raises ---------------------------------------------------------------------


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize(
    "case",
    ["exif-bad-header", "exif-ifd-past-end", "exif-truncated", "icc-part-missing", "icc-not-a-profile",
     "png-bad-zlib", "png-bad-crc", "webp-chunk-too-long"],
)
def test_damaged_metadata_is_dropped_with_a_warning(tmp_path: Path, icc: bytes, case: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    exif = build_exif()[0]
    ok, buf = cv2.imencode(".jpg", PHOTO)
    plain = buf.tobytes()
    if case == "exif-bad-header":
        blob = _with_app1(plain, b"Exif\0\0" + b"XX*\0" + exif[4:])
    elif case == "exif-ifd-past-end":
        blob = _with_app1(plain, b"Exif\0\0" + exif[:4] + struct.pack("<I", 10**6) + exif[8:])
    elif case == "exif-truncated":
        blob = _with_app1(plain, b"Exif\0\0" + exif[:20])
    elif case == "icc-part-missing":
        blob = jpeg_with(PHOTO, exif, icc, chunk=200).replace(b"ICC_PROFILE\0\x02", b"ICC_PROFILE\0\x09", 1)
    elif case == "icc-not-a-profile":
        blob = jpeg_with(PHOTO, exif, b"x" * 300)
    else:
        src = ".png" if case.startswith("png") else ".webp"
        good = embed_meta(cv2.imencode(src, PHOTO)[1].tobytes(), src, ImageMeta(icc, exif))
        b = bytearray(good)
        if case == "png-bad-zlib":  # garbage inside the compressed profile, with a correct CRC
            start = good.index(b"iCCP") - 4
            n = struct.unpack_from(">I", good, start)[0]
            at = start + 8 + len(b"ICC Profile\0\0")
            b[at : at + 8] = b"garbage!"
            struct.pack_into(">I", b, start + 8 + n, zlib.crc32(bytes(b[start + 4 : start + 8 + n])))
        elif case == "png-bad-crc":
            b[good.index(b"eXIf") + 10] ^= 0xFF
        else:
            at = good.index(b"EXIF")
            struct.pack_into("<I", b, at + 4, 10**6)
        blob = bytes(b)
    p = tmp_path / ("bad" + (".png" if case.startswith("png") else ".webp" if case.startswith("webp") else ".jpg"))
    p.write_bytes(blob)
    with caplog.at_level(logging.WARNING, "emostyle_rt"):
        meta = read_image_meta(p)
    assert caplog.records and str(p) in caplog.text
    if case.startswith("icc"):
        assert meta.icc is None and meta.exif is not None and orientation(meta.exif) == 1  # the EXIF survives
    else:
        assert meta == ImageMeta()
    write_image(tmp_path / "out.jpg", read_image(p), meta=meta)  # still written


def test_damaged_meta_given_to_write_image_is_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "emostyle_rt"):
        out = write_image(tmp_path / "o.jpg", PHOTO, meta=ImageMeta(icc=b"not a profile", exif=b"not exif"))
    assert "ICC profile to write is damaged" in caplog.text and "EXIF to write is damaged" in caplog.text
    assert read_image_meta(out) == ImageMeta()


@settings(deadline=None, max_examples=300, suppress_health_check=list(HealthCheck))
@given(kind=hs.sampled_from([".jpg", ".png", ".webp", ".tif"]), at=hs.integers(0, 10**6),
       junk=hs.binary(min_size=1, max_size=16), cut=hs.booleans())
def test_read_meta_never_raises_on_corrupted_bytes(kind: str, at: int, junk: bytes, cut: bool) -> None:
    exif = build_exif()[0]
    icc = display_p3_icc()
    if kind == ".jpg":
        good = jpeg_with(PHOTO[:40, :40], exif, icc, chunk=300)
    else:
        good = embed_meta(cv2.imencode(kind, PHOTO[:40, :40])[1].tobytes(), kind, ImageMeta(icc, exif))
    at %= len(good)
    bad = good[:at] + (b"" if cut else junk + good[at + len(junk):])
    meta = read_meta(bad)
    assert isinstance(meta, ImageMeta)
    assert meta.icc is None or meta.icc[36:40] == b"acsp"
    assert metadata.may_have_alpha(bad) in (True, False)
    assert 1 <= metadata.file_orientation(bad) <= 8


# -- quality -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q", [0, 101, -5, 1.5, True, "90"])
def test_quality_is_validated(tmp_path: Path, q: object) -> None:
    with pytest.raises(InvalidArgumentError, match="Note: expected 1..100"):
        write_image(tmp_path / "q.jpg", PHOTO, quality=q)  # type: ignore[arg-type]
    assert not (tmp_path / "q.jpg").exists()


def test_webp_default_is_lossy_and_much_smaller_than_lossless(tmp_path: Path) -> None:
    photo = data.astronaut()
    lossless = cv2.imencode(".webp", photo[..., ::-1], [cv2.IMWRITE_WEBP_QUALITY, 101])[1].nbytes
    default = write_image(tmp_path / "d.webp", photo).stat().st_size
    low = write_image(tmp_path / "l.webp", photo, quality=50).stat().st_size
    assert default * 4 < lossless and low < default
    assert cv2.PSNR(read_image(tmp_path / "d.webp"), photo) > 32
    jpeg_low = write_image(tmp_path / "l.jpg", photo, quality=40).stat().st_size
    assert jpeg_low < write_image(tmp_path / "h.jpg", photo).stat().st_size  # default 95
