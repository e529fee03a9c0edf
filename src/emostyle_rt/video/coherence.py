"""Temporal coherence of styled video: the warping-error metric and flow-guided blending.

A fast style network styles each frame on its own, so its textures shimmer from
frame to frame even on a still scene. This module measures that and removes most of it:

- :func:`estimate_flow` -- optical flow between two *input* frames (OpenCV's DIS,
  in OpenCV 4 and 5), with a mask of the pixels whose flow is reliable: not
  occluded by the forward-backward check of Ruder et al. (``|w + w'|^2 <= 0.01
  (|w|^2 + |w'|^2) + 0.5``) and landing inside the previous frame.
- :func:`warp` -- brings an image of the previous frame onto the current one.
- :func:`warping_error` -- Lai et al. 2018's E_warp: the mean over consecutive pairs of
  the mean ``|styled_t - warp(styled_{t-1})|`` over the reliable pixels, in 8-bit
  levels (0..255, averaged over the 3 channels), next to the input's own E_warp
  measured with the same flow (what the scene's motion and noise leave anyway).
- :class:`FlowTracker` (analysis side) and :class:`Blender` (style side): the
  per-stream state ``Stylizer.stream(..., coherence="flow")`` uses to blend each
  styled frame with the warped previous output where the flow is reliable,
  ``out = styled + strength * weight * (warp(prev_out) - styled)``, reset at scene
  cuts, style switches and flow failures. :class:`CoherenceLog` sums a stream up.

numpy + OpenCV only (the runtime's rule). The flow runs on the CPU at a reduced
resolution (long side :data:`FLOW_SIDE`); see ``docs/video-coherence.md`` for the
measurements behind the constants.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from ..errors import FlowError, InvalidArgumentError, InvalidImageError, note

#: Coherence modes of a stream: "off" (each frame on its own) or "flow" (blend along the optical flow).
MODES = ("off", "flow")
#: Long side (px) of the grey copies the stream's flow runs on; the field is upsampled to the frame.
FLOW_SIDE = 320
#: DIS presets by name (OpenCV's constants).
PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
           "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
#: Preset of the stream's flow (speed) and of the metric's (accuracy; the metric runs at full resolution).
STREAM_PRESET, METRIC_PRESET = "fast", "medium"
#: Forward-backward consistency (Ruder et al. 2016): occluded when |w + w'|^2 > A (|w|^2 + |w'|^2) + B.
CONSISTENCY_A, CONSISTENCY_B = 0.01, 0.5
#: A grey copy whose standard deviation is below this (8-bit levels) is flat: no flow can be found on it.
FLAT_STD = 2.0
#: The blend trusts a pixel only where the warped previous input matches the current one within this
#: many grey levels (on the small copy, whose averaging halves sensor noise); this catches flow errors.
MATCH_LEVELS = 24.0
#: Fewer reliable, matching pixels than this fraction: a scene cut (the blend starts again).
CUT_FRACTION = 0.3
#: Motion (fraction of the long side per frame) at which the blend weight halves; 0: no motion adaptation.
DEFAULT_MOTION = 0.008
#: Default blend strength (measured: ``python studies/coherence/coherence.py``).
DEFAULT_STRENGTH = 0.8


def _check_frame(img: object, what: str) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.size == 0 or (
            img.ndim == 3 and img.shape[2] not in (1, 3)):
        shape = getattr(img, "shape", type(img).__name__)
        raise InvalidImageError(f"{what} is not an image array." + note("HxW or HxWx3 numpy array", shape))
    if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
        raise InvalidImageError(f"{what} has dtype {img.dtype}." + note("uint8 (0..255) or float (0..255)", img.dtype))
    return img


def _grey(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img if img.dtype == np.uint8 else img.astype(np.float32), cv2.COLOR_RGB2GRAY)
    elif img.ndim == 3:
        img = img[:, :, 0]
    if img.dtype != np.uint8:
        img = np.clip(np.nan_to_num(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


@functools.lru_cache(maxsize=8)
def _grid(h: int, w: int) -> np.ndarray:
    """HxWx2 float32 pixel coordinates (x, y); read-only, shared."""
    g = np.empty((h, w, 2), np.float32)
    g[..., 0] = np.arange(w, dtype=np.float32)[None, :]
    g[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    g.setflags(write=False)
    return g


@dataclass(frozen=True, eq=False)
class Frame:
    """An input frame prepared for flow: its grey copy at the flow's resolution and its full (height, width)."""

    small: np.ndarray
    shape: tuple[int, int]

    @property
    def scale(self) -> float:
        """Small copy's size / the frame's (<= 1)."""
        return self.small.shape[1] / self.shape[1]


