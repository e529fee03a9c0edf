"""Fixtures of the serving tests: one preloaded Stylizer, small real photos, apps over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest

from emostyle_rt import Stylizer
from emostyle_serve import ServeConfig, create_app


@pytest.fixture(scope="session")
def serve_stylizer(mtcnn_bundle: Path) -> Stylizer:
    """One Stylizer for every in-process app (handed in, so no test pays the bundle load again)."""
    st = Stylizer(mtcnn_bundle)
    st.preload()
    return st


@pytest.fixture(scope="session")
def photos(astronaut: np.ndarray) -> list[np.ndarray]:
    """Small real photos: the astronaut (a face) at 128x128 and 96x96, and a 96x64 crop without a face."""
    from skimage import data

    area = cv2.INTER_AREA
    return [cv2.resize(astronaut, (128, 128), interpolation=area),
            cv2.resize(astronaut, (96, 96), interpolation=area),
            np.ascontiguousarray(cv2.resize(data.coffee(), (96, 64), interpolation=area))]


@pytest.fixture()
def make_app(serve_stylizer: Stylizer) -> Callable[..., Any]:
    """``make_app(**config)``: an app over the shared Stylizer (no warm-up: its graphs are loaded)."""

    def make(stylizer: Any = None, **options: Any) -> Any:
        st = serve_stylizer if stylizer is None else stylizer
        return create_app(ServeConfig(bundle=str(serve_stylizer.manifest.root), warmup=False, **options), stylizer=st)

    return make



@pytest.fixture(scope="session")
def browser() -> Any:
    """One headless Chromium for the page's browser tests (uikit.chromium: skips or fails as it says)."""
    from uikit import chromium

    with chromium() as driver:
        yield driver
