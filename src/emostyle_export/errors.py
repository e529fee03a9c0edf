"""Typed errors of emostyle-export (the runtime's own are in :mod:`emostyle_rt.errors`).

They derive from :class:`emostyle_rt.errors.EmostyleError`, so one ``except``
catches what either raises; messages end with the same ``note(expected, available)``.
"""

from __future__ import annotations

from emostyle_rt.errors import EmostyleError, note, sentence

__all__ = ["CheckpointError", "ExportError", "ParityError", "note", "sentence"]


class ExportError(EmostyleError):
    """An export step failed: a checkpoint, a conversion or a parity check."""


class CheckpointError(ExportError):
    """A checkpoint file does not fit any known layout."""


class ParityError(ExportError):
    """A converted graph or compiled package disagrees with its source beyond tolerance."""
