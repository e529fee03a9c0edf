"""Video and camera streams whose emotion does not flicker.

``Stylizer.stream(frames, fps=...)`` delegates here. A stream runs in four
overlapping stages joined by bounded queues (memory stays flat on long videos;
onnxruntime, OpenCV and FFmpeg release the GIL while they work)::

    source thread     frames -> RGB arrays with timestamps (PyAV frames: pts, time_base, rotation)
    analysis thread   face tracker + classification schedule -> EMA scores -> hysteresis -> EmotionState
    style thread      that emotion's style graph (cross-fade: both styles, blended)
    caller            iterates StyledFrame objects (the file pipeline encodes them here)

Emotion over time (:class:`TemporalOptions`): a frame is classified (face
detection + classifier) every ``classify_every`` frames or ``classify_seconds``,
whichever comes first, and at once when the tracked face moves (IoU with the box
last classified below ``iou_threshold``) or is lost. Between classifications a
cheap template tracker follows the face. Scores are smoothed by an EMA with time
constant ``smooth_seconds`` (weight ``1 - exp(-dt / tau)`` from timestamps, so
the frame rate does not change it); the style switches only when another emotion
leads the current one by ``switch_margin`` for ``switch_seconds``, and not sooner than ``min_segment_seconds``
after the last switch.

Video files decide with lookahead by default (:func:`stylize_video`, ``decision="lookahead"``): an analysis
pass decodes the file and classifies it on the same schedule, keeping only the scores (:func:`analyse`), the
segments are chosen offline (``emostyle_rt.lookahead.plan_segments``: every segment at least
``min_segment_seconds``, each labelled with its highest mean score), and a second decoding is styled with that
plan (``stream(..., plan=...)``). Cameras and other live sources stay causal.

PyAV (file input/output) is imported only by :func:`stylize_video`, never by
``import emostyle_rt``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import os
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator

import cv2
import numpy as np

from .coherence import Blender, CoherenceLog, CoherenceOptions, CoherenceReport, FlowTracker, FrameCoherence
from .errors import InvalidArgumentError, InvalidImageError, NoFaceError, VideoReadError, note
from .detection.faces import Face
from .lookahead import LookaheadOptions, PlannedSegment, plan_segments

if TYPE_CHECKING:
    from .stylizer import Classification, Stylizer

log = logging.getLogger(__name__)

#: Frames each queue between stages holds (a few frames of look-ahead; memory stays flat).
QUEUE_FRAMES = 4
#: Longer side of the grey copy the face tracker matches on.
TRACK_SIDE = 320
#: Normalised cross-correlation below which the tracked face counts as lost.
TRACK_MIN_SCORE = 0.5


def _positive(name: str, value: object, *, integer: bool = False, zero: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, numbers.Real)  # Fraction too (PyAV rates)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        want = ("an integer" if integer else "a number") + (" >= 0" if zero else " > 0")
        raise InvalidArgumentError(f"{name} must be {want}." + note(want, repr(value)))


@dataclass(frozen=True)
class TemporalOptions:
    """How a stream decides its emotion over time (defaults measured on a real classifier's noise:
    ``studies/video_sweep/video_sweep.py``, docs/emotion-over-time.md).

    ``classify_every`` frames or ``classify_seconds`` (whichever first) between
    classifications; ``iou_threshold``: reclassify at once when the tracked face's
    box overlaps the one last classified less than this (0 disables); ``smooth_seconds``:
    the EMA time constant (0: no smoothing); ``switch_margin``: probability lead a new
    emotion needs; ``switch_seconds``: how long it must keep that lead;
    ``min_segment_seconds``: after a switch the style is kept at least this long (0: no minimum; the first
    choice, made from one classification, may be corrected at once);
    ``crossfade_frames``: blend old and new style over this many frames (0: cut).
    """

    classify_every: int = 2
    classify_seconds: float = 0.2
    iou_threshold: float = 0.5
    smooth_seconds: float = 0.5
    switch_margin: float = 0.3
    switch_seconds: float = 0.1
    crossfade_frames: int = 0
    min_segment_seconds: float = 1.5

    def __post_init__(self) -> None:
        _positive("classify_every", self.classify_every, integer=True)
        _positive("classify_seconds", self.classify_seconds)
        _positive("smooth_seconds", self.smooth_seconds, zero=True)
        _positive("switch_seconds", self.switch_seconds, zero=True)
        _positive("min_segment_seconds", self.min_segment_seconds, zero=True)
        _positive("crossfade_frames", self.crossfade_frames, integer=True, zero=True)
        for name in ("iou_threshold", "switch_margin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise InvalidArgumentError(f"{name} must be a number from 0 to 1." + note("0..1", repr(v)))


@dataclass(frozen=True)
class EmotionState:
    """The emotion of one frame of a stream.

    ``emotion`` / ``style``: what this frame is styled with (during a cross-fade,
    the style faded in; ``previous`` the one faded out, ``fade`` the new style's
    weight, 1.0 otherwise). ``scores``: smoothed scores (label order; empty until
    the first classification). ``observed``: this frame's raw classifier scores
    when it was classified, else None; ``reason`` why it was ("start",
    "schedule", "moved", "lost"; "" when not). ``face``: the tracked face or None.
    ``switched``: the style changed at this frame.
    """

    emotion: str
    style: str
    scores: dict[str, float]
    face: Face | None = None
    observed: dict[str, float] | None = None
    reason: str = ""
    switched: bool = False
    previous: str | None = None
    fade: float = 1.0

    @property
    def classified(self) -> bool:
        return self.observed is not None or bool(self.reason)


@dataclass(frozen=True, eq=False)
class StyledFrame:
    """One styled frame of a stream.

    ``image``: HxWx3 uint8, RGB (BGR when the stream was asked for ``bgr``), the
    input's size, upright (a PyAV frame's display rotation applied). ``time``: seconds
    from the source (PyAV pts, capture position) or ``index / fps``. ``pts``,
    ``time_base``, ``rotation`` (degrees counter-clockwise, as PyAV reports it):
    the source frame's, when it was a PyAV frame. ``coherence``: what temporal coherence did to this frame
    (``emostyle_rt.coherence.FrameCoherence``; None when the stream neither blends nor measures).
    """

    image: np.ndarray
    index: int
    time: float
    state: EmotionState
    pts: int | None = None
    time_base: Fraction | None = None
    rotation: int = 0
    coherence: FrameCoherence | None = None


@dataclass(frozen=True)
class Segment:
    """A run of frames with one style: ``start`` / ``end`` in seconds, ``scores`` the mean raw classifier
    scores of the ``classifications`` made in it (the smoothed scores at its start when there were none)."""

    start: float
    end: float
    emotion: str
    style: str
    frames: int
    scores: dict[str, float]
    classifications: int

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (times rounded to ms, scores to 4 digits)."""
        return {"start": round(self.start, 3), "end": round(self.end, 3), "emotion": self.emotion, "style": self.style,
                "frames": self.frames, "classifications": self.classifications,
                "scores": {k: round(v, 4) for k, v in self.scores.items()}}


