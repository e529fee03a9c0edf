"""Emotion over time: the schedule and smoothing options, the face tracker, the causal timeline with its
hysteresis and cross-fades, and the lookahead plan of a file (its track of scores, the segments chosen offline)."""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

from ..detection.faces import Face
from ..errors import InvalidArgumentError, NoFaceError, VideoReadError, note
from .lookahead import LookaheadOptions, PlannedSegment, plan_segments

if TYPE_CHECKING:
    from ..stylizer import Classification

log = logging.getLogger(__name__)


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




def iou(a: Face, b: Face) -> float:
    """Intersection over union of two faces' boxes (:func:`emostyle_rt.metrics.box_iou`)."""
    from ..metrics import box_iou

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


def plan_emotions(track: EmotionTrack, options: LookaheadOptions | None = None,
                  initial: str | None = None) -> EmotionPlan:
    """The segments of ``track`` (``emostyle_rt.video.lookahead.plan_segments``); ``initial``: the emotion of a file in
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

def default_initial(labels: tuple[str, ...]) -> str:
    """The emotion styled before the first face is classified: "neutral" if the bundle has it, else the first."""
    return "neutral" if "neutral" in labels else labels[0]

