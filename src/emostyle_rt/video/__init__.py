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
segments are chosen offline (``emostyle_rt.video.lookahead.plan_segments``: every segment at least
``min_segment_seconds``, each labelled with its highest mean score), and a second decoding is styled with that
plan (``stream(..., plan=...)``). Cameras and other live sources stay causal.

The package, one concern per module:

- :mod:`.emotion`: :class:`TemporalOptions`, the face tracker, the causal
  :class:`EmotionTimeline` and the lookahead plan (:func:`plan_emotions`);
- :mod:`.sources`: frames from arrays, PyAV frames and OpenCV captures;
- :mod:`.pipeline`: :func:`stream` (the threads and queues), :func:`analyse`;
- :mod:`.files`: :func:`stylize_video`, file to file; :mod:`.camera`: cameras;
- :mod:`.io`: PyAV decoding and encoding; :mod:`.coherence`: flow-guided
  blending between frames; :mod:`.lookahead`: the offline segment planner.

``emostyle_rt.videoio``, ``emostyle_rt.coherence`` and ``emostyle_rt.lookahead``
are the deprecated 0.1.0 paths of the last three. PyAV (file input/output) is
imported only by :func:`stylize_video`, never by ``import emostyle_rt``.
"""


from __future__ import annotations

from .emotion import (CrossFade, EmotionPlan, EmotionSmoother, EmotionState, EmotionTimeline, EmotionTrack, FaceTracker,
    PlannedTimeline, TRACK_MIN_SCORE, TRACK_SIDE, TemporalOptions, default_initial, iou,
    plan_emotions)
from .sources import upright
from .pipeline import QUEUE_FRAMES, Segment, SegmentLog, StyledFrame, analyse, stream
from .files import DECISIONS, VideoResult, decision_options, stylize_video
from .camera import open_camera, record_camera
from .coherence import Blender, CoherenceLog, CoherenceOptions, CoherenceReport, FlowTracker, FrameCoherence
from .lookahead import LookaheadOptions, PlannedSegment, plan_segments

__all__ = [
    "Blender",
    "CoherenceLog",
    "CoherenceOptions",
    "CoherenceReport",
    "CrossFade",
    "DECISIONS",
    "EmotionPlan",
    "EmotionSmoother",
    "EmotionState",
    "EmotionTimeline",
    "EmotionTrack",
    "FaceTracker",
    "FlowTracker",
    "FrameCoherence",
    "LookaheadOptions",
    "PlannedSegment",
    "PlannedTimeline",
    "QUEUE_FRAMES",
    "Segment",
    "SegmentLog",
    "StyledFrame",
    "TRACK_MIN_SCORE",
    "TRACK_SIDE",
    "TemporalOptions",
    "VideoResult",
    "analyse",
    "decision_options",
    "default_initial",
    "iou",
    "open_camera",
    "plan_emotions",
    "plan_segments",
    "record_camera",
    "stream",
    "stylize_video",
    "upright",
]
