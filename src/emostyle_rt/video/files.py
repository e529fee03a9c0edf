"""Video files in, video files out: :func:`stylize_video` (decode, decide with lookahead or causally, style,
encode with the audio and the rotation kept)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable


from ..errors import InvalidArgumentError, VideoReadError, note
from .coherence import CoherenceLog, CoherenceOptions, CoherenceReport
from .emotion import TemporalOptions, plan_emotions
from .lookahead import LookaheadOptions
from .pipeline import Segment, SegmentLog, StyledFrame, analyse, stream

if TYPE_CHECKING:
    from ..stylizer import Stylizer

log = logging.getLogger(__name__)


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
    from . import io as videoio

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

