"""Video files through PyAV (FFmpeg inside its wheels): decoding, encoding with audio, rotation, atomic output.

Why PyAV: its wheels carry FFmpeg (x264, VP9, AAC, Opus, MP3 encoders; every
common decoder), it gives frames with their pts and time base (variable frame
rates survive), demuxes audio packets that can be copied into the output
without re-encoding, and reads and writes the display matrix (rotation).
OpenCV's ``VideoWriter`` and imageio-ffmpeg's pipe cannot carry audio or
per-frame timestamps. OpenCV is used for cameras only.

Only :mod:`emostyle_rt.video` imports this module, and only when a file is
processed: ``import emostyle_rt`` never loads PyAV.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import BackendError, ImageWriteError, InvalidArgumentError, VideoReadError, note, sentence
from ..fsutil import temp_name

log = logging.getLogger(__name__)

#: Containers read and written, by extension -> FFmpeg format name.
FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}
VIDEO_SUFFIXES = tuple(FORMATS)
#: Video encoders per container, the first one this FFmpeg has is used; (codec, pixel format, options).
VIDEO_CODECS: dict[str, list[tuple[str, str, dict[str, str]]]] = {
    **{ext: [("libx264", "yuv420p", {"crf": "18", "preset": "veryfast"}), ("mpeg4", "yuv420p", {"qscale": "3"})]
       for ext in (".mp4", ".mov", ".mkv")},
    ".webm": [("libvpx-vp9", "yuv420p", {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8",
                                          "row-mt": "1"}),
              ("libvpx", "yuv420p", {"crf": "10", "b": "2M", "deadline": "realtime", "cpu-used": "8"})],
    ".avi": [("mpeg4", "yuv420p", {"qscale": "3"})],
}
#: Codecs whose 4:2:0 encoder needs an even width and height (the frame is padded by one edge pixel).
EVEN_ONLY = ("libx264",)
#: Audio encoder per container when the input's audio cannot be copied.
AUDIO_CODECS = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".webm": "libopus", ".avi": "libmp3lame"}
_DURATION_TAG = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def import_av() -> Any:
    """The ``av`` module, or a typed error naming the extra that installs it."""
    try:
        import av
    except ImportError as exc:
        raise BackendError(
            f"PyAV is not installed ({exc}); video files need it." + note("pip install 'emostyle-rt[video]'", "no av module")
        ) from exc
    return av


def container_suffix(path: str | os.PathLike) -> str:
    """The lower-case extension of ``path`` if it is a container we write; else a typed error."""
    ext = Path(path).suffix.lower()
    if ext not in FORMATS:
        raise InvalidArgumentError(f"{path} is not a video container we write." + note(VIDEO_SUFFIXES, ext or "none"))
    return ext


@dataclass(frozen=True)
class AudioPlan:
    """What happens to the input's audio: ``mode`` "copy", "encode", "drop" or "none" (no audio)."""

    mode: str
    source: str | None = None  # the input codec
    codec: str | None = None  # the output codec (copy: the same)
    reason: str = ""

    def summary(self) -> str:
        if self.mode == "none":
            return "none"
        if self.mode == "copy":
            return f"copied ({self.source})"
        if self.mode == "encode":
            return f"re-encoded ({self.source} -> {self.codec})"
        return f"dropped ({self.source}: {self.reason})"


