"""Release a trained style checkpoint: the authors' format with fp16 weights and no optimizer state.

``emostyle-train style`` writes the authors' dict with fp32 weights and the Adam
state (about 20 MB): what a run needs to go on. What is shipped (the demo
bundle's ``weights/demo/styles/<emotion>.pth``) needs neither: the same dict,
``state_dict`` in float16 (1.68 M parameters, about 3.4 MB), ``optimizer_state``
dropped, ``weights_dtype`` recorded. ``emostyle-export`` reads it as family
``authors`` like any other (the weights are widened to fp32 when loaded), so the
FP32 graph of a released checkpoint is the trained network with its weights
rounded once to fp16; :func:`release_checkpoint` measures what that rounding
costs on a photo and returns the figure.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from emostyle_rt import metrics
from emostyle_rt.errors import note, sentence
from emostyle_rt.fsutil import write_bytes_atomic

from .errors import TrainingError

RELEASE_DTYPE = "float16"
#: keys of the trainer's output that only a continued run needs
TRAINING_ONLY_KEYS = ("optimizer_state",)


@dataclass(frozen=True)
class Release:
    """A released checkpoint and what the fp16 rounding of its weights changed."""

    path: Path
    bytes: int
    parameters: int
    max_weight_error: float  # largest |w16 - w32| over all weights
    psnr_db: float | None  # fp16-rounded vs fp32 weights, both run in fp32 on the probe photo (None: identical)
    max_abs_diff: int | None  # grey levels, same comparison


def _psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """The one PSNR (``emostyle_rt.metrics``), None for identical images (the file's JSON has no inf)."""
    db = metrics.psnr(a, b)
    return None if math.isinf(db) else db


def release_checkpoint(src: str | Path, dst: str | Path, *, probe: np.ndarray | None = None,
                       metadata: Mapping[str, Any] | None = None, force: bool = False) -> Release:
    """Write ``dst``: ``src`` (the trainer's output) with fp16 weights and no optimizer state.

    ``probe`` (HxWx3 uint8 RGB) is styled by the fp32 and the fp16-rounded
    weights (both computed in fp32, on the CPU) to measure the rounding.
    ``metadata``: scalar keys added to (or replacing) the file's metadata, e.g.
    the GPU it was trained on. ``dst`` is never overwritten without ``force``.
    """
    import torch

    from emostyle_export.checkpoints import load_style_checkpoint

    src, dst = Path(src), Path(dst)
    if dst.exists() and not force:
        raise TrainingError(f"{dst} already exists; it is not overwritten." + note("a new file name, or force",
                                                                                 "an existing file"))
    try:
        raw = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"Checkpoint {src} cannot be read: " + sentence(exc)) from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("state_dict"), Mapping):
        raise TrainingError(f"{src} is not a style checkpoint in the authors' format."
                            + note("a dict with 'state_dict' (what emostyle-train style writes)",
                                   type(raw).__name__ if not isinstance(raw, dict) else sorted(raw)[:8]))
    for key, value in (metadata or {}).items():
        if not isinstance(value, (int, float, str, bool)):
            raise TrainingError(f"Release metadata {key!r} must be a scalar." + note("int, float, str or bool",
                                                                                   type(value).__name__))
    state = raw["state_dict"]
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    errors = [float((half[k].float() - v.float()).abs().max()) for k, v in state.items() if v.is_floating_point()]
    out = {k: v for k, v in raw.items() if k not in TRAINING_ONLY_KEYS and k != "state_dict"}
    out |= dict(metadata or {})
    out |= {"state_dict": half, "weights_dtype": RELEASE_DTYPE}
    buf = io.BytesIO()
    torch.save(out, buf)
    write_bytes_atomic(dst, buf.getvalue())

    psnr = diff = None
    if probe is not None:
        from .data import to_tensor, to_uint8

        x = to_tensor(np.ascontiguousarray(probe[..., :3])).unsqueeze(0)
        with torch.no_grad():
            a = to_uint8(load_style_checkpoint(src).model(x))
            b = to_uint8(load_style_checkpoint(dst).model(x))
        psnr = _psnr(a, b)
        diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    else:
        load_style_checkpoint(dst)  # it must load as the exporter loads it
    return Release(dst, dst.stat().st_size, sum(int(v.numel()) for v in half.values()),
                   max(errors) if errors else 0.0, psnr, diff)
