"""A temporal loss on synthetic motion: train a style network not to flicker, without a video dataset.

A fast style network styles each frame on its own, so tiny changes between
frames (a pixel of camera motion, sensor noise) change its texture: video
shimmers. ReCoNet (Gao et al. 2018) and Ruder et al. (2016) add a temporal
loss: the styled next frame should equal the styled current frame carried
along by the motion, ``f(x_next) ~ warp(f(x))``, over the pixels the motion
keeps in view.

No video is needed when the motion is made up: each content crop ``x`` is
moved by a random small affine map (shift, rotation, zoom about the centre),
whose dense flow is known exactly, and gets sensor-like Gaussian noise. With
that flow

    x_next(p) = x(p + flow(p))   (+ noise),      valid(p) = p + flow(p) inside the crop

and the loss is the mean squared difference, in [0, 1] RGB units, between
``f(x_next)`` and ``warp(f(x), flow)`` over the valid pixels. It costs one more
forward and backward pass of the style network per step (not of VGG19).

Conventions: ``flow`` is backward flow in pixels (B, 2, H, W; channel 0 = x),
the one ``cv2.remap(img, px + flow_x, py + flow_y, INTER_LINEAR)`` uses;
images are the authors' convention (ImageNet-normalised RGB, B, 3, H, W).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from emostyle_rt.errors import note

from .errors import TrainingError
from .losses import IMAGENET_STD


@dataclass(frozen=True)
class MotionRange:
    """How far the synthetic next frame moves: each value drawn uniformly in [-max, +max] per image.

    The defaults are camera motion between two video frames at 25-30 fps: a
    shift of up to 2% of the crop (5 px at 256 px), a rotation of up to 1
    degree and a zoom of up to 2%, plus noise of std 0.02 (5 of 255 levels,
    a webcam in dim light), drawn anew for the next frame.
    """

    max_shift: float = 0.02  # fraction of the crop side
    max_rotation_deg: float = 1.0
    max_zoom: float = 0.02  # fraction
    noise_std: float = 0.02  # RGB in [0, 1]

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (value >= 0 and math.isfinite(value)):
                raise TrainingError(f"MotionRange.{name} must be a number >= 0." + note(">= 0", value))
        if self.max_zoom >= 0.5 or self.max_shift >= 0.5:
            raise TrainingError("MotionRange is for small motion between two frames."
                                + note("max_shift and max_zoom < 0.5", f"{self.max_shift}, {self.max_zoom}"))


@dataclass(frozen=True)
class Motion:
    """A synthetic next frame and how it was made: ``next(p) = frames(p + flow(p))`` (+ noise)."""

    next: torch.Tensor  # (B, 3, H, W), authors' convention
    flow: torch.Tensor  # (B, 2, H, W) backward flow in pixels, x then y
    valid: torch.Tensor  # (B, 1, H, W) float, 1 where p + flow(p) lies inside the frame


def affine_flow(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Dense backward flow (B, 2, H, W) of per-image affine maps about the image centre.

    ``params`` is (B, 4): shift x and y in pixels, rotation in degrees
    (counter-clockwise on screen), zoom z (the content grows by 1 + z). The next
    frame is what ``cv2.warpAffine`` makes with ``cv2.getRotationMatrix2D(c,
    degrees, 1 + z)`` plus the shift, c the centre: pixel p of the next frame
    comes from ``c + R(degrees)^-1 (p - c - shift) / (1 + z)`` of the current one.
    """
    if params.ndim != 2 or params.shape[1] != 4:
        raise TrainingError("Affine motion parameters must be one row of (dx, dy, degrees, zoom) per image."
                            + note("a (B, 4) tensor", tuple(params.shape)))
    p = params.float()
    dev = p.device
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=dev),
                            torch.arange(width, dtype=torch.float32, device=dev), indexing="ij")
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    u, v = (xs - cx)[None], (ys - cy)[None]  # (1, H, W)
    a = torch.deg2rad(p[:, 2]).view(-1, 1, 1)
    s = (1.0 + p[:, 3]).view(-1, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    u, v = u - p[:, 0].view(-1, 1, 1), v - p[:, 1].view(-1, 1, 1)
    src_x = cx + (cos * u - sin * v) / s
    src_y = cy + (sin * u + cos * v) / s
    return torch.stack([src_x - xs, src_y - ys], dim=1)


def valid_mask(flow: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) float: 1 where ``p + flow(p)`` lies inside the frame (the rest came from outside)."""
    _, _, h, w = flow.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=flow.dtype, device=flow.device),
                            torch.arange(w, dtype=flow.dtype, device=flow.device), indexing="ij")
    sx, sy = xs + flow[:, 0], ys + flow[:, 1]
    inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    return inside.unsqueeze(1).to(flow.dtype)


def warp(images: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out(p) = images(p + flow(p))``, bilinear, zeros outside (fp32): ``cv2.remap`` with INTER_LINEAR."""
    if images.ndim != 4 or flow.ndim != 4 or flow.shape[1] != 2 or images.shape[0] != flow.shape[0] \
            or images.shape[2:] != flow.shape[2:]:
        raise TrainingError("warp needs images (B, C, H, W) and a flow (B, 2, H, W) of the same B, H, W."
                            + note("matching shapes", f"images {tuple(images.shape)}, flow {tuple(flow.shape)}"))
    _, _, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=flow.device),
                            torch.arange(w, dtype=torch.float32, device=flow.device), indexing="ij")
    fx, fy = flow[:, 0].float(), flow[:, 1].float()
    # align_corners=True: -1 and +1 are the centres of the first and last pixels
    gx = (xs + fx) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + fy) * (2.0 / max(h - 1, 1)) - 1.0
    with torch.autocast(images.device.type, enabled=False):
        return F.grid_sample(images.float(), torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="zeros",
                             align_corners=True)


