"""Typed errors of emostyle-rt.

Every error says what happened and, where it helps, ends with
"Note: expected X, available Y" (the Polygraphy style).
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
    """An output image or report cannot be written (folder not creatable, not writable, disk full)."""


class BundleError(EmostyleError):
    """A bundle (manifest + ONNX files + engines) is missing, damaged or inconsistent."""


class NoFaceError(EmostyleError):
    """No face was found and the no-face policy is "error"."""


class BackendError(EmostyleError, RuntimeError):
    """A runtime backend (onnxruntime, TensorRT) cannot be used or failed to run."""


class ExportError(EmostyleError):
    """An export step failed: a checkpoint, a conversion or a parity check."""


class CheckpointError(ExportError):
    """A checkpoint file does not fit any known layout."""


class ParityError(ExportError):
    """A converted graph disagrees with its source model beyond tolerance."""


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
