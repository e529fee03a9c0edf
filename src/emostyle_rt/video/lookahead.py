"""Emotion over time with lookahead: a whole clip's style segments chosen offline (video files).

A causal rule (``emostyle_rt.video.EmotionSmoother``) decides each frame from the
past alone: to follow a change within a second it must act on a second of
evidence, and a face's own excursions of a second or two look just like the start
of a change (docs/emotion-over-time.md). A video file is known in full before it is
styled, so its segments can be chosen to fit every classification at once:

1. **Evidence.** Each classification's scores, weighted by the seconds it stands
   for (the time since the previous classification, at most ``MAX_GAP_FACTOR``
   typical gaps), so that neither the frame rate nor the classification schedule
   changes the plan. ``evidence="prob"``: the probabilities themselves (a switch
   must gain ``switch_penalty`` seconds of probability lead); ``"log"``: their
   logarithms (nat-seconds). Frames without a classification (between two on the
   schedule, or no face found) carry no evidence: the segment around them goes on,
   as the causal rule holds its emotion.
2. **Segmental Viterbi.** The labelling of the frames, constant on segments, that
   maximises the summed evidence minus ``switch_penalty`` per switch, with every
   segment at least ``min_segment_seconds`` long (a clip shorter than that is one
   segment). Exact, O(frames x labels).
3. **Labels.** Each segment is relabelled with the emotion of its highest mean score
   (the plain mean of its classifications, summed in frame order as the segment
   report sums them) and equal neighbours merged, until nothing changes. A merged
   segment keeps the label (a mean of means whose top is the same label has that
   top), so the result holds by construction: every segment's label is its highest
   mean score, and no segment is shorter than the minimum.

Segment boundaries fall where the evidence changes, not a smoothing delay after it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidArgumentError, note

#: Evidence kinds of :class:`LookaheadOptions`.
EVIDENCE = ("prob", "log")
#: A classification stands for at most this many typical gaps between classifications (a face lost for long
#: does not make the next one count for the whole gap).
MAX_GAP_FACTOR = 2.0
#: Probabilities below this count as this in ``evidence="log"`` (one confident miss must not outweigh seconds).
LOG_FLOOR = 1e-4
_EPS = 1e-9  # frame times are i / fps: 1.5 s may come out as 1.4999...


@dataclass(frozen=True)
class LookaheadOptions:
    """How :func:`plan_segments` chooses a clip's segments (defaults measured by ``studies/video_sweep/video_sweep.py`` on a
    real classifier's noise, docs/emotion-over-time.md).

    ``switch_penalty``: the evidence a switch must gain (``evidence="prob"``: seconds of probability lead: the default
    0.25 is a lead of 0.125 held for 2 s, or of 0.25 for 1 s); ``min_segment_seconds``: no segment is shorter (0: no
    minimum);
    ``evidence``: "prob" or "log" (see the module).
    """

    switch_penalty: float = 0.25
    min_segment_seconds: float = 1.5
    evidence: str = "prob"

    def __post_init__(self) -> None:
        for name in ("switch_penalty", "min_segment_seconds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise InvalidArgumentError(f"{name} must be a number >= 0." + note("a number >= 0", repr(v)))
        if self.evidence not in EVIDENCE:
            raise InvalidArgumentError(f"Unknown evidence {self.evidence!r}." + note(list(EVIDENCE), self.evidence))


@dataclass(frozen=True)
class PlannedSegment:
    """One segment of a plan: frames ``first`` to ``stop - 1``, ``start`` / ``end`` in seconds, its ``emotion``, the
    mean raw ``scores`` of its ``classifications`` (empty when it has none: no face in it)."""

    first: int
    stop: int
    start: float
    end: float
    emotion: str
    scores: dict[str, float]
    classifications: int

    @property
    def frames(self) -> int:
        return self.stop - self.first

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (times rounded to ms, scores to 4 digits)."""
        return {"start": round(self.start, 3), "end": round(self.end, 3), "emotion": self.emotion,
                "frames": self.frames, "classifications": self.classifications,
                "scores": {k: round(v, 4) for k, v in self.scores.items()}}


