"""The stream pipeline: source, analysis and style threads joined by bounded queues (``Stylizer.stream``), its
results (styled frames, segments) and the analysis pass of a file (:func:`analyse`)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Generator

import cv2
import numpy as np

from ..detection.faces import Face
from ..errors import InvalidArgumentError, InvalidImageError, note
from .coherence import Blender, CoherenceOptions, FlowTracker, FrameCoherence
from .emotion import (EmotionPlan, EmotionState, EmotionTimeline, EmotionTrack, PlannedTimeline, TemporalOptions, _positive,
                      default_initial)
from .sources import _END, _Failure, _Item, _source

if TYPE_CHECKING:
    from ..stylizer import Classification, Stylizer

log = logging.getLogger(__name__)


#: Frames each queue between stages holds (a few frames of look-ahead; memory stays flat).
QUEUE_FRAMES = 4


@dataclass(frozen=True, eq=False)
class StyledFrame:
    """One styled frame of a stream.

    ``image``: HxWx3 uint8, RGB (BGR when the stream was asked for ``bgr``), the
    input's size, upright (a PyAV frame's display rotation applied). ``time``: seconds
    from the source (PyAV pts, capture position) or ``index / fps``. ``pts``,
    ``time_base``, ``rotation`` (degrees counter-clockwise, as PyAV reports it):
    the source frame's, when it was a PyAV frame. ``coherence``: what temporal coherence did to this frame
    (``emostyle_rt.video.coherence.FrameCoherence``; None when the stream neither blends nor measures).
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
    ``emostyle_rt.video.coherence``); ``measure``: also fill each frame's warping error (``StyledFrame.coherence``).
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