@dataclass(frozen=True, eq=False)
class Flow:
    """Where each pixel of the current frame was in the previous one, and which pixels to trust.

    Held at the resolution it was estimated at (``small_*``); ``field``, ``valid``
    and ``weight`` are the frame-sized versions, made on first use:
    ``field`` HxWx2 float32, (dx, dy) in frame pixels: current pixel (x, y) was at
    (x + dx, y + dy); ``valid`` HxW bool, forward-backward consistent and inside the
    previous frame (the metric's mask); ``weight`` HxW float32 in [0, 1], valid *and*
    the warped previous input matches the current one (the blend's confidence).
    ``matched``: the fraction of the frame with weight (a scene cut has little).
    """

    small_field: np.ndarray
    small_valid: np.ndarray
    small_weight: np.ndarray
    shape: tuple[int, int]
    matched: float

    @classmethod
    def from_field(cls, field_: np.ndarray) -> Flow:
        """A known flow (synthetic motion): HxWx2 (dx, dy) as in ``field``; every pixel landing inside is valid."""
        f = np.asarray(field_, np.float32)
        if f.ndim != 3 or f.shape[2] != 2 or not np.isfinite(f).all():
            raise InvalidArgumentError("A flow field is HxWx2 finite (dx, dy)." + note("HxWx2 finite", f.shape))
        h, w = f.shape[:2]
        pos = _grid(h, w) + f
        valid = (pos[..., 0] >= 0) & (pos[..., 0] <= w - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= h - 1)
        return cls(f, valid, valid.astype(np.float32), (h, w), float(valid.mean()))

    @property
    def scale(self) -> float:
        return self.small_field.shape[1] / self.shape[1]

    def _up(self, a: np.ndarray, interp: int) -> np.ndarray:
        h, w = self.shape
        return a if a.shape[:2] == (h, w) else cv2.resize(a, (w, h), interpolation=interp)

    @functools.cached_property
    def field(self) -> np.ndarray:
        f = self._up(self.small_field, cv2.INTER_LINEAR)
        return f if self.scale == 1.0 else f * np.float32(1.0 / self.scale)

    @functools.cached_property
    def valid(self) -> np.ndarray:
        v = self.small_valid
        return v if v.shape == self.shape else self._up(v.view(np.uint8), cv2.INTER_NEAREST).astype(bool)

    @functools.cached_property
    def weight(self) -> np.ndarray:
        return self._up(self.small_weight, cv2.INTER_LINEAR)

    @functools.cached_property
    def map(self) -> np.ndarray:
        """HxWx2 float32 absolute source coordinates for ``cv2.remap``."""
        return _grid(*self.shape) + self.field


def prepare(rgb: np.ndarray, side: int | None = FLOW_SIDE) -> Frame:
    """``rgb`` (HxWx3 RGB or HxW grey; uint8, or float on the 0..255 scale) as a :class:`Frame` for flow at long side ``side``
    (None: full resolution)."""
    img = _check_frame(rgb, "A frame")
    h, w = img.shape[:2]
    grey = _grey(img)
    s = 1.0 if side is None else min(1.0, side / max(h, w))
    if s < 1.0:
        grey = cv2.resize(grey, (max(8, round(w * s)), max(8, round(h * s))), interpolation=cv2.INTER_AREA)
    return Frame(grey, (h, w))


