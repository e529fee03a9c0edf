"""Style network -> ONNX with the bundle's one contract: uint8 NHWC RGB in and out.

Whatever convention the checkpoint was trained with, the graph takes the image
as the runtime holds it and returns a displayable image; normalisation, layout
change, clamping and rounding live inside the graph.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from emostyle_rt.errors import ExportError, note, sentence

from .checkpoints import CONVENTIONS, IMAGENET_MEAN, IMAGENET_STD

INPUT_NAME = "image"
OUTPUT_NAME = "styled"


def reference_stylize(model: Any, images: np.ndarray, convention: str) -> np.ndarray:
    """The source pipeline in eager PyTorch: uint8 NHWC -> float 0..255 NHWC (unrounded).

    Written independently of :class:`StyleGraph` (numpy pre/post-processing) so
    parity checks the graph's own pre/post-processing too.
    """
    import torch

    x = images.astype(np.float32)
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    if convention == "imagenet":
        x = (x / 255.0 - mean) / std
    with torch.inference_mode():
        y = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy().transpose(0, 2, 3, 1)
    if convention == "imagenet":
        return np.clip(y * std + mean, 0.0, 1.0) * 255.0
    return np.clip(y, 0.0, 255.0)


def _style_graph(model: Any, convention: str) -> Any:
    import torch
    from torch import nn

    if convention not in CONVENTIONS:
        raise ExportError(f"Unknown style convention {convention!r}." + note(list(CONVENTIONS), convention))

    class StyleGraph(nn.Module):
        """uint8 NHWC RGB -> net in its own convention -> uint8 NHWC RGB."""

        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.permute(0, 3, 1, 2).float()
            if convention == "imagenet":
                y = self.net((x / 255.0 - self.mean) / self.std)
                y = (y * self.std + self.mean).clamp(0.0, 1.0) * 255.0
            else:
                y = self.net(x).clamp(0.0, 255.0)
            return y.round().to(torch.uint8).permute(0, 2, 3, 1)

    return StyleGraph().eval()


def export_style(model: Any, convention: str, out_path: Path, opset: int = 17) -> None:
    """Export the wrapped style network with dynamic batch, height and width."""
    import torch

    graph = _style_graph(model, convention)
    dummy = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    # The TorchScript exporter warns about Slice folding, instance_norm's train flag
    # (InstanceNorm always uses input statistics), tracer shape checks and its own
    # deprecation: all expected here, all noise to the user.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph, (dummy,), str(out_path), dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                # Output dims get their own names: they equal the input's only for multiples of 4.
                dynamic_axes={INPUT_NAME: {0: "batch", 1: "height", 2: "width"},
                              OUTPUT_NAME: {0: "batch", 1: "out_height", 2: "out_width"}},
            )
        except Exception as exc:
            raise ExportError("torch.onnx.export failed for style network: " + sentence(exc)) from exc