def _stream_seconds(stream: Any, container: Any) -> float | None:
    """The video stream's declared duration in seconds, if the file says."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    m = _DURATION_TAG.match(str(stream.metadata.get("DURATION", "")))
    if m:
        return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


class VideoReader:
    """The first video stream of a file (frames in presentation order) and its first audio stream."""

    def __init__(self, path: str | os.PathLike) -> None:
        av = import_av()
        self.path = Path(path)
        try:
            self.container = av.open(str(self.path), "r")
        except (av.FFmpegError, OSError, EOFError) as exc:
            raise VideoReadError(f"Cannot open the video {self.path}: " + sentence(exc)
                                 + note("a readable mp4, mov, mkv, webm or avi file", "not decodable")) from exc
        if not self.container.streams.video:
            self.container.close()
            raise VideoReadError(f"{self.path} has no video stream." + note("1 video stream", 0))
        self.video = self.container.streams.video[0]
        self.video.thread_type = "AUTO"
        self.audio = self.container.streams.audio[0] if self.container.streams.audio else None
        skipped = len(self.container.streams) - 1 - (self.audio is not None)
        if skipped:
            log.warning("%s: only the first video and audio streams are kept; %d other stream(s) are dropped.",
                        self.path, skipped)
        rate = self.video.average_rate or self.video.guessed_rate or self.video.base_rate
        self.fps: Fraction | None = Fraction(rate) if rate else None
        self.expected_frames = int(self.video.frames or 0)
        self.expected_seconds = _stream_seconds(self.video, self.container)
        self.display_matrix: tuple[int, ...] | None = None
        self.rotation = 0
        self.decoded = 0
        self._first: float | None = None
        self._last: float | None = None

    def frames(self, audio: AudioSink | None = None) -> Iterator[Any]:
        """Decoded video frames (PyAV ``VideoFrame``); audio packets go to ``audio``. Decoding errors and a
        truncated file raise ``VideoReadError`` naming the file."""
        av = import_av()
        streams = [self.video] + ([self.audio] if audio is not None and self.audio is not None else [])
        try:
            for packet in self.container.demux(streams):
                if packet.stream.type == "audio":
                    audio.put(packet)  # type: ignore[union-attr]
                    continue
                for frame in packet.decode():  # the last, empty packet flushes the decoder's delayed frames
                    yield self._seen(frame)
            if audio is not None:
                audio.put(None)
        except av.FFmpegError as exc:
            raise VideoReadError(f"Cannot decode {self.path} after {self.decoded} frame(s): " + sentence(exc)
                                 + note("a complete, undamaged video", "damaged data")) from exc
        self._check_complete()

    def _seen(self, frame: Any) -> Any:
        if self.decoded == 0:
            self.rotation = int(frame.rotation or 0)
            side = frame.side_data
            for sd in side:  # PyAV 18.1.0 yields the entries, 18.1.1 their types (keys)
                sd = sd if hasattr(sd, "type") else side[sd]
                if "DISPLAYMATRIX" in str(getattr(sd, "type", "")):
                    self.display_matrix = struct.unpack("<9i", bytes(sd)[:36])
        self.decoded += 1
        t = frame.time
        if t is not None:
            self._first = t if self._first is None else self._first
            dur = getattr(frame, "duration", None)  # the last frame may last longer than one average frame
            self._last = t + (float(dur * frame.time_base) if dur and frame.time_base else 0.0)
        return frame

    def _check_complete(self) -> None:
        if self.decoded == 0:
            raise VideoReadError(f"{self.path} has no video frames." + note("at least 1 frame", 0))
        frame_s = float(1 / self.fps) if self.fps else 0.04
        got = max(self._last - (self._first or 0.0), frame_s) if self._last is not None else None
        short = self.expected_frames and self.decoded < self.expected_frames - 1
        if got is not None and self.expected_seconds:
            gap = self.expected_seconds - got
            if short and gap > 1.5 * frame_s or not self.expected_frames and gap > max(0.25, 3 * frame_s):
                raise VideoReadError(
                    f"{self.path} is truncated: decoding stopped at {got:.2f} s of {self.expected_seconds:.2f} s."
                    + note(f"{self.expected_frames or 'all'} frames", self.decoded))

    def close(self) -> None:
        self.container.close()


class AudioSink:
    """Audio between the reader (source thread) and the writer (caller): copied packets, or decoded frames
    when the output re-encodes. Bounded by the pipeline: the reader runs only a few frames ahead."""

    def __init__(self, plan: AudioPlan, stream: Any) -> None:
        self.plan, self.stream = plan, stream
        self.items: collections.deque = collections.deque()
        self.done = threading.Event()

    def put(self, packet: Any) -> None:
        """Take a demuxed packet (an empty one flushes the decoder); None: the input ended."""
        if packet is None:
            self.done.set()
        elif self.plan.mode == "copy":
            if packet.size:
                self.items.append(packet)
        elif self.plan.mode == "encode":
            self.items.extend(self._decode(packet))

    def _decode(self, packet: Any) -> list[Any]:
        av = import_av()
        try:
            return list(self.stream.codec_context.decode(packet))
        except av.FFmpegError as exc:  # a damaged audio packet: skip it, keep the video
            log.warning("Skipped a damaged audio packet: %s", sentence(exc))
            return []


def plan_audio(reader: VideoReader, out_ext: str) -> AudioPlan:
    """Copy the audio when the output container takes its codec, else re-encode, else drop (with a reason)."""
    av = import_av()
    a = reader.audio
    if a is None:
        return AudioPlan("none")
    src = a.codec_context.name
    fmt = FORMATS[out_ext]
    try:
        with av.open(io.BytesIO(), "w", format=fmt) as probe:  # the muxer's own answer, not a table
            probe.add_stream_from_template(a)
            probe.start_encoding()
        return AudioPlan("copy", src, src)
    except (av.FFmpegError, ValueError, TypeError):
        why = f"the {fmt} muxer does not take {src}"
    codec = AUDIO_CODECS[out_ext]
    try:
        av.Codec(codec, "w")
    except (av.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
        return AudioPlan("drop", src, None, f"{out_ext} cannot hold {src} ({why}) and this FFmpeg has no {codec} encoder")
    return AudioPlan("encode", src, codec, why)


def _pick_video_codec(ext: str) -> tuple[str, str, dict[str, str]]:
    av = import_av()
    for codec, pix, opts in VIDEO_CODECS[ext]:
        try:
            av.Codec(codec, "w")
            return codec, pix, opts
        except (av.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
            continue
    raise BackendError(f"This FFmpeg has no video encoder for {ext}." + note([c for c, _, _ in VIDEO_CODECS[ext]], "none"))


class VideoWriter:
    """An output video written to a temporary file in the destination folder, renamed when complete.

    The temporary name is ``fsutil.temp_name``'s, so the CLI's cleanup rule removes
    it after a kill. Frames come upright; when the input had a display rotation and
    the container stores one (not AVI), frames are turned back and the matrix is
    copied. H.264 needs even sizes: odd ones get one repeated edge row/column.
    """

    def __init__(self, path: str | os.PathLike, *, fps: Fraction | None, time_base: Fraction | None = None,
                 audio: AudioSink | None = None, display_matrix: tuple[int, ...] | None = None,
                 rotation: int = 0) -> None:
        self.av = import_av()
        self.path = Path(path)
        self.ext = container_suffix(self.path)
        self.fps = fps
        self.time_base = time_base
        self.audio = audio
        self.matrix, self.rotation = display_matrix, rotation
        self.codec, self.pix_fmt, self.options = _pick_video_codec(self.ext)
        self.size: tuple[int, int] | None = None  # (width, height) written
        self.frames = 0
        self._tmp: Path | None = None
        self._out: Any = None
        self._vs: Any = None
        self._as: Any = None
        self._last_pts: int | None = None
        self._committed = False

    # -- lifecycle

    def _create_temp(self) -> Path:
        folder = self.path.parent
        while True:
            tmp = folder / temp_name(self.path.name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._write_error(exc) from exc
            os.close(fd)
            return tmp

    def _write_error(self, exc: BaseException) -> ImageWriteError:
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return ImageWriteError(f"Cannot write {self.path}: " + sentence(text)
                               + note("a writable folder with free space", self.path.parent))

    def _open(self, width: int, height: int, rotation: int) -> None:
        av = self.av
        self.rotation = rotation if self.matrix is None else self.rotation
        keep_matrix = self.matrix is not None and self.ext != ".avi"
        if self.rotation and not keep_matrix:
            log.info("%s stores no rotation: its frames are written upright.", self.path.name)
        if keep_matrix and round(self.rotation / 90) % 2:
            width, height = height, width
        if self.codec in EVEN_ONLY:
            width, height = width + width % 2, height + height % 2
        self.size = (width, height)
        self._tmp = self._create_temp()
        opts = {"movflags": "+faststart"} if self.ext in (".mp4", ".mov") else {}
        try:
            self._out = av.open(str(self._tmp), "w", format=FORMATS[self.ext], options=opts)
            rate = self.fps if self.fps else Fraction(30)
            vs = self._out.add_stream(self.codec, rate=rate, options=dict(self.options))
            vs.width, vs.height, vs.pix_fmt = width, height, self.pix_fmt
            tb = self.time_base if self.time_base and self.ext != ".avi" else 1 / Fraction(rate)
            self.time_base = Fraction(tb)
            vs.time_base = self.time_base
            vs.codec_context.time_base = self.time_base
            if keep_matrix:
                vs.set_display_matrix(list(self.matrix or ()))
            self._vs = vs
            if self.audio is not None and self.audio.plan.mode in ("copy", "encode"):
                self._as = self._audio_stream()
        except av.FFmpegError as exc:
            raise self._write_error(exc) from exc

    def _audio_stream(self) -> Any:
        plan, src = self.audio.plan, self.audio.stream  # type: ignore[union-attr]
        if plan.mode == "copy":
            return self._out.add_stream_from_template(src)
        rates = self.av.Codec(plan.codec, "w").audio_rates or ()
        rate = src.rate if not rates or src.rate in rates else max(rates)
        st = self._out.add_stream(plan.codec, rate=rate)
        channels = src.codec_context.layout.nb_channels if src.codec_context.layout else 2
        st.layout = "mono" if channels == 1 else "stereo"
        return st

    def write(self, frame: Any) -> None:
        """Encode one ``StyledFrame`` (upright RGB, or BGR is not accepted) and the audio that is ready."""
        img = frame.image
        if self._out is None:
            self._open(img.shape[1], img.shape[0], frame.rotation)
        if self.matrix is not None and self.ext != ".avi" and self.rotation:
            img = np.rot90(img, -round(self.rotation / 90) % 4)
        w, h = self.size or (img.shape[1], img.shape[0])
        dw, dh = w - img.shape[1], h - img.shape[0]
        if (dw, dh) != (0, 0) and 0 <= dw <= 1 and 0 <= dh <= 1:  # odd sides for an even-only encoder
            img = np.pad(img, ((0, dh), (0, dw), (0, 0)), mode="edge")
        elif (dw, dh) != (0, 0):  # the stream changed size mid-way: keep the first size
            import cv2

            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        vf = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        vf.pts = self._pts(frame)
        vf.time_base = self.time_base
        try:
            self._out.mux(self._vs.encode(vf))
            self._drain_audio(final=False)
        except self.av.FFmpegError as exc:
            raise self._write_error(exc) from exc
        except OSError as exc:
            raise self._write_error(exc) from exc
        self.frames += 1

    def _pts(self, frame: Any) -> int:
        tb = self.time_base or Fraction(1, 1000)
        if frame.pts is not None and frame.time_base == tb:
            pts = int(frame.pts)
        else:
            pts = round(Fraction(frame.time).limit_denominator(1_000_000) / tb)
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # never two frames at one time (AVI's constant rate, duplicate stamps)
        self._last_pts = pts
        return pts

    def _drain_audio(self, final: bool) -> None:
        if self._as is None or self.audio is None:
            return
        items = self.audio.items
        while items:
            item = items.popleft()
            if self.audio.plan.mode == "copy":
                item.stream = self._as
                self._out.mux(item)
            else:
                self._out.mux(self._as.encode(item))
        if final:
            if self.audio.plan.mode == "encode":
                self._out.mux(self._as.encode(None))

    def finish(self) -> None:
        """Flush the encoders, write the trailer, close and fsync the temporary file."""
        if self._out is None:
            raise VideoReadError("No frame was written." + note("at least 1 frame", 0))
        try:
            self._out.mux(self._vs.encode(None))
            self._drain_audio(final=True)
            self._out.close()
            self._out = None
            fd = os.open(self._tmp, os.O_RDONLY)  # type: ignore[arg-type]
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (self.av.FFmpegError, OSError) as exc:
            raise self._write_error(exc) from exc

    def commit(self) -> Path:
        """Rename the finished temporary file to the destination."""
        try:
            os.replace(self._tmp, self.path)  # type: ignore[arg-type]
        except OSError as exc:
            raise self._write_error(exc) from exc
        self._committed = True
        return self.path

    def abort(self) -> None:
        """Close and remove the temporary file (never the destination)."""
        if self._out is not None:
            try:
                self._out.close()
            except Exception:  # noqa: BLE001 - a half-written file is removed anyway
                pass
            self._out = None
        if self._tmp is not None and not self._committed:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()