class FlowEstimator:
    """DIS optical flow between prepared frames with the forward-backward occlusion check.

    Not thread-safe (it holds one DIS instance): one per stream or thread.
    """

    def __init__(self, side: int | None = FLOW_SIDE, preset: str = STREAM_PRESET) -> None:
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < 16):
            raise InvalidArgumentError("The flow's side must be an integer >= 16 (or None)." + note(">= 16", repr(side)))
        if preset not in PRESETS:
            raise InvalidArgumentError(f"Unknown DIS preset {preset!r}." + note(list(PRESETS), preset))
        self.side, self.preset = side, preset
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])

    def prepare(self, rgb: np.ndarray) -> Frame:
        return prepare(rgb, self.side)

    def between(self, prev: Frame, cur: Frame) -> Flow:
        """The flow from ``cur`` back to ``prev``; :class:`FlowError` when it cannot be trusted."""
        if prev.shape != cur.shape or prev.small.shape != cur.small.shape:
            raise FlowError(f"The frame size changed from {prev.shape[1]}x{prev.shape[0]} to "
                            f"{cur.shape[1]}x{cur.shape[0]}." + note("one size per stream", f"{cur.shape[1]}x{cur.shape[0]}"))
        for name, fr in (("previous", prev), ("current", cur)):
            std = float(cv2.meanStdDev(fr.small)[1][0, 0])
            if std < FLAT_STD:
                raise FlowError(f"The {name} frame is flat (grey std {std:.2f}); no flow can be found on it."
                                + note(f"std >= {FLAT_STD}", round(std, 2)))
        a, b = prev.small, cur.small
        bw = self._dis.calc(b, a, None)  # cur(x) ~ prev(x + bw(x))
        fw = self._dis.calc(a, b, None)  # prev(y) ~ cur(y + fw(y))
        if not (np.isfinite(bw).all() and np.isfinite(fw).all()):
            raise FlowError("Optical flow gave non-finite values." + note("a finite field", "NaN/inf"))
        h, w = b.shape
        pos = _grid(h, w) + bw
        fw_at = cv2.remap(fw, pos, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        s = bw + fw_at
        lhs = s[..., 0] ** 2 + s[..., 1] ** 2
        rhs = CONSISTENCY_A * (bw[..., 0] ** 2 + bw[..., 1] ** 2 + fw_at[..., 0] ** 2 + fw_at[..., 1] ** 2) + CONSISTENCY_B
        inside = (pos[..., 0] >= 0) & (pos[..., 0] <= w - 1) & (pos[..., 1] >= 0) & (pos[..., 1] <= h - 1)
        valid = (lhs <= rhs) & inside
        warped = cv2.remap(a, pos, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        match = valid & (cv2.absdiff(warped, b) <= MATCH_LEVELS)
        return Flow(bw, valid, match.astype(np.float32), cur.shape, float(match.mean()))


def estimate_flow(prev: np.ndarray, cur: np.ndarray, *, side: int | None = FLOW_SIDE,
                  preset: str = STREAM_PRESET) -> Flow:
    """Optical flow from frame ``cur`` back to frame ``prev`` (same size; RGB or grey, uint8 or float 0..255).

    ``side``: long side of the grey copies the flow runs on (None: full resolution);
    the field is upsampled to the frame. Raises :class:`FlowError` for a flat frame
    or a size change, :class:`InvalidImageError` for what is not an image.
    """
    est = FlowEstimator(side, preset)
    return est.between(est.prepare(prev), est.prepare(cur))


def warp(img: np.ndarray, flow: Flow) -> np.ndarray:
    """``img`` (an image of the previous frame, any channels, uint8 or float) moved onto the current frame
    along ``flow`` (bilinear; pixels from outside take the nearest edge, and are not ``flow.valid``)."""
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3) or img.shape[:2] != flow.shape:
        shape = getattr(img, "shape", type(img).__name__)
        raise InvalidImageError("The image to warp does not have the flow's size."
                                + note(f"{flow.shape[0]}x{flow.shape[1]}(xC)", shape))
    src = img if img.dtype in (np.uint8, np.float32) else img.astype(np.float32)
    return cv2.remap(src, flow.map, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def pair_error(cur: np.ndarray, warped_prev: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """Mean |cur - warped_prev| over ``mask`` and the channels (image units), and the mask's pixel count."""
    n = int(np.count_nonzero(mask))
    if n == 0:
        return 0.0, 0
    if cur.dtype == np.uint8 and warped_prev.dtype == np.uint8:
        d = cv2.absdiff(cur, warped_prev)
    else:
        d = np.abs(cur.astype(np.float32) - warped_prev.astype(np.float32))
    means = cv2.mean(d, mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    c = 1 if d.ndim == 2 else d.shape[2]
    return float(sum(means[:c]) / c), n


@dataclass(frozen=True)
class WarpingError:
    """E_warp of a styled clip and of its input over the same pixels (8-bit levels, lower is steadier).

    ``styled`` / ``input``: the mean over ``pairs`` consecutive frame pairs of each pair's mean
    absolute difference to the warped previous frame over the reliable pixels (``pixels`` in all).
    """

    styled: float
    input: float
    pairs: int
    pixels: int

    @property
    def ratio(self) -> float:
        """styled / input (how much flicker styling adds on top of the scene's own); inf for a perfect input."""
        return self.styled / self.input if self.input > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        return {"styled": round(self.styled, 3), "input": round(self.input, 3), "pairs": self.pairs,
                "pixels": self.pixels}


class _ErrorSum:
    def __init__(self) -> None:
        self.styled = self.input = 0.0
        self.pairs = self.pixels = 0

    def add(self, styled: float, input_: float, pixels: int) -> None:
        if pixels:
            self.styled += styled
            self.input += input_
            self.pairs += 1
            self.pixels += pixels

    def result(self) -> WarpingError | None:
        if not self.pairs:
            return None
        return WarpingError(self.styled / self.pairs, self.input / self.pairs, self.pairs, self.pixels)


def warping_error(frames_in: Sequence[np.ndarray], frames_styled: Sequence[np.ndarray], *,
                  flows: Sequence[Flow] | None = None, side: int | None = None,
                  preset: str = METRIC_PRESET) -> WarpingError:
    """E_warp (Lai et al. 2018, L1) of ``frames_styled`` and of ``frames_in``, with flow from the inputs.

    Frames: HxWx3 (RGB) arrays, uint8 or float on the 0..255 scale, ``frames_in[i]`` styled as
    ``frames_styled[i]``. ``flows``: known flows (``Flow.from_field``), one per pair (``flows[i]``
    takes frame i+1 back to frame i); otherwise DIS (``preset``) at long side ``side`` (None:
    full resolution). A pair whose flow fails (flat frame) is skipped; :class:`FlowError` when
    none is left.
    """
    if len(frames_in) != len(frames_styled) or len(frames_in) < 2:
        raise InvalidArgumentError("warping_error needs two equally long clips of >= 2 frames."
                                   + note(">= 2 frames each, same count", f"{len(frames_in)} and {len(frames_styled)}"))
    if flows is not None and len(flows) != len(frames_in) - 1:
        raise InvalidArgumentError("One flow per consecutive pair is needed."
                                   + note(len(frames_in) - 1, len(flows)))
    for i, (a, b) in enumerate(zip(frames_in, frames_styled)):
        _check_frame(a, f"Input frame {i}")
        _check_frame(b, f"Styled frame {i}")
        if a.shape[:2] != b.shape[:2]:
            raise InvalidImageError(f"Styled frame {i} is not the size of its input."
                                    + note(a.shape[:2], b.shape[:2]))
    est = FlowEstimator(side, preset) if flows is None else None
    total = _ErrorSum()
    prepared = [est.prepare(f) for f in frames_in] if est is not None else []
    for i in range(1, len(frames_in)):
        if flows is not None:
            fl = flows[i - 1]
        else:
            try:
                fl = est.between(prepared[i - 1], prepared[i])  # type: ignore[union-attr]
            except FlowError:
                continue
        if fl.shape != frames_in[i].shape[:2]:
            raise InvalidArgumentError(f"Flow {i - 1} is not the frames' size." + note(frames_in[i].shape[:2], fl.shape))
        es, n = pair_error(frames_styled[i], warp(frames_styled[i - 1], fl), fl.valid)
        ei, _ = pair_error(frames_in[i], warp(frames_in[i - 1], fl), fl.valid)
        total.add(es, ei, n)
    res = total.result()
    if res is None:
        raise FlowError("No frame pair had a usable flow (flat or empty frames)." + note(">= 1 usable pair", 0))
    return res


# -- streams ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoherenceOptions:
    """How a stream keeps its styled frames steady.

    ``mode``: "off" (each frame on its own) or "flow" (blend with the previous output warped
    along the input's optical flow); ``strength`` in [0, 1]: the previous output's weight where
    the flow is fully reliable; ``flow_side``: long side (px) the flow runs at.
    """

    mode: str = "flow"
    strength: float = DEFAULT_STRENGTH
    flow_side: int = FLOW_SIDE
    motion: float = DEFAULT_MOTION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidArgumentError(f"Unknown coherence mode {self.mode!r}." + note(" or ".join(MODES), repr(self.mode)))
        s = self.strength
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0.0 <= s <= 1.0:
            raise InvalidArgumentError("The coherence strength must be a number from 0 to 1." + note("0..1", repr(s)))
        f = self.flow_side
        if isinstance(f, bool) or not isinstance(f, int) or f < 16:
            raise InvalidArgumentError("The coherence flow side must be an integer >= 16." + note(">= 16", repr(f)))

    @classmethod
    def of(cls, value: str | CoherenceOptions | None) -> CoherenceOptions:
        """``value`` as options: a mode name, options, or None (off)."""
        if value is None:
            return cls("off")
        if isinstance(value, CoherenceOptions):
            return value
        if isinstance(value, str):
            return cls(value)
        raise InvalidArgumentError("coherence must be a mode name or CoherenceOptions."
                                   + note(f"{' or '.join(MODES)} or CoherenceOptions", type(value).__name__))


#: What happened to a frame: blended, started afresh (stream start, scene cut, style switch, flow failure), or off.
ACTIONS = ("blended", "start", "cut", "switch", "flow-failed", "off")


@dataclass(frozen=True)
class FrameCoherence:
    """What coherence did to one frame of a stream.

    ``action``: one of :data:`ACTIONS`; ``weight``: the mean blend weight applied
    (0 unless blended); ``e_styled`` / ``e_input``: this frame's warping error against the
    previous output / input over ``pixels`` reliable pixels (None without a usable flow or
    at a scene cut); ``reason``: why the flow failed.
    """

    action: str
    weight: float = 0.0
    e_styled: float | None = None
    e_input: float | None = None
    pixels: int = 0
    reason: str = ""


class FlowTracker:
    """Analysis-side state of one stream: the previous frame and the flow from each frame back to it.

    ``step(rgb)`` returns the :class:`Flow`, a :class:`FlowError` (handed on, not raised: the frame is
    styled on its own) or None for the first frame.
    """

    def __init__(self, side: int = FLOW_SIDE) -> None:
        self._est = FlowEstimator(side, STREAM_PRESET)
        self._prev: Frame | None = None

    def step(self, rgb: np.ndarray) -> Flow | FlowError | None:
        cur = self._est.prepare(rgb)
        prev, self._prev = self._prev, cur
        if prev is None:
            return None
        try:
            return self._est.between(prev, cur)
        except FlowError as exc:
            return exc


class Blender:
    """Style-side state of one stream: blends each styled frame (in order) with the warped previous output.

    ``apply(styled, rgb, flow, emotion)`` returns the frame to show and its :class:`FrameCoherence`.
    With ``options.mode`` "off" and ``measure``, frames are only measured.
    """

    def __init__(self, options: CoherenceOptions, measure: bool = False) -> None:
        self.o, self.measure = options, measure
        self._prev_out: np.ndarray | None = None
        self._prev_rgb: np.ndarray | None = None
        self._prev_emotion: str | None = None

    def weights(self, flow: Flow) -> np.ndarray:
        """HxW float32 blend weights of the warped previous output: ``strength x flow.weight``, lowered where the
        scene moves fast (``motion``: halved at that fraction of the long side per frame)."""
        w = flow.small_weight
        if self.o.motion > 0:
            m = self.o.motion * max(flow.shape) * flow.scale  # in the flow's own pixels
            f = flow.small_field
            w = w / (1.0 + (f[..., 0] ** 2 + f[..., 1] ** 2) * np.float32(1.0 / (m * m)))
        h, wd = flow.shape
        if w.shape != (h, wd):
            w = cv2.resize(w, (wd, h), interpolation=cv2.INTER_LINEAR)
        return w * np.float32(self.o.strength)

    def apply(self, styled: np.ndarray, rgb: np.ndarray, flow: Flow | FlowError | None,
              emotion: str) -> tuple[np.ndarray, FrameCoherence]:
        prev_out, prev_rgb, prev_emotion = self._prev_out, self._prev_rgb, self._prev_emotion
        on = self.o.mode == "flow"
        out, info = styled, None
        if prev_out is None or flow is None:
            info = FrameCoherence("start" if on else "off")
        elif isinstance(flow, FlowError):
            info = FrameCoherence("flow-failed" if on else "off", reason=str(flow))
        elif flow.matched < CUT_FRACTION or prev_out.shape != styled.shape:
            info = FrameCoherence("cut" if on else "off")
        else:
            warped = warp(prev_out, flow)
            action, mean_w = "off", 0.0
            if on and emotion != prev_emotion:
                action = "switch"
            elif on and self.o.strength > 0:
                w = self.weights(flow)
                out = cv2.blendLinear(warped, styled, w, 1.0 - w)
                action, mean_w = "blended", float(w.mean())
            es = ei = None
            n = 0
            if self.measure:
                es, n = pair_error(out, warped, flow.valid)
                ei, _ = pair_error(rgb, warp(prev_rgb, flow), flow.valid) if prev_rgb is not None else (None, 0)
            info = FrameCoherence(action, mean_w, es, ei, n)
        self._prev_out, self._prev_rgb, self._prev_emotion = out, (rgb if self.measure else None), emotion
        return out, info


@dataclass(frozen=True)
class CoherenceReport:
    """A stream's coherence in numbers: mode and strength, frame counts by action, E_warp (None unless measured).

    E_warp here uses the stream's own reduced-resolution flow (``flow_side``); the benchmark measures with a
    separate full-resolution flow.
    """

    mode: str
    strength: float
    flow_side: int
    frames: int
    actions: dict[str, int]
    e_warp: WarpingError | None
    failures: tuple[str, ...] = field(default=())

    @property
    def flow_failures(self) -> int:
        return self.actions.get("flow-failed", 0)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready dict (the report's ``coherence`` entry)."""
        d: dict[str, Any] = {"mode": self.mode, "strength": self.strength, "flow_side": self.flow_side,
                             "frames": self.frames, "actions": dict(self.actions),
                             "flow_failures": self.flow_failures,
                             "e_warp": None if self.e_warp is None else self.e_warp.summary()}
        if self.failures:
            d["failure_reasons"] = list(self.failures)
        return d


class CoherenceLog:
    """Collects the :class:`FrameCoherence` of a stream's frames into a :class:`CoherenceReport`."""

    #: Distinct failure reasons kept for the report.
    MAX_REASONS = 5

    def __init__(self, options: CoherenceOptions) -> None:
        self.o = options
        self._actions: dict[str, int] = {}
        self._sum = _ErrorSum()
        self._frames = 0
        self._reasons: list[str] = []

    def add(self, info: FrameCoherence | None) -> None:
        if info is None:
            return
        self._frames += 1
        self._actions[info.action] = self._actions.get(info.action, 0) + 1
        if info.e_styled is not None and info.e_input is not None:
            self._sum.add(info.e_styled, info.e_input, info.pixels)
        if info.reason and info.reason not in self._reasons and len(self._reasons) < self.MAX_REASONS:
            self._reasons.append(info.reason)

    def extend(self, infos: Iterable[FrameCoherence | None]) -> None:
        for i in infos:
            self.add(i)

    def report(self) -> CoherenceReport:
        return CoherenceReport(self.o.mode, self.o.strength, self.o.flow_side, self._frames, dict(self._actions),
                               self._sum.result(), tuple(self._reasons))
