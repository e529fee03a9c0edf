"""Helpers of the serving tests: encode / decode images, run the app in-process with httpx."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Coroutine

import cv2
import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    """RGB(A) -> encoded bytes (OpenCV, BGR(A) inside)."""
    code = cv2.COLOR_RGBA2BGRA if image.ndim == 3 and image.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(ext, cv2.cvtColor(image, code))
    if not ok:
        raise RuntimeError(f"cannot encode {ext}")
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    """Encoded bytes -> RGB, or RGBA when the image has alpha."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise AssertionError(f"the answer is not an image: {data[:16]!r}")
    return cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)


@contextlib.asynccontextmanager
async def client_for(app: Any) -> AsyncIterator[Any]:
    """An httpx client talking to ``app`` in-process, after its lifespan started and it said ready."""
    async with app.router.lifespan_context(app):
        service = app.state.service
        for _ in range(3000):
            if service.ready or service.error:
                break
            await asyncio.sleep(0.01)
        if not service.ready:
            raise RuntimeError(f"the app did not get ready: {service.error}")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=60) as client:
            yield client


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run an async test body."""
    return asyncio.run(coro)



def metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0