class SegmentLog:
    """Collects :class:`Segment` objects from the frames of a stream: ``for f in stream: log.add(f)``."""

    def __init__(self) -> None:
        self._done: list[Segment] = []
        self._cur: dict[str, Any] | None = None
        self._last_time = 0.0
        self._dt = 0.0

    def add(self, frame: StyledFrame) -> None:
        s = frame.state
        if self._cur is not None:
            self._dt = max(0.0, frame.time - self._last_time)
        if self._cur is None or s.emotion != self._cur["emotion"]:
            self._close(frame.time)
            self._cur = {"start": frame.time, "emotion": s.emotion, "style": s.style, "frames": 0, "n": 0,
                         "sum": None, "first": dict(s.scores)}
        c = self._cur
        c["frames"] += 1
        if s.observed:
            v = np.array(list(s.observed.values()))
            c["sum"] = v if c["sum"] is None else c["sum"] + v
            c["n"] += 1
            c["labels"] = list(s.observed)
        self._last_time = frame.time

    @staticmethod
    def _segment(c: dict[str, Any], end: float) -> Segment:
        scores = dict(zip(c["labels"], (c["sum"] / c["n"]).tolist())) if c["n"] else c["first"]
        return Segment(c["start"], end, c["emotion"], c["style"], c["frames"], scores, c["n"])

    def _close(self, end: float) -> None:
        if self._cur is not None:
            self._done.append(self._segment(self._cur, end))
            self._cur = None

    def segments(self, end: float | None = None) -> tuple[Segment, ...]:
        """The segments so far; the open one ends at ``end`` (default: the last frame's time plus one frame)."""
        if self._cur is None:
            return tuple(self._done)
        return (*self._done, self._segment(self._cur, self._last_time + self._dt if end is None else end))


# -- emotion over time ---------------------------------------------------------------------------


def iou(a: Face, b: Face) -> float:
    """Intersection over union of two faces' boxes (:func:`emostyle_rt.metrics.box_iou`)."""
    from .metrics import box_iou

    return box_iou(a.box, b.box)


