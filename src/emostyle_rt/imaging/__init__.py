"""Images: formats, reading and writing, metadata.

- :mod:`.formats`: the one table of formats the runtime reads and writes, and signature sniffing.
- :mod:`.io`: reading, checking and converting input images; encoding and atomic writes.
- :mod:`.metadata`: ICC profile and EXIF, read from and written into encoded bytes.

The names below are imported from their module on first use (PEP 562). ``emostyle_rt.imageio``,
``emostyle_rt.formats`` and ``emostyle_rt.metadata`` are the deprecated 0.1.0 paths of these modules
(``imageio`` shadowed the well-known package of that name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._exports import lazy_exports

#: Public name -> the module of this package that defines it.
_EXPORTS = {
    **dict.fromkeys(("FORMATS", "METADATA_SUFFIXES", "READ_SUFFIXES", "WRITE_SUFFIXES", "ImageFormat",
                     "output_format", "output_name", "sniff_format"), "formats"),
    **dict.fromkeys(("ImageInput", "MAX_PIXELS", "OPENCV_MAX_PIXELS", "clean_stale_parts", "decode_image",
                     "encode_image", "header_size", "load_image", "pad_to_multiple", "read_image", "read_image_meta",
                     "to_rgb", "write_bytes_atomic", "write_image"), "io"),
    **dict.fromkeys(("ImageMeta", "KINDS", "clean_exif", "embed_meta", "file_orientation", "may_have_alpha",
                     "orientation", "read_meta"), "metadata"),
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .formats import (FORMATS, METADATA_SUFFIXES, READ_SUFFIXES, WRITE_SUFFIXES, ImageFormat, output_format,
                          output_name, sniff_format)
    from .io import (MAX_PIXELS, OPENCV_MAX_PIXELS, ImageInput, clean_stale_parts, decode_image, encode_image,
                     header_size, load_image, pad_to_multiple, read_image, read_image_meta, to_rgb,
                     write_bytes_atomic, write_image)
    from .metadata import (KINDS, ImageMeta, clean_exif, embed_meta, file_orientation, may_have_alpha, orientation,
                           read_meta)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
