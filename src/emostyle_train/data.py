"""Image folders for training: listing, reading with skips, resizing, and the seeded batch order.

An unreadable file never stops a run: it is skipped and counted, and the count
goes into the report. The batch order is a pure function of (seed, step), so
a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from emostyle_rt.errors import EmostyleError, note
from emostyle_rt.imaging.io import read_image

from .errors import DatasetError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".ppm", ".pgm"})


def list_images(folder: Path, what: str = "image folder") -> list[Path]:
    """Image files under ``folder`` (recursive, by suffix, sorted): the dataset's fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"The {what} {folder} does not exist or is not a folder."
                           + note("a folder of images", "a file" if folder.exists() else "nothing"))
    from .outputs import without_work_folders

    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    files = without_work_folders(found, folder)  # the tool's own previews and plots are never data
    if len(files) < len(found):
        log.warning("%s: left out %d image(s) in emostyle-train work folders", folder, len(found) - len(files))
    if not files:
        seen = sorted({p.suffix.lower() or "(none)" for p in folder.rglob("*") if p.is_file()})
        raise DatasetError(f"The {what} {folder} holds no images."
                           + note(f"files ending in {', '.join(sorted(IMAGE_SUFFIXES))}",
                                  f"suffixes {seen}" if seen else "an empty folder"))
    return files


def try_read(path: Path) -> tuple[np.ndarray | None, str]:
    """(HxWx3 uint8 RGB, "") or (None, why) when the file cannot be read or decoded."""
    try:
        return read_image(path), ""
    except EmostyleError as exc:
        return None, str(exc)


def resize_short_side(image: np.ndarray, side: int) -> np.ndarray:
    """Scale so the shorter side is ``side`` px (area filter down, bilinear up)."""
    h, w = image.shape[:2]
    s = side / min(h, w)
    size = (max(side, round(w * s)), max(side, round(h * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def center_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return image[y:y + side, x:x + side]


def content_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The authors' content transform: resize the shorter side to ``side``, centre crop a square."""
    return np.ascontiguousarray(center_crop(resize_short_side(image, side), side))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of ``n`` items used in ``epoch`` (independent of any global RNG)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """Indices of step ``step``'s batch: epoch-wise seeded permutations, the last partial batch dropped."""
    per_epoch = n // batch
    epoch, pos = divmod(step, per_epoch)
    return epoch_order(n, seed, epoch)[pos * batch:(pos + 1) * batch]


@dataclass
class SkipLog:
    """Files skipped because they could not be read: path -> why (kept in checkpoints and reports)."""

    files: dict[str, str] = field(default_factory=dict)

    def add(self, skipped: Sequence[tuple[str, str]]) -> None:
        for path, why in skipped:
            if path not in self.files:
                self.files[path] = why
                log.warning("skipped an unreadable image (%d so far): %s", len(self.files), why)

    @property
    def count(self) -> int:
        return len(self.files)


class ContentDataset:
    """Content photos as authors'-convention float tensors (torch Dataset protocol).

    ``__getitem__`` returns ``(tensor or None, path, why)``; None marks an unreadable file.
    """

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files = list(files)
        self.size = size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[object, str, str]:
        image, why = try_read(self.files[i])
        if image is None:
            return None, str(self.files[i]), why
        return to_tensor(content_crop(image, self.size)), str(self.files[i]), ""


def to_tensor(image: np.ndarray) -> object:
    """HxWx3 uint8 RGB -> 3xHxW float tensor in the authors' convention (ImageNet-normalised [0, 1])."""
    import torch

    from .losses import IMAGENET_MEAN, IMAGENET_STD

    x = (image.astype(np.float32) / 255.0 - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD,
                                                                                                  np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def to_uint8(x: object) -> np.ndarray:
    """Bx3xHxW authors'-convention tensor -> BxHxWx3 uint8 RGB (de-normalised, clipped, rounded)."""
    import torch

    from .losses import IMAGENET_MEAN, IMAGENET_STD

    assert isinstance(x, torch.Tensor)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    y = ((x.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


def collate(items: Sequence[tuple[object, str, str]]) -> tuple[object, list[tuple[str, str]]]:
    """Stack the readable images of a batch; return them with (path, why) of the unreadable ones."""
    import torch

    good = [x for x, _, _ in items if x is not None]
    bad = [(p, why) for x, p, why in items if x is None]
    return (torch.stack(good) if good else None), bad


class StepBatches:
    """Batch sampler from step ``start`` to ``stop``: :func:`batch_indices` for each step."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield batch_indices(self.n, self.batch, self.seed, step).tolist()
