"""Soak: one Stylizer shared by 8 threads gives serial results and does not grow in memory.

Each round runs every (image, emotion) task once, spread over 8 threads; every
result must equal the serial run's bit for bit. Memory is the process RSS after
a garbage collection: the first round loads every style graph, so later rounds
are measured against the RSS after the first round.
"""

from __future__ import annotations

import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from emostyle_rt import Stylizer

psutil = pytest.importorskip("psutil")
log = logging.getLogger(__name__)

EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
THREADS = 8


def _images(astronaut: np.ndarray, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    return [cv2.resize(astronaut, (w, h), interpolation=cv2.INTER_AREA) for h, w in sizes]


def _tasks(images: list[np.ndarray]) -> list[tuple[int, str | None]]:
    """Every image with every emotion forced, plus every image classified (emotion=None)."""
    return [(i, e) for i in range(len(images)) for e in (*EMOTIONS, None)]


def _one(st: Stylizer, images: list[np.ndarray], task: tuple[int, str | None]) -> tuple[bytes, str, tuple[Any, ...]]:
    i, emotion = task
    res = st.stylize(images[i], emotion=emotion)
    assert res.image.shape == images[i].shape
    return res.image.tobytes(), res.emotion, tuple(sorted(res.scores.items()))


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def _soak(st: Stylizer, images: list[np.ndarray], rounds: int) -> tuple[float, float, int]:
    tasks = _tasks(images)
    serial = [_one(st, images, t) for t in tasks]
    calls = 0
    rss_first = 0.0
    with ThreadPoolExecutor(THREADS) as pool:
        for r in range(rounds):
            # Interleave differently each round so every thread meets every graph and size.
            order = np.random.default_rng(r).permutation(len(tasks))
            got = list(pool.map(lambda k: (k, _one(st, images, tasks[k])), order))
            calls += len(got)
            for k, result in got:
                assert result == serial[k], f"round {r}: task {tasks[k]} differs from the serial run"
            if r == 0:
                rss_first = _rss_mb()
    return rss_first, _rss_mb(), calls


@pytest.fixture(scope="module")
def st(demo_bundle: Path) -> Stylizer:
    return Stylizer(demo_bundle)


#: Allowed RSS growth from the end of the first round to the end of the last one.
BOUND_MB = 48.0


def test_shared_stylizer_soak_light(st: Stylizer, astronaut: np.ndarray) -> None:
    images = _images(astronaut, [(17, 23), (32, 32), (45, 61), (64, 48), (96, 96)])
    first, last, calls = _soak(st, images, rounds=5)
    print(f"soak light: {calls} calls on {THREADS} threads, RSS after round 1 {first:.1f} MB, "
          f"at the end {last:.1f} MB (bound +{BOUND_MB} MB)")
    assert calls == 5 * len(images) * 8
    assert last - first <= BOUND_MB


@pytest.mark.slow
def test_shared_stylizer_soak_heavy(st: Stylizer, astronaut: np.ndarray) -> None:
    images = _images(astronaut, [(17, 23), (45, 61), (96, 96), (128, 200), (255, 301), (192, 192)])
    first, last, calls = _soak(st, images, rounds=25)
    print(f"soak heavy: {calls} calls on {THREADS} threads, RSS after round 1 {first:.1f} MB, "
          f"at the end {last:.1f} MB (bound +{BOUND_MB} MB)")
    assert last - first <= BOUND_MB
