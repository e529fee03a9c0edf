"""Typed errors of emostyle-rt.

Every error says what happened and, where it helps, ends with
"Note: expected X, available Y" (the Polygraphy style). Export's errors
(``ExportError``, ``CheckpointError``, ``ParityError``) are in ``emostyle_export.errors``.
"""

from __future__ import annotations


class EmostyleError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidImageError(EmostyleError, ValueError):
    """An input image has the wrong type, dtype, rank, channel count or size."""


class InvalidArgumentError(EmostyleError, ValueError):
    """An argument (emotion name, policy, size limit, CLI option) has a value that cannot work."""


class ImageReadError(EmostyleError, OSError):
    """An image file is missing, unreadable, not an image, or too large."""


class ImageWriteError(EmostyleError, OSError):
    """An output image, video or report cannot be written (folder not creatable, not writable, disk full)."""


class ImageEncodeError(ImageWriteError):
    """An image cannot be encoded in the format its file name asks for (nothing is written; other files may work)."""


class VideoReadError(ImageReadError):
    """A video file or camera cannot be opened or decoded (missing, corrupt, truncated, no video frames)."""


class BundleError(EmostyleError):
    """A bundle (manifest + ONNX files + engines) is missing, damaged or inconsistent."""


class NoFaceError(EmostyleError):
    """No face was found and the no-face policy is "error"."""


class BackendError(EmostyleError, RuntimeError):
    """A runtime backend (onnxruntime, TensorRT) cannot be used or failed to run."""


class MemoryBudgetError(EmostyleError, ValueError):
    """A style run cannot be made to fit the memory budget (raised before anything runs), or a budget is malformed."""


class FlowError(EmostyleError):
    """Optical flow between two frames cannot be trusted (a flat frame, a size change, a non-finite field).

    A coherent stream styles such a frame on its own and counts it (``emostyle_rt.video.coherence``)."""


def note(expected: object, available: object) -> str:
    """The standard tail of an error message."""
    return f" Note: expected {expected}, available {available}."


def sentence(text: object) -> str:
    """``text`` as one sentence: stripped, ending in exactly one full stop.

    For messages that embed another error: ``f"Cannot read {p}: " + sentence(exc)``
    never gives "..". A text already ending in ".", "!" or "?" is kept as is.
    """
    s = str(text).strip()
    return s if s.endswith((".", "!", "?")) else s + "."
