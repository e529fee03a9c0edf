"""The HTTP service in-process (httpx over ASGI): answers equal the in-process Stylizer's, bad requests are
refused with the library's typed reasons, requests that arrive together are batched, a full queue says 429."""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import threading
import zlib
from typing import Any

import numpy as np
import pytest
from servekit import client_for, decode, encode, metric, run

from emostyle_rt import Stylizer
from emostyle_rt.imaging.metadata import ImageMeta, embed_meta, read_meta

JPEG = {"content-type": "image/jpeg"}
PNG = {"content-type": "image/png"}


def test_stylize_answers_what_the_stylizer_gives(make_app: Any, serve_stylizer: Stylizer,
                                                 photos: list[np.ndarray]) -> None:
    photo = photos[0]
    want = serve_stylizer.stylize(photo)

    async def body() -> None:
        async with client_for(make_app()) as c:
            r = await c.post("/v1/stylize", content=encode(photo), headers=PNG)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "image/png"  # the upload's format
            np.testing.assert_array_equal(decode(r.content), want.image)  # PNG: lossless, so exactly the same
            assert r.headers["x-emotion"] == want.emotion and r.headers["x-style"] == want.style
            assert r.headers["x-emotion-source"] == want.source == "face"
            scores = dict(kv.split("=") for kv in r.headers["x-emotion-scores"].split(","))
            assert list(scores) == list(serve_stylizer.labels)
            assert all(abs(float(scores[k]) - v) < 1e-5 for k, v in want.scores.items())
            assert r.headers["x-face"] == ",".join(map(str, want.face.box))

            # multipart with a form field; JSON with base64 on request; another format by Accept
            r = await c.post("/v1/stylize", files={"image": ("p.png", encode(photo), "image/png")},
                             data={"emotion": "sad", "max_side": "64"}, headers={"accept": "application/json"})
            assert r.status_code == 200, r.text
            j = r.json()
            sad = serve_stylizer.stylize(photo, emotion="sad", max_side=64)
            assert (j["emotion"], j["source"], j["style"], j["format"]) == ("sad", "given", sad.style, "png")
            np.testing.assert_array_equal(decode(base64.b64decode(j["image"])), sad.image)
            r = await c.post("/v1/stylize?emotion=sad", content=encode(photo, ".jpg"),
                             headers={**JPEG, "accept": "image/webp;q=0.9, image/png"})
            assert r.headers["content-type"] == "image/png" and decode(r.content).shape == photo.shape

    run(body())


