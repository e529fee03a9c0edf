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

from emostyle_rt.errors import note, sentence

from . import ONNX_OPSET
from .checkpoints import CONVENTIONS, IMAGENET_MEAN, IMAGENET_STD
from .errors import ExportError

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


#: Compute precisions of the style network inside the uint8 contract, and their torch dtypes' names.
PRECISIONS = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def style_contract(model: Any, convention: str) -> Any:
    """The bundle's style contract around ``model``: uint8 NHWC RGB -> net in its convention -> uint8 NHWC RGB.

    Normalisation, layout change, clamping and rounding are inside, so the ONNX
    graph, the AOTInductor package and the eager benchmarks all compute the same
    function. The net runs in the dtype of its parameters (see :func:`lower_precision`);
    pre- and post-processing stay in float32. Buffers ``mean``/``std`` and the
    net's parameters are named ``mean``, ``std`` and ``net.*`` (the ONNX graph's
    initializer names; :mod:`emostyle_export.aoti` reads them back).
    """
    import torch
    from torch import nn

    if convention not in CONVENTIONS:
        raise ExportError(f"Unknown style convention {convention!r}." + note(list(CONVENTIONS), convention))

    class StyleContract(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
            self.dtype = next(model.parameters()).dtype

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.permute(0, 3, 1, 2).float()
            if convention == "imagenet":
                x = (x / 255.0 - self.mean) / self.std
            y = self.net(x if self.dtype == torch.float32 else x.to(self.dtype))
            y = y if self.dtype == torch.float32 else y.float()
            if convention == "imagenet":
                y = (y * self.std + self.mean).clamp(0.0, 1.0) * 255.0
            else:
                y = y.clamp(0.0, 255.0)
            return y.round().to(torch.uint8).permute(0, 2, 3, 1)

    return StyleContract().eval()


def lower_precision(model: Any, precision: str) -> Any:
    """A copy of ``model`` computing in fp16 or bf16 with every InstanceNorm in fp32 (``model`` for fp32).

    Instance-norm statistics of 0..255-scale activations overflow fp16 (22 dB on
    an H200 against 55 dB with fp32 islands), the same reason the FP16 ONNX graph
    keeps them in fp32.
    """
    import copy

    import torch
    from torch import nn

    if precision not in PRECISIONS:
        raise ExportError(f"Unknown precision {precision!r}." + note(list(PRECISIONS), precision))
    if precision == "fp32":
        return model
    dtype = getattr(torch, PRECISIONS[precision])

    class Fp32InstanceNorm(nn.Module):
        def __init__(self, norm: nn.InstanceNorm2d) -> None:
            super().__init__()
            self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            w = None if self.weight is None else self.weight.float()
            b = None if self.bias is None else self.bias.float()
            return nn.functional.instance_norm(x.float(), weight=w, bias=b, eps=self.eps).to(x.dtype)

    low = copy.deepcopy(model).to(dtype)
    for parent in list(low.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm2d):
                setattr(parent, name, Fp32InstanceNorm(child))
    return low.eval()


def export_style(model: Any, convention: str, out_path: Path, opset: int = ONNX_OPSET) -> None:
    """Export the wrapped style network with dynamic batch, height and width."""
    import torch

    graph = style_contract(model, convention)
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