class EmotionSmoother:
    """EMA of the scores (time constant in seconds) and the switching rule (margin held for some seconds).

    ``initial``: the emotion to start from (switched away from by the same rule); None lets the first
    classification choose it.
    """

    def __init__(self, labels: tuple[str, ...], options: TemporalOptions, initial: str | None = None) -> None:
        self.labels, self.o = labels, options
        self.scores: np.ndarray | None = None
        self.emotion = initial
        self._t_obs: float | None = None
        self._lead: tuple[int, float] | None = None  # (candidate, since when)
        self._chosen: float | None = None  # when the style last switched (None: not yet)

    def observe(self, t: float, scores: np.ndarray) -> None:
        """Fold one classification (scores in label order) at time ``t`` into the EMA."""
        if self.scores is None or self._t_obs is None:
            self.scores = scores.astype(np.float64)
        else:
            tau = self.o.smooth_seconds
            a = 1.0 if tau <= 0 else 1.0 - math.exp(-max(0.0, t - self._t_obs) / tau)
            self.scores = self.scores + a * (scores - self.scores)
        self._t_obs = t

    def decide(self, t: float) -> bool:
        """Update the emotion at time ``t``; whether it switched. The first classification sets it without a switch."""
        if self.scores is None:
            return False
        best = int(np.argmax(self.scores))
        if self.emotion is None:  # the first choice, from one classification, may be corrected at once
            self.emotion = self.labels[best]
            return False
        cur = self.labels.index(self.emotion)
        if best == cur or self.scores[best] - self.scores[cur] < self.o.switch_margin:
            self._lead = None
            return False
        if self._lead is None or self._lead[0] != best:
            self._lead = (best, t)
        young = self._chosen is not None and t - self._chosen + 1e-9 < self.o.min_segment_seconds
        if t - self._lead[1] + 1e-9 >= self.o.switch_seconds and not young:
            self.emotion, self._lead, self._chosen = self.labels[best], None, t
            return True
        return False


