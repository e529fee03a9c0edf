"""Tiny training data, made by the tests: scikit-image photos, a drawn style image, coloured shapes.

Nothing here reads ../shared. The trained style and classifier are session
fixtures, reused by the export test.

PyTorch runs these tests with one thread: on a 2-core machine shared with other
jobs, two OpenMP threads spin at every barrier while one waits for a core, and
a 32x32 training step measured 0.2-6 s instead of 0.1 s (the whole folder: 261 s
instead of 59 s). The previous thread count is restored after each test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
from trainkit import PHOTOS, make_shapes, stripes_style, write_rgb


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def content_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real photos (scikit-image, quarter size) and one file that is not an image."""
    from skimage import data

    root = tmp_path_factory.mktemp("content")
    for name in PHOTOS:
        photo = getattr(data, name)()
        write_rgb(root / f"{name}.jpg", cv2.resize(photo, None, fx=0.25, fy=0.25, interpolation=cv2.INTER_AREA))
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    return root


@pytest.fixture(scope="session")
def style_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rgb(tmp_path_factory.mktemp("style") / "stripes.png", stripes_style())


@pytest.fixture(scope="session")
def trained_style(content_dir: Path, style_image: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """20 steps at 64x64, batch 2: the run the loss test checks and the export test exports."""
    from emostyle_train.style import StyleConfig, train_style

    cfg = StyleConfig(style=style_image, content=content_dir, size=64, batch=2, steps=20, checkpoint_every=10,
                      preview_every=10, preview_images=2)
    with torch_threads(1):
        return train_style(cfg, tmp_path_factory.mktemp("style-run") / "stripes.pth", progress=False)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_shapes(tmp_path_factory.mktemp("shapes"))
    (root / "sad" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return root


@pytest.fixture(scope="session")
def trained_classifier(shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from emostyle_train.classifier import ClassifierConfig, train_classifier

    return train_classifier(ClassifierConfig(shapes_dir, epochs=8), tmp_path_factory.mktemp("clf") / "emotion.keras",
                            progress=False)