def test_alpha_and_classify(make_app: Any, serve_stylizer: Stylizer, photos: list[np.ndarray]) -> None:
    photo = photos[1]
    alpha = np.tile(np.linspace(0, 255, photo.shape[1], dtype=np.uint8), (photo.shape[0], 1))
    rgba = np.dstack([photo, alpha])

    async def body() -> None:
        async with client_for(make_app()) as c:
            r = await c.post("/v1/stylize?emotion=happy", content=encode(rgba), headers=PNG)
            out = decode(r.content)
            assert out.shape == (*photo.shape[:2], 4)
            np.testing.assert_array_equal(out[..., 3], alpha)  # alpha passed through, as the command keeps it
            np.testing.assert_array_equal(out[..., :3], serve_stylizer.stylize(photo, emotion="happy").image)
            # EXIF goes along as the command carries it (embedded by the runtime's own writer)
            exif = b"II*\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"
            tagged = embed_meta(encode(photo, ".jpg"), ".jpg", ImageMeta(exif=exif))
            r = await c.post("/v1/stylize?emotion=happy", content=tagged, headers=JPEG)
            assert r.headers["content-type"] == "image/jpeg" and read_meta(r.content).exif == exif
            r = await c.post("/v1/classify", content=encode(photo), headers=PNG)
            want = serve_stylizer.classify(photo).summary()
            got = r.json()
            assert (got["emotion"], got["face"], got["source"]) == (want["emotion"], want["face"], want["source"])
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)

    run(body())


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (a decompression bomb's header) and a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_requests_get_typed_4xx_and_the_service_stays_up(make_app: Any, photos: list[np.ndarray]) -> None:
    good = encode(photos[2], ".jpg")
    cases: list[tuple[str, dict[str, Any], int, str, str]] = [
        # name, request, status, error type, a word the message must have
        ("not an image", dict(content=b"hello, not an image at all", headers=JPEG), 422, "ImageReadError", "not an image"),
        ("truncated", dict(content=good[: len(good) // 2], headers=JPEG), 422, "ImageReadError", "decode"),
        ("bomb", dict(content=_png_header_only(60000, 60000), headers=PNG), 422, "ImageReadError", "too large"),
        ("huge body", dict(content=b"\xff\xd8" + b"\0" * (300 << 10), headers=JPEG), 413, "BodyTooLargeError", "bytes"),
        ("huge multipart", dict(files={"image": ("x.jpg", b"\0" * (300 << 10), "image/jpeg")}), 413,
         "BodyTooLargeError", "max-body"),
        ("wrong emotion", dict(content=good, headers=JPEG, params={"emotion": "joy"}), 400, "InvalidArgumentError",
         "'joy'"),
        ("max_side text", dict(content=good, headers=JPEG, params={"max_side": "big"}), 400, "InvalidArgumentError",
         "max_side"),
        ("max_side small", dict(content=good, headers=JPEG, params={"max_side": "2"}), 400, "InvalidArgumentError",
         "max_side"),
        ("wrong content type", dict(content=good, headers={"content-type": "text/plain"}), 415,
         "UnsupportedMediaTypeError", "text/plain"),
        ("form-urlencoded (curl -d)", dict(content=good, headers={"content-type": "application/x-www-form-urlencoded"}),
         415, "UnsupportedMediaTypeError", "Content-Type"),
        ("no file in multipart", dict(files={"emotion": (None, "sad")}), 400, "InvalidArgumentError", "no file"),
        ("two files", dict(files=[("image", ("a.jpg", good, "image/jpeg")), ("other", ("b.jpg", good, "image/jpeg"))]),
         400, "InvalidArgumentError", "more than one file; send one image per request. Note: expected multipart/"
         "form-data with one file, in a field 'image', available 2 files (fields 'image', 'other')"),
        ("three files", dict(files=[(f"f{k}", (f"{k}.jpg", good, "image/jpeg")) for k in range(3)]), 400,
         "InvalidArgumentError", "more than one file"),
        ("empty file", dict(files={"image": ("x.jpg", b"", "image/jpeg")}), 422, "ImageReadError", "0 bytes"),
        ("broken multipart", dict(content=b"--xyz\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=abc"}),
         400, "InvalidArgumentError", "multipart"),
        ("too small", dict(content=encode(photos[2][:3, :3]), headers=PNG), 422, "InvalidImageError", "too small"),
        ("unknown format", dict(content=good, headers=JPEG, params={"format": "gif"}), 400, "InvalidArgumentError",
         "format"),
        ("accept html", dict(content=good, headers={**JPEG, "accept": "text/html"}), 406, "NotAcceptableError", "Accept"),
    ]

    async def body() -> None:
        async with client_for(make_app(max_body=256 << 10)) as c:
            for name, req, status, kind, word in cases:
                r = await c.post("/v1/stylize", **req)
                assert r.status_code == status, (name, r.text)
                j = r.json()
                assert j["error"] == kind and word in j["message"] and "Note: expected" in j["message"], (name, j)
                assert not re.search(r"(?<!\.)\.\.(?=\s|$)", j["message"]), f"doubled full stop: {j}"
            r = await c.get("/v1/nothing")
            assert r.status_code == 404 and "/v1/stylize" in r.json()["message"]
            r = await c.post("/v1/stylize", content=good, headers=JPEG)  # still up, still right
            assert r.status_code == 200 and decode(r.content).shape == photos[2].shape
            r = await c.post("/v1/stylize", files={"photo": ("p.jpg", good, "image/jpeg")})  # the one file, any name
            assert r.status_code == 200 and decode(r.content).shape == photos[2].shape
            page = (await c.get("/metrics")).text
            assert metric(page, "emostyle_requests_total", endpoint="stylize", status="422") == 5
            assert metric(page, "emostyle_requests_in_flight") == 0

    run(body())


class Recording:
    """The shared Stylizer, with its batch calls recorded and (optionally) held until ``gate`` opens."""

    def __init__(self, st: Stylizer, gate: threading.Event | None = None) -> None:
        self.st, self.gate = st, gate
        self.calls: list[tuple[str, int, str | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.st, name)

    def classify_batch(self, images: list[np.ndarray]) -> Any:
        self.calls.append(("classify", len(images), None))
        return self.st.classify_batch(images)

    def stylize_batch(self, images: list[np.ndarray], **kw: Any) -> Any:
        if self.gate is not None:
            self.gate.wait(30)
        self.calls.append(("stylize", len(images), kw.get("emotion")))
        return self.st.stylize_batch(images, **kw)


def test_requests_that_arrive_together_share_runs(make_app: Any, serve_stylizer: Stylizer,
                                                  photos: list[np.ndarray]) -> None:
    rec = Recording(serve_stylizer)
    tiny = photos[0][:3, :3]  # too small to style: fails its style run, and only its own request
    requests = [(p, None) for p in photos] + [(photos[0], "sad"), (tiny, "sad"), (photos[1], "sad"), (photos[2], "angry")]
    want = [serve_stylizer.stylize(p, emotion=e) if p is not tiny else None for p, e in requests]

    async def body() -> None:
        # the batch waits (up to 1 s, the most allowed) until all 7 requests are in: one batch
        async with client_for(make_app(rec, max_batch=len(requests), max_wait_ms=1000)) as c:
            answers = await asyncio.gather(*[
                c.post("/v1/stylize", content=encode(p), headers=PNG, params={"emotion": e} if e else None)
                for p, e in requests])
            for r, w in zip(answers, want):
                if w is None:
                    assert r.status_code == 422 and r.json()["error"] == "InvalidImageError", r.text
                    continue
                assert r.status_code == 200, r.text
                if serve_stylizer._styles[w.style].name.startswith("onnxruntime:"):
                    np.testing.assert_array_equal(decode(r.content), w.image)
                else:  # OpenVINO's kernels differ with the batch size: within the bundle's 1 grey level
                    assert np.abs(decode(r.content).astype(int) - w.image).max() <= 1
                assert r.headers["x-emotion"] == w.emotion and r.headers["x-emotion-source"] == w.source
            page = (await c.get("/metrics")).text
            assert metric(page, "emostyle_batch_size_count") == 1
            assert metric(page, "emostyle_batch_size_bucket", le="6.0") == 0  # the one batch had all 7

    run(body())
    styles = {serve_stylizer.manifest.emotions[w.emotion] for w in want if w is not None}
    assert [c for c in rec.calls if c[0] == "classify"] == [("classify", 3, None)]  # one classifier run for 3
    assert len([c for c in rec.calls if c[0] == "stylize"]) == len(styles)  # one style run per style
    assert sum(n for kind, n, _ in rec.calls if kind == "stylize") == len(requests)


def test_full_queue_answers_429_with_retry_after(make_app: Any, serve_stylizer: Stylizer,
                                                 photos: list[np.ndarray]) -> None:
    gate = threading.Event()
    rec = Recording(serve_stylizer, gate)
    png = encode(photos[2])

    async def body() -> None:
        async with client_for(make_app(rec, max_batch=1, queue=2, max_wait_ms=0)) as c:
            held = [asyncio.create_task(c.post("/v1/stylize?emotion=happy", content=png, headers=PNG))
                    for _ in range(2)]
            service = c._transport.app.state.service  # noqa: SLF001 - the app this client talks to
            for _ in range(500):
                if service.admitted == 2:
                    break
                await asyncio.sleep(0.01)
            r = await c.post("/v1/stylize?emotion=happy", content=png, headers=PNG)
            assert r.status_code == 429 and r.json()["error"] == "ServiceBusyError"
            assert int(r.headers["retry-after"]) >= 1
            ready = await c.get("/readyz")  # the truth: a request now would be refused
            assert ready.status_code == 503 and ready.json() == {"status": "busy", "admitted": 2, "queue": 2,
                                                                 "error": None}
            gate.set()
            done = await asyncio.gather(*held)
            assert [d.status_code for d in done] == [200, 200]
            page = (await c.get("/metrics")).text
            assert metric(page, "emostyle_requests_total", endpoint="stylize", status="429") == 1
            assert metric(page, "emostyle_emotions_total", emotion="happy", source="given") == 2
            assert metric(page, "emostyle_queue_depth") == 0 and metric(page, "emostyle_requests_in_flight") == 0
            assert (await c.get("/readyz")).json()["status"] == "ready"

    run(body())
