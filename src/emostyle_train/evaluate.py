"""Is a trained style visibly a style? Gram-matrix distance to the style image, trained vs untrained.

For each photo (resized and centre-cropped like the training crops), the
style distance (the unweighted style loss: mean over the style layers of the
Gram matrices' mean squared error) between the style image and

- the photo itself,
- the photo through an untrained network (the seeded initialisation a
  training run with that seed starts from),
- the photo through the trained network.

A trained style brings the photo's Gram statistics near the style image's:
``trained / untrained`` far below 1. The content distance (the unweighted
content loss: mean squared error of the content layer's features between the
output and the photo) says how much of the photo is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from emostyle_rt.errors import sentence

from .data import content_crop, list_images, resize_short_side, to_tensor, try_read
from .errors import DatasetError
from .losses import IMAGENET_MEAN, IMAGENET_STD, STYLE_LAYERS, PerceptualLoss


@dataclass(frozen=True)
class GramRow:
    photo: str
    photo_distance: float
    untrained: float
    trained: float
    content_untrained: float = float("nan")  # content distance of the untrained network's output to the photo
    content_trained: float = float("nan")  # the same for the trained network

    @property
    def ratio(self) -> float:
        return self.trained / self.untrained


def _photos(items: Sequence[str | Path]) -> list[Path]:
    out: list[Path] = []
    for item in map(Path, items):
        out += list_images(item, "photo folder") if item.is_dir() else [item]
    return out


def gram_distances(checkpoint: str | Path, style: str | Path, photos: Sequence[str | Path], *, size: int = 256,
                   style_size: int | None = None, style_layers: Sequence[str] = STYLE_LAYERS,
                   seed: int = 0) -> list[GramRow]:
    """One :class:`GramRow` per readable photo (files, or folders of images)."""
    import torch

    from emostyle_export.checkpoints import load_style_checkpoint
    from emostyle_export.models.transformer import TransformerNet

    style_rgb, why = try_read(Path(style))
    if style_rgb is None:
        raise DatasetError(f"Style image {style} cannot be read: " + sentence(why))
    if style_size:
        style_rgb = resize_short_side(style_rgb, style_size)
    trained = load_style_checkpoint(checkpoint)
    torch.manual_seed(seed)
    untrained = TransformerNet().eval()
    loss = PerceptualLoss(to_tensor(style_rgb).unsqueeze(0), style_layers=style_layers)

    def run(net: Any, convention: str, x: torch.Tensor) -> torch.Tensor:
        """authors'-convention in and out, whatever the network's own convention."""
        if convention == "imagenet":
            return net(x)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        y = net((x * std + mean) * 255.0).clamp(0, 255) / 255.0
        return (y - mean) / std

    def distance(x: torch.Tensor) -> float:
        return float(loss.style_distance(loss.vgg(x, loss.style_layers)))

    def content(y: torch.Tensor, x: torch.Tensor) -> float:
        a, b = loss.vgg(y, [loss.content_layer]), loss.vgg(x, [loss.content_layer])
        return float(torch.nn.functional.mse_loss(a[loss.content_layer], b[loss.content_layer]))

    rows = []
    for path in _photos(photos):
        image, _ = try_read(path)
        if image is None:
            continue
        x = to_tensor(content_crop(image, size)).unsqueeze(0)
        with torch.no_grad():
            yu, yt = run(untrained, "imagenet", x), run(trained.model, trained.convention, x)
            rows.append(GramRow(str(path), distance(x), distance(yu), distance(yt), content(yu, x), content(yt, x)))
    if not rows:
        raise DatasetError("None of the photos could be read." + f" Note: expected readable images, available "
                           f"{len(photos)} path(s).")
    return rows


def summary(rows: Sequence[GramRow]) -> dict[str, float]:
    """Geometric means over the photos (the distances span orders of magnitude)."""
    def gmean(v: Sequence[float]) -> float:
        return float(np.exp(np.mean(np.log(np.maximum(v, 1e-30)))))

    return {"photo": gmean([r.photo_distance for r in rows]), "untrained": gmean([r.untrained for r in rows]),
            "trained": gmean([r.trained for r in rows]), "ratio_trained_untrained": gmean([r.ratio for r in rows]),
            "content_untrained": gmean([r.content_untrained for r in rows]),
            "content_trained": gmean([r.content_trained for r in rows])}
