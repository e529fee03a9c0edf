"""Frame sources of a stream: arrays, PyAV frames and OpenCV captures as RGB frames with timestamps, upright."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator

import cv2
import numpy as np

from ..errors import InvalidArgumentError, InvalidImageError, note
from .coherence import FrameCoherence
from .emotion import EmotionState

log = logging.getLogger(__name__)


@dataclass
class _Item:
    """A frame travelling through the stages."""

    index: int
    time: float
    rgb: np.ndarray
    pts: int | None = None
    time_base: Fraction | None = None
    rotation: int = 0
    state: EmotionState | None = None
    out: np.ndarray | None = None
    flow: Any = None  # Flow, FlowError or None (coherence): from the analysis stage
    coherence: FrameCoherence | None = None


@dataclass
class _Failure:
    exc: BaseException


_END = object()


def _is_av_frame(x: object) -> bool:
    return type(x).__module__.startswith("av.") and hasattr(x, "to_ndarray") and hasattr(x, "pts")


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as displayed: turned by ``rotation`` degrees counter-clockwise (PyAV's ``VideoFrame.rotation``)."""
    k = round(rotation / 90) % 4
    return rgb if k == 0 else np.ascontiguousarray(np.rot90(rgb, k))


def _source(frames: Any, fps: float | None, bgr: bool, stop: threading.Event) -> Iterator[_Item]:
    """Any frame source -> items (RGB, timestamps). See :func:`stream` for what is accepted."""
    if isinstance(frames, cv2.VideoCapture):
        yield from _capture(frames, fps, bgr, stop)
        return
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = iter(frames)
    last: float | None = None
    for i, f in enumerate(frames):
        if stop.is_set():
            return
        t, pts, tb, rot = None, None, None, 0
        if isinstance(f, tuple) and len(f) == 2:
            t, f = float(f[0]), f[1]
        if _is_av_frame(f):
            pts, tb, rot = f.pts, f.time_base, int(f.rotation or 0)
            if t is None and f.time is not None:
                t = float(f.time)
            rgb = upright(f.to_ndarray(format="rgb24"), rot)
        elif isinstance(f, np.ndarray):
            rgb = _rgb(f, bgr, i)
        else:
            raise InvalidImageError(
                f"Frame {i} of the stream is a {type(f).__name__}."
                + note("HxWx3 uint8 arrays, (seconds, array) tuples, PyAV VideoFrames or a cv2.VideoCapture",
                       type(f).__name__))
        if t is None:
            if not fps:
                raise InvalidArgumentError(
                    f"Frame {i} has no timestamp and the stream has no fps." + note("fps=... or timed frames", fps))
            t = i / fps
        if not math.isfinite(t) or (last is not None and t < last):
            raise InvalidArgumentError(
                f"Frame {i}'s timestamp {t} s " + ("is not finite" if not math.isfinite(t) else
                                                 f"is before frame {i - 1}'s ({last} s)")
                + "; the smoothing and switching timers need time that does not go backwards."
                + note(f">= {last} s" if last is not None else "a finite number of seconds", f"{t} s"))
        last = t
        yield _Item(i, t, rgb, pts, tb, rot)


def _rgb(f: np.ndarray, bgr: bool, i: int) -> np.ndarray:
    from ..imaging.io import to_rgb

    try:
        return to_rgb(f, bgr=bgr)
    except InvalidImageError as exc:
        raise InvalidImageError(f"Frame {i} of the stream: {exc}") from exc


def _capture(cap: cv2.VideoCapture, fps: float | None, bgr: bool, stop: threading.Event) -> Iterator[_Item]:
    """An OpenCV capture (file or camera): BGR frames; times from ``fps``, else the capture's position,
    else the wall clock (cameras)."""
    start, i = time.monotonic(), 0
    while not stop.is_set():
        ok, f = cap.read()
        if not ok or f is None:
            return
        now = time.monotonic() - start
        if fps:
            t = i / fps
        else:
            ms = cap.get(cv2.CAP_PROP_POS_MSEC)
            t = ms / 1000.0 if ms and ms > 0 else now
        yield _Item(i, t, _rgb(f, True, i))
        i += 1

