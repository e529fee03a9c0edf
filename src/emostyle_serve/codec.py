"""What a request carries and what its answer is: content types, output format negotiation, decode and encode.

Decoding and encoding are the runtime's (``emostyle_rt.imaging.io``: the pixel limit
is checked from the header before decoding; EXIF / ICC carried over as the
``emostyle`` command does). This module only maps HTTP's names onto them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emostyle_rt.errors import InvalidArgumentError, note
from emostyle_rt.imaging.formats import FORMATS as IMAGE_FORMATS
from emostyle_rt.imaging.formats import output_format
from emostyle_rt.imaging.formats import sniff_format as sniff_image_format
from emostyle_rt.imaging.io import decode_image, encode_image
from emostyle_rt.imaging.metadata import read_meta

from .errors import NotAcceptableError, UnsupportedMediaTypeError

#: Output format name -> (file extension the encoder takes, MIME type), from the runtime's table.
FORMATS = {f.name: (f.suffixes[0], f.mime) for f in IMAGE_FORMATS.values() if f.written}
#: Names a client may use for a format (query ``format=`` or form field).
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff", **{k: k for k in FORMATS}}
#: MIME type -> format, for ``Accept``.
MIME_FORMATS = {mime: name for name, (_, mime) in FORMATS.items()}
#: Raw request bodies the service takes (the image format itself is read from the bytes).
RAW_TYPES = (*(f.mime for f in IMAGE_FORMATS.values()), "image/x-ms-bmp", "application/octet-stream")
MULTIPART = "multipart/form-data"
JSON = "application/json"


def sniff_format(data: bytes) -> str | None:
    """The answer's format for encoded image bytes, from their signature; None if it is none of ours.

    A GIF's answer is a PNG, as the command's output (``emostyle_rt.imaging.formats.output_format``).
    """
    return output_format(sniff_image_format(data))


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type header ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """"multipart" or "raw" for a Content-Type the service takes; ``UnsupportedMediaTypeError`` otherwise."""
    kind = media_type(content_type)
    if kind == MULTIPART:
        return "multipart"
    if kind in RAW_TYPES:
        return "raw"
    raise UnsupportedMediaTypeError(
        f"Content-Type {kind or '(none)'!r} is not an image upload (with curl: --data-binary @photo.jpg "
        "-H 'Content-Type: image/jpeg', or -F image=@photo.jpg)."
        + note(f"image/* ({', '.join(t for t in RAW_TYPES if t.startswith('image/'))}), "
               f"application/octet-stream or {MULTIPART}", kind or "none"))


def parse_format(value: str | None) -> str | None:
    """A ``format`` parameter -> a format name (None: not given); ``InvalidArgumentError`` for an unknown one."""
    if value is None or value == "":
        return None
    name = FORMAT_ALIASES.get(value.strip().lower())
    if name is None:
        raise InvalidArgumentError(f"Unknown output format {value!r}." + note(sorted(FORMAT_ALIASES), value))
    return name


def parse_max_side(value: str | None) -> int | None:
    """A ``max_side`` parameter -> int (None: not given). Its range is the Stylizer's to check."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError("max_side must be an integer." + note("an integer such as 512", repr(value))) from None


def _accept_items(accept: str) -> list[tuple[float, int, str]]:
    items = []
    for i, part in enumerate(accept.split(",")):
        bits = [b.strip() for b in part.split(";")]
        q = 1.0
        for b in bits[1:]:
            if b.lower().startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if bits[0] and q > 0:
            items.append((-q, i, bits[0].lower()))
    return sorted(items)


@dataclass(frozen=True)
class Answer:
    """How to answer: as JSON (image inside, base64) or as an image; ``format`` of the image either way."""

    json: bool
    format: str

    @property
    def ext(self) -> str:
        return FORMATS[self.format][0]

    @property
    def mime(self) -> str:
        return FORMATS[self.format][1]


def negotiate(accept: str | None, sent: str | None, asked: str | None) -> Answer:
    """The answer for an ``Accept`` header, the upload's format ``sent`` and a ``format`` parameter ``asked``.

    JSON when application/json is preferred; otherwise the image, in ``asked``, else
    the format Accept prefers, else the upload's own (PNG for formats we do not write).
    """
    same = asked or sent or "png"
    if not accept or not accept.strip():
        return Answer(False, same)
    for _, _, mime in _accept_items(accept):
        if mime == JSON:
            return Answer(True, same)
        if mime in ("*/*", "image/*"):
            return Answer(False, same)
        if mime in MIME_FORMATS:
            return Answer(False, asked or MIME_FORMATS[mime])
    raise NotAcceptableError(
        f"Accept {accept!r} names nothing this service answers."
        + note(f"{JSON}, image/*, */* or one of {sorted(MIME_FORMATS)}", accept))


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> HxWx3 RGB or HxWx4 RGBA uint8 (typed errors: not an image, truncated, too many pixels)."""
    return decode_image(data, source="upload", max_pixels=max_pixels, alpha=True)


def encode(image: np.ndarray, answer: Answer, upload: bytes | None, quality: int | None) -> bytes:
    """The styled image in the answer's format; the upload's EXIF / ICC go along unless ``upload`` is None."""
    meta = read_meta(upload, "upload") if upload is not None else None
    return encode_image(image, answer.ext, quality=quality, meta=meta, target=f"the {answer.format} answer")
