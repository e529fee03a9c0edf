"""Cameras: open one with OpenCV, style it live, record the styled stream."""

from __future__ import annotations

import logging
import os
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import cv2
import numpy as np

from ..errors import InvalidArgumentError, VideoReadError, note
from .coherence import CoherenceLog, CoherenceOptions
from .emotion import TemporalOptions
from .files import VideoResult
from .pipeline import SegmentLog, StyledFrame, stream

if TYPE_CHECKING:
    from ..stylizer import Stylizer

log = logging.getLogger(__name__)


def open_camera(index: int) -> cv2.VideoCapture:
    """OpenCV camera ``index``, or ``VideoReadError`` when there is none."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidArgumentError("A camera index is an integer >= 0." + note(">= 0", repr(index)))
    quiet = getattr(getattr(cv2, "utils", None), "logging", None)  # OpenCV's own warnings would repeat ours
    level = quiet.getLogLevel() if quiet else None
    if quiet:
        quiet.setLogLevel(quiet.LOG_LEVEL_ERROR)
    try:
        cap = cv2.VideoCapture(index)
    finally:
        if quiet:
            quiet.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"Cannot open camera {index}." + note(f"a camera at index {index}", "none"))
    return cap


def record_camera(
    stylizer: Stylizer,
    capture: cv2.VideoCapture,
    dst: str | os.PathLike,
    *,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    preview: bool = False,
    options: TemporalOptions | None = None,
    emotion: str | None = None,
    max_side: int | None = None,
    progress: Callable[[StyledFrame], None] | None = None,
    before_commit: Callable[[VideoResult], None] | None = None,
    coherence: str | CoherenceOptions | None = "off",
) -> VideoResult:
    """Style a camera into ``dst`` until ``seconds`` have passed, ``stop`` is set or the camera ends (frames are
    dropped while the pipeline is busy; timestamps are the camera's arrival times). ``preview`` shows a window.
    ``coherence``: as for :func:`stylize_video` (not measured: a camera has no time to spare)."""
    from . import io as videoio

    coh = CoherenceOptions.of(coherence)
    dst = Path(dst)
    videoio.container_suffix(dst)
    stop = stop or threading.Event()
    started = time.monotonic()

    def frames() -> Iterator[tuple[float, np.ndarray]]:
        while not stop.is_set() and (seconds is None or time.monotonic() - started < seconds):
            ok, f = capture.read()
            if not ok or f is None:
                return
            yield time.monotonic() - started, f

    segs, cohs = SegmentLog(), CoherenceLog(coh)
    out = stream(stylizer, frames(), bgr=True, live=True, options=options, emotion=emotion, max_side=max_side,
                 coherence=coh)
    writer = videoio.VideoWriter(dst, fps=None, time_base=Fraction(1, 1000))
    try:
        for f in out:
            if preview:
                cv2.imshow("emostyle", f.image)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    stop.set()
            writer.write(StyledFrame(cv2.cvtColor(f.image, cv2.COLOR_BGR2RGB), f.index, f.time, f.state))
            segs.add(f)
            cohs.add(f.coherence)
            if progress is not None:
                progress(f)
        if writer.frames == 0:
            raise VideoReadError("The camera gave no frames." + note("at least 1 frame", 0))
        writer.finish()
        segments = segs.segments()
        result = VideoResult("camera", str(dst), writer.frames, segments[-1].end - segments[0].start, None,
                             writer.size or (0, 0), "none", 0, segments, time.monotonic() - started,
                             cohs.report() if coh.mode != "off" else None)
        if before_commit is not None:
            before_commit(result)
        writer.commit()
        return result
    finally:
        out.close()
        writer.abort()
        if preview:
            cv2.destroyAllWindows()
