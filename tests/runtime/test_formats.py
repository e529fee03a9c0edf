"""Image formats have one owner (emostyle_rt.imaging.formats): the table, the sniffing and the GIF-to-PNG rule."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from emostyle_rt import cli
from emostyle_rt.imaging import formats, metadata
from emostyle_rt.imaging.io import header_size

FACE = cv2.resize(data.astronaut(), (40, 30), interpolation=cv2.INTER_AREA)[:, :, ::-1]


@pytest.mark.parametrize("name", [f.name for f in formats.FORMATS.values() if f.written])
def test_real_encoded_bytes_are_sniffed_and_sized(name: str) -> None:
    ok, buf = cv2.imencode(formats.FORMATS[name].suffixes[0], np.ascontiguousarray(FACE))
    assert ok
    assert formats.sniff_format(buf.tobytes()) == name
    assert header_size(buf.tobytes()) == (40, 30)


def test_gif_is_read_and_answered_as_png() -> None:
    gif = b"GIF89a" + (40).to_bytes(2, "little") + (30).to_bytes(2, "little") + b"\x00" * 8
    assert formats.sniff_format(gif) == "gif" and header_size(gif) == (40, 30)
    assert formats.output_format("gif") == "png" and formats.output_format("jpeg") == "jpeg"
    assert formats.output_format(None) is None and formats.sniff_format(b"not an image") is None
    assert [formats.output_name(n) for n in ("cat.gif", "Cat.GIF", "a.gif.jpg", "b.png")] == \
        ["cat.png", "Cat.png", "a.gif.jpg", "b.png"]
    assert metadata._kind(gif) is None  # noqa: SLF001 - no metadata is carried into or out of a GIF


def test_every_front_end_reads_the_one_table() -> None:
    assert cli.IMAGE_SUFFIXES is formats.WRITE_SUFFIXES and cli.READ_SUFFIXES is formats.READ_SUFFIXES
    assert metadata.KINDS is formats.METADATA_SUFFIXES
    codec = pytest.importorskip("emostyle_serve.codec")
    assert codec.FORMATS == {f.name: (f.suffixes[0], f.mime) for f in formats.FORMATS.values() if f.written}
    gif = b"GIF87a" + b"\x01\x00\x01\x00" + b"\x00" * 8
    assert codec.sniff_format(gif) == "png"  # a GIF's answer is a PNG, as the command's output
    assert all(f.mime in codec.RAW_TYPES for f in formats.FORMATS.values())