def frame_bounds(n: int, fps: float | None = None, times: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
    """[n + 1] seconds: each frame's start, then the clip's end (the last frame lasts as long as the one before it,
    as ``SegmentLog`` ends a stream). From ``times`` (variable frame rate) or ``fps``."""
    if times is None:
        if fps is None or isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not fps > 0:
            raise InvalidArgumentError("plan_segments needs fps > 0 or the frames' times." + note("fps or times", fps))
        return np.arange(n + 1, dtype=np.float64) / float(fps)
    t = np.asarray(times, np.float64)
    if t.shape != (n,) or not np.isfinite(t).all() or (np.diff(t) < 0).any():
        raise InvalidArgumentError("times must be one finite, non-decreasing time per frame."
                                   + note(f"{n} times", f"shape {t.shape}"))
    last = t[-1] - t[-2] if n > 1 else (1.0 / fps if fps else 0.0)
    return np.append(t, t[-1] + last) if n else np.zeros(1)


def _evidence(p: np.ndarray, bounds: np.ndarray, o: LookaheadOptions) -> np.ndarray:
    """[n, k] evidence per frame (0 where there is no classification), weighted by the seconds each one stands for."""
    n, k = p.shape
    seen = np.flatnonzero(np.isfinite(p).all(axis=1))
    e = np.zeros((n, k))
    if not len(seen):
        return e
    t = bounds[seen]
    gaps = np.diff(t)
    typical = float(np.median(gaps)) if len(gaps) else float(bounds[-1] - bounds[0]) or 1.0
    w = np.minimum(np.r_[typical, gaps], MAX_GAP_FACTOR * typical)
    v = p[seen] if o.evidence == "prob" else np.log(np.maximum(p[seen], LOG_FLOOR))
    e[seen] = w[:, None] * v
    return e


def _viterbi(gain: np.ndarray, bounds: np.ndarray, min_s: float, penalty: float) -> list[tuple[int, int, int]]:
    """(first, stop, label) of the best segmentation: summed ``gain`` minus ``penalty`` per switch, every segment
    lasting >= ``min_s`` (by ``bounds``). G[e, k]: the best value of frames [0, e) whose last segment has label k."""
    n, k = gain.shape
    cum = np.vstack([np.zeros(k), np.cumsum(gain, axis=0)])
    G = np.full((n + 1, k), -np.inf)
    start = np.zeros((n + 1, k), np.int64)  # the last segment's first frame, per (e, k)
    before = np.full((n + 1, k), -1, np.int64)  # the label before a segment that starts at s, per (s, k)
    best, best_s = np.full(k, -np.inf), np.zeros(k, np.int64)
    ks = np.arange(k)
    j = 0
    for e in range(1, n + 1):
        while j < e and bounds[j] <= bounds[e] - min_s + _EPS:  # a segment may start at j and end at e or later
            if j == 0:
                enter = np.zeros(k)
            else:
                g = G[j]
                o = np.argsort(-g, kind="stable")[:2]
                other = np.where(ks == o[0], o[1], o[0])  # the best previous label that differs from k
                enter = g[other] - penalty
                before[j] = other
            v = enter - cum[j]
            better = v >= best  # ties: the later start (frames without evidence stay with the segment before)
            best, best_s = np.where(better, v, best), np.where(better, j, best_s)
            j += 1
        G[e], start[e] = best + cum[e], best_s
    out, e, lab = [], n, int(np.argmax(G[n]))
    while e > 0:
        s = int(start[e, lab])
        out.append((s, e, lab))
        e, lab = s, int(before[s, lab])
    return out[::-1]


def _mean(rows: np.ndarray) -> np.ndarray:
    """The mean of ``rows`` summed in order (the same floating-point sums as ``SegmentLog``)."""
    return np.add.accumulate(rows, axis=0)[-1] / len(rows)


def plan_segments(scores: np.ndarray, fps: float | None = None, *, labels: Sequence[str],
                  times: Sequence[float] | np.ndarray | None = None,
                  options: LookaheadOptions | None = None, initial: str | None = None) -> tuple[PlannedSegment, ...]:
    """The style segments of a whole clip (see the module).

    ``scores``: [frames, labels] raw classifier scores, a row of NaN where the frame has no classification (not on
    the schedule, or no face); ``fps`` or ``times`` (seconds per frame) time the frames; ``labels``: the score
    columns' emotions; ``initial``: the emotion of a clip without any classification (one segment; default
    ``labels[0]``).
    """
    o = options or LookaheadOptions()
    if not isinstance(o, LookaheadOptions):
        raise InvalidArgumentError("options must be a LookaheadOptions." + note("LookaheadOptions", type(o).__name__))
    p = np.asarray(scores, np.float64)
    labels = tuple(labels)
    if p.ndim != 2 or p.shape[1] != len(labels) or not len(labels):
        raise InvalidArgumentError("scores must be [frames, labels]." + note(f"[n, {len(labels)}]", p.shape))
    n = p.shape[0]
    if n == 0:
        return ()
    bounds = frame_bounds(n, fps, times)
    seen = np.isfinite(p).all(axis=1)
    if initial is not None and initial not in labels:
        raise InvalidArgumentError(f"Unknown initial {initial!r}." + note(list(labels), initial))
    if not seen.any():
        return (PlannedSegment(0, n, float(bounds[0]), float(bounds[n]), initial or labels[0], {}, 0),)
    min_s = o.min_segment_seconds if bounds[n] - bounds[0] + _EPS >= o.min_segment_seconds else math.inf
    if math.isinf(min_s) or len(labels) == 1:  # shorter than one segment (or one label): one segment
        cuts = [(0, n, 0)]
    else:
        cuts = _viterbi(_evidence(p, bounds, o), bounds, min_s, o.switch_penalty)
    # relabel by the highest mean score, merge equal neighbours, until stable
    while True:
        lab = []
        for s, e, k in cuts:
            rows = p[s:e][seen[s:e]]
            lab.append(int(np.argmax(_mean(rows))) if len(rows) else k)
        merged: list[tuple[int, int, int]] = []
        for (s, e, _), k in zip(cuts, lab):
            if merged and merged[-1][2] == k:
                merged[-1] = (merged[-1][0], e, k)
            else:
                merged.append((s, e, k))
        if merged == cuts:
            break
        cuts = merged
    out = []
    for s, e, k in cuts:
        rows = p[s:e][seen[s:e]]
        mean = dict(zip(labels, _mean(rows).tolist())) if len(rows) else {}
        out.append(PlannedSegment(s, e, float(bounds[s]), float(bounds[e]), labels[k], mean, len(rows)))
    return tuple(out)
