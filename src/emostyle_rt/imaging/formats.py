"""Image formats: the one table of what the runtime reads and writes, signature sniffing, and the GIF rule.

Everything that needs to know a format (the ``emostyle`` command's suffixes, the
metadata writer's containers, the header reader, the service's content types)
reads it here. A GIF is read (its first frame) but never written: its output is
a PNG (OpenCV's GIF writer quantises), for the command and the service alike.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FORMATS", "METADATA_SUFFIXES", "READ_SUFFIXES", "WRITE_SUFFIXES", "ImageFormat", "output_format",
           "output_name", "sniff_format"]


@dataclass(frozen=True)
class ImageFormat:
    """One image format.

    Args:
        name: the format's name ("jpeg", "png", ...), as the service's ``format=`` takes it.
        suffixes: file extensions, the one written first.
        mime: its MIME type.
        written: whether outputs are written in it (False: read only, answered as :func:`output_format` says).
        metadata: whether EXIF and ICC profiles are carried into files of it (``emostyle_rt.imaging.metadata``).
    """

    name: str
    suffixes: tuple[str, ...]
    mime: str
    written: bool = True
    metadata: bool = False


#: Every format, by name (the order the command lists their suffixes in).
FORMATS: dict[str, ImageFormat] = {f.name: f for f in (
    ImageFormat("jpeg", (".jpg", ".jpeg", ".jpe"), "image/jpeg", metadata=True),
    ImageFormat("png", (".png",), "image/png", metadata=True),
    ImageFormat("bmp", (".bmp",), "image/bmp"),
    ImageFormat("webp", (".webp",), "image/webp", metadata=True),
    ImageFormat("tiff", (".tif", ".tiff"), "image/tiff", metadata=True),
    ImageFormat("gif", (".gif",), "image/gif", written=False),
)}
#: What a read-only format's output is written as.
OUTPUT_OF = {"gif": "png"}
#: Output extensions.
WRITE_SUFFIXES = tuple(s for f in FORMATS.values() if f.written for s in f.suffixes)
#: Input extensions: the output formats and the read-only ones.
READ_SUFFIXES = (*WRITE_SUFFIXES, *(s for f in FORMATS.values() if not f.written for s in f.suffixes))
#: Output extension -> the container kind the metadata writer embeds EXIF / ICC into.
METADATA_SUFFIXES = {s: f.name for f in FORMATS.values() if f.metadata for s in f.suffixes}


def sniff_format(data: bytes) -> str | None:
    """The format of encoded image bytes, from their signature (a name of :data:`FORMATS`); None if none of ours.

    Args:
        data: the file's first bytes (12 are enough).
    """
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def output_format(name: str | None) -> str | None:
    """The format an input of format ``name`` is written (or answered) in: itself, or PNG for a GIF.

    Args:
        name: a format name of :data:`FORMATS`, or None (passed through).
    """
    return OUTPUT_OF.get(name, name) if name is not None else None


def output_name(name: str) -> str:
    """The output file name for an input file name: the same, but a read-only format's suffix becomes its output's.

    Args:
        name: a file name such as ``"cat.GIF"`` (the suffix is matched without regard to case).
    """
    for fmt, out in OUTPUT_OF.items():
        for suffix in FORMATS[fmt].suffixes:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)] + FORMATS[out].suffixes[0]
    return name