class FaceTracker:
    """Follows the last classified face between classifications: normalised cross-correlation of its grey
    template in a window around it, on a copy whose longer side is ``TRACK_SIDE`` (about 1 ms at 720p)."""

    def __init__(self) -> None:
        self._tpl: np.ndarray | None = None
        self._box: tuple[int, int, int, int] | None = None  # in the small copy
        self._scale = 1.0

    def _small(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        self._scale = min(1.0, TRACK_SIDE / max(h, w))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if self._scale == 1.0:
            return grey
        return cv2.resize(grey, (max(1, round(w * self._scale)), max(1, round(h * self._scale))),
                          interpolation=cv2.INTER_AREA)

    def reset(self, rgb: np.ndarray, face: Face | None) -> None:
        """Start following ``face`` (None: nothing to follow)."""
        self._tpl = self._box = None
        if face is None:
            return
        small, s = self._small(rgb), self._scale
        x, y = max(0, round(face.x * s)), max(0, round(face.y * s))
        x1, y1 = min(small.shape[1], round((face.x + face.w) * s)), min(small.shape[0], round((face.y + face.h) * s))
        if x1 - x >= 4 and y1 - y >= 4:
            self._tpl, self._box = small[y:y1, x:x1].copy(), (x, y, x1 - x, y1 - y)

    @property
    def active(self) -> bool:
        return self._tpl is not None

    def track(self, rgb: np.ndarray) -> Face | None:
        """Where the face is now (full-image pixels), or None when it is lost."""
        if self._tpl is None or self._box is None:
            return None
        small, s = self._small(rgb), self._scale
        x, y, w, h = self._box
        x0, y0 = max(0, x - w), max(0, y - h)
        x1, y1 = min(small.shape[1], x + 2 * w), min(small.shape[0], y + 2 * h)
        window = small[y0:y1, x0:x1]
        if window.shape[0] < h or window.shape[1] < w:
            return None
        res = cv2.matchTemplate(window, self._tpl, cv2.TM_CCOEFF_NORMED)
        _, score, _, (bx, by) = cv2.minMaxLoc(res)
        if not np.isfinite(score) or score < TRACK_MIN_SCORE:
            return None
        return Face(round((x0 + bx) / s), round((y0 + by) / s), max(1, round(w / s)), max(1, round(h / s)), float(score))


class EmotionTimeline:
    """The analysis stage: decides each frame's :class:`EmotionState` from a classifier called on schedule.

    ``classify(rgb)`` returns a ``Classification`` (``Stylizer.classify``); a
    ``NoFaceError`` from it is a frame without evidence (the emotion holds).
    ``initial``: the emotion before the first classification gives one.
    """

    def __init__(self, labels: tuple[str, ...], styles: dict[str, str],
                 classify: Callable[[np.ndarray], Classification], options: TemporalOptions,
                 initial: str) -> None:
        self.labels, self.styles, self.o = labels, styles, options
        self._classify = classify
        self.smoother = EmotionSmoother(labels, options)
        self.tracker = FaceTracker()
        self._initial = initial
        self._last: tuple[int, float] | None = None  # (index, time) of the last classification
        self._box: Face | None = None  # the box last classified
        self._fade = CrossFade(options.crossfade_frames)

    def _reason(self, rgb: np.ndarray, i: int, t: float) -> tuple[str, Face | None]:
        if self._last is None:
            return "start", None
        if i - self._last[0] >= self.o.classify_every or t - self._last[1] + 1e-9 >= self.o.classify_seconds:
            return "schedule", None
        if not self.tracker.active:
            return "", None
        face = self.tracker.track(rgb)
        if face is None:
            return "lost", None
        if self._box is not None and iou(face, self._box) < self.o.iou_threshold:
            return "moved", face
        return "", face

    def step(self, rgb: np.ndarray, i: int, t: float) -> EmotionState:
        reason, face = self._reason(rgb, i, t)
        observed = None
        if reason:
            self._last = (i, t)
            try:
                c = self._classify(rgb)
            except NoFaceError:
                c = None
            face = c.face if c is not None else None
            self._box = face
            self.tracker.reset(rgb, face)
            if c is not None:
                observed = dict(c.scores) if c.scores else {k: float(k == c.emotion) for k in self.labels}
                self.smoother.observe(t, np.array([observed.get(k, 0.0) for k in self.labels]))
        before = self.smoother.emotion or self._initial
        switched = self.smoother.decide(t)
        emotion = self.smoother.emotion or self._initial
        previous, fade = self._fade.step(before, emotion, switched)
        scores = {} if self.smoother.scores is None else dict(zip(self.labels, self.smoother.scores.tolist()))
        return EmotionState(emotion, self.styles[emotion], scores, face, observed, reason, switched, previous, fade)


class CrossFade:
    """The cross-fade of a switch: over ``frames`` frames the new style's weight rises from 1/(frames+1) to 1."""

    def __init__(self, frames: int) -> None:
        self.frames = frames
        self._fade: tuple[str, int] | None = None  # (faded-out emotion, frames left)

    def step(self, before: str, emotion: str, switched: bool) -> tuple[str | None, float]:
        """(the emotion faded out or None, the new style's weight) of this frame."""
        if switched and self.frames:
            self._fade = (before, self.frames)
        if self._fade is None:
            return None, 1.0
        old, left = self._fade
        n = self.frames
        self._fade = (old, left - 1) if left > 1 else None
        return (None, 1.0) if old == emotion else (old, (n - left + 1) / (n + 1))


# -- lookahead: files classified first, segments chosen offline ------------------------------------


@dataclass(frozen=True, eq=False)
class EmotionTrack:
    """What the analysis pass of a file keeps (no frames): per frame its time, raw classifier scores (``scores``:
    [frames, labels], a row of NaN where it was not classified or no face was found), why it was classified
    (``reasons``, as ``EmotionState.reason``) and the face found or tracked."""

    labels: tuple[str, ...]
    times: np.ndarray
    scores: np.ndarray
    reasons: tuple[str, ...]
    faces: tuple[Face | None, ...]
    seconds: float  # wall time of the pass

    def __len__(self) -> int:
        return len(self.times)

    def observed(self, i: int) -> dict[str, float] | None:
        """Frame ``i``'s raw scores as a dict (label order), or None."""
        row = self.scores[i]
        return dict(zip(self.labels, row.tolist())) if np.isfinite(row).all() else None


@dataclass(frozen=True)
class EmotionPlan:
    """A file's emotion decided with lookahead: the analysis pass's ``track`` and the planned ``segments``."""

    track: EmotionTrack
    segments: tuple[PlannedSegment, ...]
    options: LookaheadOptions


def analyse(stylizer: Stylizer, frames: Any, *, fps: float | None = None, options: TemporalOptions | None = None,
            bgr: bool = False, classify: Callable[[np.ndarray], Classification] | None = None,
            progress: Callable[[int], None] | None = None) -> EmotionTrack:
    """The analysis pass: ``frames`` (any source :func:`stream` takes, decoded here in a thread) classified on the
    stream's schedule (``options``: ``classify_every`` / ``classify_seconds``, a new classification when the tracked
    face moves or is lost); only the scores are kept. ``classify`` replaces ``stylizer.classify`` (tests, the sweep);
    ``progress(frames_done)`` per frame."""
    options = options or TemporalOptions()
    labels = stylizer.labels
    timeline = EmotionTimeline(labels, {k: k for k in labels}, classify or stylizer.classify, options,
                               default_initial(labels))
    return _analyse(timeline, frames, fps, bgr, progress)


def _analyse(timeline: EmotionTimeline, frames: Any, fps: float | None, bgr: bool,
             progress: Callable[[int], None] | None) -> EmotionTrack:
    started = time.monotonic()
    labels = timeline.labels
    stop = threading.Event()
    q: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    source = threading.Thread(target=_run_source, args=(frames, fps, bgr, False, q, stop), name="emostyle-source",
                              daemon=True)
    source.start()
    times: list[float] = []
    rows: list[np.ndarray] = []
    reasons: list[str] = []
    faces: list[Face | None] = []
    missing = np.full(len(labels), np.nan)
    try:
        while True:
            item = _get(q, stop)
            if isinstance(item, _Failure):
                raise item.exc
            if not isinstance(item, _Item):
                break
            s = timeline.step(item.rgb, item.index, item.time)
            times.append(item.time)
            rows.append(missing if s.observed is None else np.array([s.observed.get(k, 0.0) for k in labels]))
            reasons.append(s.reason)
            faces.append(s.face)
            if progress is not None:
                progress(len(times))
    finally:
        stop.set()
        source.join(timeout=30)
    scores = np.stack(rows) if rows else np.zeros((0, len(labels)))
    return EmotionTrack(labels, np.array(times, np.float64), scores, tuple(reasons), tuple(faces),
                        time.monotonic() - started)


def plan_emotions(track: EmotionTrack, options: LookaheadOptions | None = None,
                  initial: str | None = None) -> EmotionPlan:
    """The segments of ``track`` (``emostyle_rt.lookahead.plan_segments``); ``initial``: the emotion of a file in
    which no face was found (default: :func:`default_initial`)."""
    options = options or LookaheadOptions()
    segments = plan_segments(track.scores, times=track.times, labels=track.labels, options=options,
                             initial=initial or default_initial(track.labels))
    return EmotionPlan(track, segments, options)


class PlannedTimeline:
    """The analysis stage of a stream styled with an :class:`EmotionPlan`: each frame's state from the plan (no
    classification); the frames must be those the plan was made from (the same file decoded again)."""

    def __init__(self, plan: EmotionPlan, styles: dict[str, str], crossfade_frames: int = 0) -> None:
        self.plan, self.styles = plan, styles
        self._fade = CrossFade(crossfade_frames)
        self._firsts = np.array([s.first for s in plan.segments])
        self._last = plan.segments[0].emotion if plan.segments else ""

    def step(self, rgb: np.ndarray, i: int, t: float) -> EmotionState:
        tr = self.plan.track
        if i >= len(tr) or abs(tr.times[i] - t) > 1e-3:
            raise VideoReadError(
                f"Frame {i} at {t:.3f} s is not a frame the emotion plan was made from (a second decoding of the "
                "file differs from the first)." + note(f"{len(tr)} frames as analysed",
                                                      f"frame {i}" if i >= len(tr) else f"{tr.times[i]:.3f} s"))
        k = int(np.searchsorted(self._firsts, i, side="right")) - 1
        seg = self.plan.segments[k]
        switched = i == seg.first and k > 0
        before, self._last = self._last, seg.emotion
        previous, fade = self._fade.step(before, seg.emotion, switched)
        return EmotionState(seg.emotion, self.styles[seg.emotion], dict(seg.scores), tr.faces[i], tr.observed(i),
                            tr.reasons[i], switched, previous, fade)


# -- sources -------------------------------------------------------------------------------------


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
    from .imaging.io import to_rgb

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


# -- the pipeline --------------------------------------------------------------------------------


def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put, waking up to notice ``stop``; False when stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> object:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _END


def _run_source(frames: Any, fps: float | None, bgr: bool, live: bool, out: queue.Queue,
                stop: threading.Event) -> None:
    dropped = 0
    try:
        for item in _source(frames, fps, bgr, stop):
            if live:  # a camera: never queue up, keep the newest frame
                while True:
                    try:
                        out.put_nowait(item)
                        break
                    except queue.Full:
                        try:
                            out.get_nowait()
                            dropped += 1
                        except queue.Empty:
                            pass
            elif not _put(out, item, stop):
                return
        if dropped:
            log.info("Dropped %d camera frame(s) while the pipeline was busy.", dropped)
        _put(out, _END, stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        _put(out, _Failure(exc), stop)
    finally:
        close = getattr(frames, "close", None)  # a generator (a file's decoder) ends in the thread that ran it
        if callable(close) and not isinstance(frames, cv2.VideoCapture):
            try:
                close()
            except Exception:  # noqa: BLE001 - the source is done either way
                pass


def _run_analysis(timeline: EmotionTimeline | PlannedTimeline | None, fixed: EmotionState | None, flows: FlowTracker | None,
                  inq: queue.Queue, out: queue.Queue, stop: threading.Event) -> None:
    try:
        while True:
            item = _get(inq, stop)
            if not isinstance(item, _Item):
                _put(out, item, stop)
                return
            item.state = fixed if timeline is None else timeline.step(item.rgb, item.index, item.time)
            if flows is not None:  # the input's optical flow, overlapped with the style stage's work
                item.flow = flows.step(item.rgb)
            if not _put(out, item, stop):
                return
    except BaseException as exc:  # noqa: BLE001
        _put(out, _Failure(exc), stop)


def _run_style(stylizer: Stylizer, batch: int, max_side: int | None, blender: Blender | None, inq: queue.Queue,
               out: queue.Queue, stop: threading.Event) -> None:
    pending: list[_Item] = []

    def key(it: _Item) -> tuple:
        s = it.state or EmotionState("", "", {})  # always set by the analysis stage
        return (s.emotion, s.previous, it.rgb.shape)

    def flush() -> bool:
        if not pending:
            return True
        _style_items(stylizer, pending, max_side)
        for it in pending:
            if blender is not None and it.out is not None:  # in frame order, after the (batched) style run
                it.out, it.coherence = blender.apply(it.out, it.rgb, it.flow, it.state.emotion if it.state else "")
                it.flow = None
            if not _put(out, it, stop):
                return False
        pending.clear()
        return True

    try:
        while True:
            item = _get(inq, stop)
            if not isinstance(item, _Item):
                if flush():
                    _put(out, item, stop)
                return
            if pending and (key(item) != key(pending[0]) or len(pending) >= batch):
                if not flush():
                    return
            pending.append(item)
            if len(pending) >= batch and not flush():
                return
    except BaseException as exc:  # noqa: BLE001
        _put(out, _Failure(exc), stop)


def _style_items(stylizer: Stylizer, items: list[_Item], max_side: int | None) -> None:
    """Style ``items`` (same emotion, fade and size) in one run per style; cross-fades blend two styles."""
    s = items[0].state or EmotionState("", "", {})  # always set by the analysis stage
    rgbs = [it.rgb for it in items]

    def run(emotion: str) -> list[np.ndarray]:
        try:
            if len(rgbs) == 1:
                return [stylizer.stylize(rgbs[0], emotion=emotion, max_side=max_side).image]
            return [r.image for r in stylizer.stylize_batch(rgbs, emotion=emotion, max_side=max_side)]
        except InvalidImageError as exc:  # e.g. too small for the style network: say which frame
            which = f"Frame {items[0].index}" if len(items) == 1 else f"Frames {items[0].index}-{items[-1].index}"
            raise InvalidImageError(f"{which} of the stream: {exc}") from exc

    new = run(s.emotion)
    if s.previous is not None and s.fade < 1.0:
        old = run(s.previous)
        for it, a, b in zip(items, new, old):
            w = it.state.fade if it.state is not None else 1.0
            it.out = cv2.addWeighted(a, w, b, 1.0 - w, 0.0)
    else:
        for it, a in zip(items, new):
            it.out = a


def default_initial(labels: tuple[str, ...]) -> str:
    """The emotion styled before the first face is classified: "neutral" if the bundle has it, else the first."""
    return "neutral" if "neutral" in labels else labels[0]


def stream(
    stylizer: Stylizer,
    frames: Any,
    *,
    fps: float | None = None,
    emotion: str | None = None,
    max_side: int | None = None,
    bgr: bool = False,
    options: TemporalOptions | None = None,
    batch: int = 1,
    live: bool = False,
    initial: str | None = None,
    queue_frames: int = QUEUE_FRAMES,
    coherence: str | CoherenceOptions | None = "off",
    measure: bool = False,
    plan: EmotionPlan | None = None,
) -> Generator[StyledFrame, None, None]:
    """Styled frames of ``frames`` with their :class:`EmotionState`; see ``Stylizer.stream``.

    ``coherence``: "off", "flow" or ``CoherenceOptions`` (blend with the warped previous output,
    ``emostyle_rt.coherence``); ``measure``: also fill each frame's warping error (``StyledFrame.coherence``).
    ``plan``: style with segments chosen in advance (:func:`analyse` then :func:`plan_emotions` on the same
    frames) instead of deciding as the frames come; not with ``emotion`` or ``live``.
    """
    coh = CoherenceOptions.of(coherence)
    if not isinstance(measure, bool):
        raise InvalidArgumentError("measure must be True or False." + note("a bool", repr(measure)))
    options = options or TemporalOptions()
    if not isinstance(options, TemporalOptions):
        raise InvalidArgumentError("options must be a TemporalOptions." + note("TemporalOptions", type(options).__name__))
    labels = stylizer.labels
    for name, value in (("emotion", emotion), ("initial", initial)):
        if value is not None and value not in labels:
            raise InvalidArgumentError(f"Unknown {name} {value!r}." + note(list(labels), value))
    if fps is not None:
        _positive("fps", fps)
    _positive("batch", batch, integer=True)
    _positive("queue_frames", queue_frames, integer=True)
    stylizer.check_max_side(max_side)  # the Stylizer's own rule
    styles = dict(stylizer.manifest.emotions)
    if plan is not None:
        if not isinstance(plan, EmotionPlan):
            raise InvalidArgumentError("plan must be an EmotionPlan." + note("EmotionPlan", type(plan).__name__))
        if emotion is not None or live:
            raise InvalidArgumentError("A plan decides the emotion of frames known in advance; it takes neither a "
                                       "fixed emotion nor a live source." + note("plan alone", "emotion" if emotion
                                                                                 is not None else "live=True"))
        if plan.track.labels != labels:
            raise InvalidArgumentError("The plan was made with other labels." + note(list(labels),
                                                                                     list(plan.track.labels)))
    if emotion is not None:
        timeline, fixed = None, EmotionState(emotion, styles[emotion], {}, reason="given")
    elif plan is not None:
        timeline, fixed = PlannedTimeline(plan, styles, options.crossfade_frames), None
    else:
        timeline = EmotionTimeline(labels, styles, stylizer.classify, options, initial or default_initial(labels))
        fixed = None
    return _pipeline(stylizer, frames, fps, bgr, live, timeline, fixed, batch, max_side, queue_frames, coh, measure)


def _pipeline(stylizer: Stylizer, frames: Any, fps: float | None, bgr: bool, live: bool,
              timeline: EmotionTimeline | PlannedTimeline | None, fixed: EmotionState | None, batch: int, max_side: int | None,
              size: int, coherence: CoherenceOptions, measure: bool) -> Generator[StyledFrame, None, None]:
    # coherence state belongs to this stream alone: two streams styled at once never mix
    tracked = coherence.mode != "off" or measure
    flows = FlowTracker(coherence.flow_side) if tracked else None
    blender = Blender(coherence, measure) if tracked else None
    stop = threading.Event()
    q1: queue.Queue = queue.Queue(maxsize=1 if live else size)
    q2: queue.Queue = queue.Queue(maxsize=size)
    q3: queue.Queue = queue.Queue(maxsize=size + batch)
    threads = [
        threading.Thread(target=_run_source, args=(frames, fps, bgr, live, q1, stop), name="emostyle-source", daemon=True),
        threading.Thread(target=_run_analysis, args=(timeline, fixed, flows, q1, q2, stop), name="emostyle-analysis",
                         daemon=True),
        threading.Thread(target=_run_style, args=(stylizer, batch, max_side, blender, q2, q3, stop),
                         name="emostyle-style", daemon=True),
    ]
    for th in threads:
        th.start()
    try:
        while True:
            item = _get(q3, stop)
            if isinstance(item, _Failure):
                raise item.exc
            if not isinstance(item, _Item):
                return
            out, state = item.out if item.out is not None else item.rgb, item.state or fixed
            image = cv2.cvtColor(out, cv2.COLOR_RGB2BGR) if bgr else out
            yield StyledFrame(image, item.index, item.time, state, item.pts, item.time_base, item.rotation,
                              item.coherence)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)


# -- files and cameras ---------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoResult:
    """What :func:`stylize_video` wrote: frame count, seconds, size (width, height), audio, style segments,
    and ``coherence`` (mode, frames blended / reset / flow failures, E_warp of the output and of the input).
    ``decision``: how the segments were chosen ("lookahead": planned after an analysis pass that took
    ``analysis_seconds`` of ``wall_seconds``, with ``plan``; "causal": as the frames came; "given": ``emotion``)."""

    input: str
    output: str
    frames: int
    seconds: float
    fps: float | None
    size: tuple[int, int]
    audio: str
    rotation: int
    segments: tuple[Segment, ...]
    wall_seconds: float
    coherence: CoherenceReport | None = None
    decision: str = "causal"
    analysis_seconds: float = 0.0
    plan: LookaheadOptions | None = None

    @property
    def emotion(self) -> str:
        """The emotion styled on the most frames."""
        counts: dict[str, int] = {}
        for s in self.segments:
            counts[s.emotion] = counts.get(s.emotion, 0) + s.frames
        return max(counts, key=counts.get) if counts else ""  # type: ignore[arg-type]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (the report's entry for a video)."""
        d = {"kind": "video", "emotion": self.emotion, "frames": self.frames, "seconds": round(self.seconds, 3),
             "fps": None if self.fps is None else round(self.fps, 3), "size": list(self.size), "audio": self.audio,
             "rotation": self.rotation, "speed_fps": round(self.frames / self.wall_seconds, 2) if self.wall_seconds else None,
             "segments": [s.summary() for s in self.segments], "decision": self.decision}
        if self.plan is not None:
            d["plan"] = {**dataclasses.asdict(self.plan), "analysis_seconds": round(self.analysis_seconds, 3)}
        if self.coherence is not None:
            d["coherence"] = self.coherence.summary()
        return d


#: How a file's emotion over time is decided (``stylize_video(decision=...)``, ``emostyle --emotion-decision``).
DECISIONS = ("lookahead", "causal")


def decision_options(decision: str | LookaheadOptions, options: TemporalOptions | None = None) -> LookaheadOptions | None:
    """The lookahead options of ``decision`` ("lookahead": the defaults with ``options.min_segment_seconds``), None
    for "causal"; a typed error for anything else."""
    if isinstance(decision, LookaheadOptions):
        return decision
    if decision == "causal":
        return None
    if decision == "lookahead":
        o = options or TemporalOptions()
        return LookaheadOptions(min_segment_seconds=o.min_segment_seconds)
    raise InvalidArgumentError(f"Unknown emotion decision {decision!r}."
                               + note([*DECISIONS, "a LookaheadOptions"], repr(decision)))


def stylize_video(
    stylizer: Stylizer,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    emotion: str | None = None,
    max_side: int | None = None,
    options: TemporalOptions | None = None,
    batch: int = 1,
    overwrite: bool = False,
    progress: Callable[[StyledFrame, int], None] | None = None,
    before_commit: Callable[[VideoResult], None] | None = None,
    coherence: str | CoherenceOptions | None = "off",
    decision: str | LookaheadOptions = "lookahead",
    analysis_progress: Callable[[int, int], None] | None = None,
) -> VideoResult:
    """Style the video file ``src`` into ``dst`` (mp4, mov, mkv, webm, avi; the container follows ``dst``'s
    extension). Frame timing (variable too), size, audio and rotation are kept; ``dst`` appears only when
    complete (a temporary file in its folder until then). ``progress(frame, expected_frames)`` runs per
    frame (0 when the file does not say); ``before_commit(result)`` just before the rename. ``coherence``:
    "off", "flow" or ``CoherenceOptions``; the result's ``coherence`` holds the output's and the input's
    E_warp either way (measured with the stream's reduced-resolution flow).

    ``decision``: "lookahead" (default): the file is decoded and classified first (the frames are not kept,
    ``analysis_progress(frames_done, expected_frames)``), the segments are planned on the whole clip
    (``LookaheadOptions()``, with ``options.min_segment_seconds``; or give ``LookaheadOptions``), then it is
    decoded again and styled; "causal": decided as the frames come (``options``), as a camera is."""
    from . import videoio

    coh = CoherenceOptions.of(coherence)
    look = decision_options(decision, options)
    dst = Path(dst)
    videoio.container_suffix(dst)
    if dst.exists() and not (overwrite and dst.is_file()):
        raise InvalidArgumentError(f"Output {dst} already exists." + note("a new path (or overwrite=True)", dst))
    started = time.monotonic()
    plan = None
    if look is not None and emotion is None:
        first = videoio.VideoReader(src)
        try:
            total = first.expected_frames
            track = analyse(stylizer, first.frames(None), fps=float(first.fps) if first.fps else None,
                            options=options, progress=None if analysis_progress is None else
                            (lambda k: analysis_progress(k, total)))
        finally:
            first.close()
        plan = plan_emotions(track, look)
        log.info("%s: analysed %d frames in %.1f s; %d planned segment(s).", Path(src).name, len(track),
                 track.seconds, len(plan.segments))
    reader = videoio.VideoReader(src)
    try:
        audio = videoio.plan_audio(reader, dst.suffix.lower())
        if audio.mode == "encode":
            log.warning("%s: %s; re-encoding its audio as %s.", Path(src).name, audio.reason, audio.codec)
        elif audio.mode == "drop":
            log.warning("%s: its audio is dropped: %s.", Path(src).name, audio.reason)
        sink = videoio.AudioSink(audio, reader.audio) if audio.mode in ("copy", "encode") else None
        segs, cohs = SegmentLog(), CoherenceLog(coh)
        frames = stream(stylizer, reader.frames(sink), fps=float(reader.fps) if reader.fps else None,
                        emotion=emotion, max_side=max_side, options=options, batch=batch, coherence=coh, measure=True,
                        plan=plan)
        writer: videoio.VideoWriter | None = None
        try:
            for f in frames:
                if writer is None:
                    writer = videoio.VideoWriter(dst, fps=reader.fps, time_base=f.time_base, audio=sink,
                                                 display_matrix=reader.display_matrix, rotation=reader.rotation)
                writer.write(f)
                segs.add(f)
                cohs.add(f.coherence)
                if progress is not None:
                    progress(f, reader.expected_frames)
            if writer is None:
                raise VideoReadError(f"{src} has no video frames." + note("at least 1 frame", 0))
            writer.finish()
            segments = segs.segments()
            seconds = segments[-1].end - segments[0].start if segments else 0.0
            result = VideoResult(str(src), str(dst), writer.frames, seconds, float(reader.fps) if reader.fps else None,
                                 writer.size or (0, 0), audio.summary(), reader.rotation, segments,
                                 time.monotonic() - started, cohs.report(),
                                 "given" if emotion is not None else "causal" if plan is None else "lookahead",
                                 0.0 if plan is None else plan.track.seconds, None if plan is None else plan.options)
            if before_commit is not None:
                before_commit(result)
            writer.commit()
            return result
        finally:
            frames.close()  # stops the pipeline's threads before the reader closes
            if writer is not None:
                writer.abort()  # removes the temporary file unless committed
    finally:
        reader.close()


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
    from . import videoio

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