def sample_params(batch: int, side: int, motion: MotionRange, *, device: Any = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, 4) random (dx px, dy px, degrees, zoom), uniform in each range (RNG: ``generator`` or torch's)."""
    u = torch.rand(batch, 4, device=device, generator=generator) * 2.0 - 1.0
    scale = torch.tensor([motion.max_shift * side, motion.max_shift * side, motion.max_rotation_deg,
                          motion.max_zoom], device=device)
    return u * scale


def synthetic_next(frames: torch.Tensor, motion: MotionRange = MotionRange(), *, params: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> Motion:
    """The content crops ``frames`` moved by random small affine maps, with fresh noise: a made-up next frame.

    ``params`` (B, 4) fixes the motion (tests); otherwise it is drawn. Random
    draws use ``generator`` (on ``frames``' device) or torch's global RNG, which
    the training loop seeds per step, so a resumed run draws the same motion.
    """
    b, _, h, w = frames.shape
    if params is None:
        params = sample_params(b, min(h, w), motion, device=frames.device, generator=generator)
    flow = affine_flow(params.to(frames.device), h, w)
    moved = warp(frames, flow)
    if motion.noise_std > 0:
        std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1)
        noise = torch.randn(moved.shape, device=frames.device, generator=generator)
        moved = moved + noise * (motion.noise_std / std)  # RGB noise, in the normalised convention
    return Motion(moved, flow, valid_mask(flow))


def temporal_loss(styled_next: torch.Tensor, styled: torch.Tensor, motion: Motion) -> torch.Tensor:
    """Mean squared difference of ``styled_next`` and ``warp(styled)``, RGB in [0, 1], over valid pixels (fp32).

    Zero when the network commutes with the motion (a per-pixel network, an
    integer shift and no noise); gradients flow into both frames' outputs.
    """
    with torch.autocast(styled.device.type, enabled=False):
        std = torch.tensor(IMAGENET_STD, device=styled.device).view(1, 3, 1, 1)
        diff = (styled_next.float() - warp(styled, motion.flow)) * std  # normalised -> [0, 1] RGB units
        m = motion.valid
        return (diff.square() * m).sum() / (m.sum() * diff.shape[1]).clamp_min(1.0)
