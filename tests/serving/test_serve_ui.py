"""The page of ``emostyle serve`` (``GET /``) in a real headless browser (Debian's chromium + chromium-driver, driven
by Selenium; nothing downloaded): a photo in, what it shows equals what ``/v1/stylize`` answers for the same bytes;
a forced emotion; the API's errors (413, 429, 422) shown as their messages; the webcam mode on a fake camera never
has more frames in flight than its limit; its emotion-over-time port agrees with ``emostyle_rt.video``; the CSP
holds. Without chromium the browser tests fail, naming what to install, unless ``$EMOSTYLE_SKIP_BROWSER=1``
(see ``uikit``); an installed browser that cannot start always fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import numpy as np
import pytest
from servekit import client_for, decode, encode, run
from uikit import WAIT, console_errors, open_page, shown_image, shown_scores, text, until, wait_styled

from emostyle_rt import Stylizer
from emostyle_rt.errors import BackendError, NoFaceError
from emostyle_rt.stylizer import Classification
from emostyle_rt.video import EmotionTimeline, TemporalOptions, default_initial
from emostyle_serve import ServeConfig, create_app
from emostyle_serve.ui import CSP, WEBCAM_IN_FLIGHT, demo_notice

#: Set to a path to keep the screenshot the photo test takes (the README's docs/img/serve-ui.png).
SCREENSHOT_ENV = "EMOSTYLE_UI_SCREENSHOT"


# -- in-process app (no browser) ----------------------------------------------------------------------


def test_page_routes_headers_and_no_ui(make_app: Any, serve_stylizer: Stylizer) -> None:
    async def body() -> None:
        async with client_for(make_app(max_body=256 << 10)) as c:
            r = await c.get("/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert r.headers["content-security-policy"] == CSP and "'unsafe-inline'" not in CSP
            assert "connect-src 'self'" in CSP and "default-src 'none'" in CSP
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
            html = r.text
            assert "<script" in html and "<script>" not in html and " style=" not in html  # nothing inline
            assert "http://" not in html and "https://" not in html  # nothing from another host
            for name, kind in [("app.js", "text/javascript"), ("smoother.js", "text/javascript"),
                               ("style.css", "text/css"), ("icon.svg", "image/svg+xml")]:
                r = await c.get(f"/ui/{name}")
                assert r.status_code == 200 and r.headers["content-type"].startswith(kind), name
                assert r.headers["content-security-policy"] == CSP
                assert "http://" not in r.text.replace('xmlns="http://www.w3.org/2000/svg"', "") \
                    and "https://" not in r.text, name
            r = await c.get("/ui/../app.py")
            assert r.status_code == 404
            r = await c.get("/ui/index.html")
            assert r.status_code == 404 and "Note: expected" in r.json()["message"]
            cfg = (await c.get("/ui/config.json")).json()
            labels = serve_stylizer.labels
            assert cfg["labels"] == list(labels) and cfg["initial"] == default_initial(labels)
            assert cfg["emotions"] == dict(serve_stylizer.manifest.emotions)
            assert cfg["temporal"] == TemporalOptions().__dict__ and cfg["in_flight"] == WEBCAM_IN_FLIGHT
            assert cfg["max_body"] == 256 << 10 and cfg["ready"] is True
            # the demo's note says what is untrained, from the manifest: here the seven styles, not fer's classifier
            assert cfg["demo_note"] == demo_notice(serve_stylizer.manifest)
            assert "classifier is trained (fer mini-Xception)" in cfg["demo_note"]
            assert "seven style networks are untrained" in cfg["demo_note"]
        async with client_for(make_app(ui=False)) as c:  # --no-ui
            for path in ("/", "/ui/app.js", "/ui/config.json"):
                assert (await c.get(path)).status_code == 404, path
            assert (await c.get("/readyz")).status_code == 200

    run(body())


def test_no_ui_flag_reaches_the_config(mtcnn_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_serve.cli import _config, _parser
    from emostyle_serve.config import CONFIG_ENV
    from emostyle_serve.ray_serve import app

    assert _config(_parser().parse_args(["--bundle", str(mtcnn_bundle)])).ui is True
    config = _config(_parser().parse_args(["--bundle", str(mtcnn_bundle), "--no-ui"]))
    assert config.ui is False
    monkeypatch.setenv(CONFIG_ENV, config.to_env())  # how it reaches --workers N processes
    assert ServeConfig.from_env().ui is False
    assert "--no-ui" in _parser().format_help()
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray Serve's builder reads ui=false (and then needs ray)
    with pytest.raises(BackendError, match="Ray Serve"):
        app({"bundle": str(mtcnn_bundle), "ui": "false"})


# -- a real server and a real browser --------------------------------------------------------------------


class Held:
    """The shared Stylizer, its style runs held while ``gate`` is clear (it is set, open, by default)."""

    def __init__(self, st: Stylizer) -> None:
        self.st, self.gate = st, threading.Event()
        self.gate.set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.st, name)

    def stylize_batch(self, images: list[np.ndarray], **kw: Any) -> Any:
        self.gate.wait(60)
        return self.st.stylize_batch(images, **kw)


class Concurrency:
    """ASGI wrapper counting the API requests (/v1/...) in progress at once, the most seen, and what came.

    ``hold_until``: a POST /v1/stylize waits (up to 20 s) until that many API requests are in progress, so that a
    client that keeps that many in flight is seen to reach it however fast the server is."""

    def __init__(self, app: Any, hold_until: int = 0) -> None:
        self.app, self.hold_until = app, hold_until
        self.now = self.most = 0
        self.requests: list[tuple[str, str]] = []
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def release(self) -> None:
        """Hold nothing any more (from the test's thread): what is held goes on at once."""
        self.hold_until = 0
        if self._loop is not None and self._changed is not None:
            changed = self._changed

            async def wake() -> None:
                async with changed:
                    changed.notify_all()

            asyncio.run_coroutine_threadsafe(wake(), self._loop).result(30)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        if self._changed is None:
            self._changed, self._loop = asyncio.Condition(), asyncio.get_running_loop()
        self.now += 1
        self.most = max(self.most, self.now)
        self.requests.append((scope["path"], scope["query_string"].decode()))
        try:
            async with self._changed:
                self._changed.notify_all()
                if self.hold_until and scope["path"] == "/v1/stylize":
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait_for(lambda: self.now >= self.hold_until), 20)
            await self.app(scope, receive, send)
        finally:
            self.now -= 1
            async with self._changed:
                self._changed.notify_all()


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on uvicorn on 127.0.0.1 (a free port) in a thread; its URL once /readyz says 200."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            if not thread.is_alive():
                raise RuntimeError("the test server stopped")
            threading.Event().wait(0.05)  # polling interval of the readiness check, not a synchronisation
        else:
            raise RuntimeError("the test server did not get ready in 30 s")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture()
def server(serve_stylizer: Stylizer) -> Iterator[Callable[..., Any]]:
    """``server(hold_until=0, **config)`` -> (url, Concurrency, Held): the page's app on a real port."""
    with contextlib.ExitStack() as stack:
        def start(hold_until: int = 0, **options: Any) -> tuple[str, Concurrency, Held]:
            held = Held(serve_stylizer)
            config = ServeConfig(bundle=str(serve_stylizer.manifest.root), warmup=False, **options)
            wrapped = Concurrency(create_app(config, stylizer=held), hold_until)
            return stack.enter_context(serving(wrapped)), wrapped, held

        yield start


def test_photo_in_the_browser_equals_the_api(browser: Any, server: Callable[..., Any], serve_stylizer: Stylizer,
                                             astronaut: np.ndarray, tmp_path: Path) -> None:
    url, seen, _ = server(max_body=1 << 20)
    photo = tmp_path / "astronaut.png"
    photo.write_bytes(encode(astronaut))
    want = httpx.post(f"{url}/v1/stylize", content=photo.read_bytes(), headers={"content-type": "image/png"},
                      timeout=WAIT)
    assert want.status_code == 200, want.text
    open_page(browser, f"{url}/")

    browser.find_element("id", "file").send_keys(str(photo))
    wait_styled(browser, None)
    assert text(browser, "r-emotion") == want.headers["x-emotion"]
    assert text(browser, "r-style") == want.headers["x-style"]
    assert "largest face" in text(browser, "r-source")
    shown = shown_scores(browser)
    api = dict(kv.split("=") for kv in want.headers["x-emotion-scores"].split(","))
    assert list(shown) == list(serve_stylizer.labels) and shown == api  # the API's own numbers, in its order
    for li in browser.find_elements("css selector", "#scores li"):  # and what a reader sees: each to 3 digits
        assert li.find_element("class name", "value").text == f"{float(api[li.get_attribute('data-label')]):.3f}"
    np.testing.assert_array_equal(shown_image(browser, "styled"), decode(want.content))
    x, y, w, h = map(int, want.headers["x-face"].split(","))
    face = browser.find_element("id", "face")
    assert face.is_displayed()
    assert float(face.value_of_css_property("left").rstrip("px")) == pytest.approx(
        x / astronaut.shape[1] * browser.find_element("id", "original-frame").size["width"], abs=1.5)
    link = browser.find_element("id", "download")
    assert link.get_attribute("download") == "astronaut-styled.png"
    assert link.get_attribute("href") == browser.find_element("id", "styled").get_attribute("src")
    assert text(browser, "demo-note") == demo_notice(serve_stylizer.manifest)
    shot = tmp_path / "ui.png"
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, os.environ[SCREENSHOT_ENV])

    # force an emotion: that style, no classification (the photo's scores stay, marked as not used)
    before = browser.find_element("id", "styled").get_attribute("src")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "emotion")).select_by_value("sad")
    wait_styled(browser, before)
    sad = httpx.post(f"{url}/v1/stylize?emotion=sad", content=photo.read_bytes(),
                     headers={"content-type": "image/png"}, timeout=WAIT)
    assert (text(browser, "r-emotion"), text(browser, "r-source")) == ("sad", "(forced)")
    assert text(browser, "r-style") == sad.headers["x-style"] == serve_stylizer.manifest.emotions["sad"]
    assert "not used" in text(browser, "scores-note")
    np.testing.assert_array_equal(shown_image(browser, "styled"), decode(sad.content))
    assert seen.requests[-2] == ("/v1/stylize", "emotion=sad")  # the page's request, then ours

    # a body over --max-body: the API's 413 message; then a file that is no image: its 422 message
    noise = np.random.default_rng(0).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    big.write_bytes(encode(noise))
    assert big.stat().st_size > 1 << 20
    browser.find_element("id", "file").send_keys(str(big))
    until(browser, lambda d: "HTTP 413" in text(d, "error"), "the 413 message")
    assert "is too large" in text(browser, "error") and "--max-body" in text(browser, "error")
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"these are notes, not a photo")
    browser.find_element("id", "file").send_keys(str(fake))
    until(browser, lambda d: "HTTP 422" in text(d, "error"), "the 422 message")
    assert "not an image" in text(browser, "error")
    # the 413 and 422 answers are logged as failed loads; nothing else (no CSP violation, no script error)
    assert [e for e in console_errors(browser) if "Failed to load resource" not in e] == []


def test_drop_paste_and_a_busy_service(browser: Any, server: Callable[..., Any], photos: list[np.ndarray]) -> None:
    url, seen, held = server(queue=1)
    open_page(browser, f"{url}/")
    png = base64.b64encode(encode(photos[0])).decode()
    make_file = ("const b = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
                 "const dt = new DataTransfer(); dt.items.add(new File([b], arguments[1], {type: 'image/png'}));")
    browser.execute_script(make_file + "document.getElementById('drop').dispatchEvent("
                           "new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
                           png, "dropped.png")
    wait_styled(browser, None)
    assert browser.find_element("id", "download").get_attribute("download") == "dropped-styled.png"
    before = browser.find_element("id", "styled").get_attribute("src")
    browser.execute_script(make_file + "document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt,"
                           " bubbles: true, cancelable: true}));", png, "pasted.png")
    wait_styled(browser, before)
    assert browser.find_element("id", "download").get_attribute("download") == "pasted-styled.png"
    assert [p for p, _ in seen.requests] == ["/v1/stylize", "/v1/stylize"]

    # the queue (1) is taken by a request of another client: the page shows the 429 and its Retry-After
    held.gate.clear()
    other = threading.Thread(target=lambda: httpx.post(f"{url}/v1/stylize", content=encode(photos[1]),
                                                       headers={"content-type": "image/png"}, timeout=WAIT))
    other.start()
    try:
        until(browser, lambda d: seen.now == 1, "the other client's request to be held")
        # the page stays usable while the service is busy: another photo is taken and answered at once
        browser.execute_script(make_file + "document.getElementById('drop').dispatchEvent("
                               "new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));",
                               png, "again.png")
        until(browser, lambda d: "HTTP 429" in text(d, "error"), "the 429 message")
        assert "Too many requests" in text(browser, "error") and "Retry after" in text(browser, "error")
        assert browser.find_element("id", "file").is_enabled() and browser.find_element("id", "emotion").is_enabled()
    finally:
        held.gate.set()
        other.join(WAIT)


def test_webcam_keeps_at_most_its_limit_in_flight(browser: Any, server: Callable[..., Any],
                                                  serve_stylizer: Stylizer) -> None:
    url, seen, _ = server(hold_until=WEBCAM_IN_FLIGHT)
    open_page(browser, f"{url}/")
    assert browser.find_element("id", "limit").get_attribute("textContent") == str(WEBCAM_IN_FLIGHT)
    browser.find_element("id", "cam-start").click()
    frames = 6
    until(browser, lambda d: int(d.find_element("id", "stats").get_attribute("data-frames") or 0) >= frames,
           f"{frames} webcam frames")
    stats = browser.find_element("id", "stats")
    page_most = int(stats.get_attribute("data-max-in-flight"))
    fps, latency = text(browser, "fps"), text(browser, "latency")
    seen.release()
    browser.find_element("id", "cam-stop").click()
    until(browser, lambda d: d.find_element("id", "stats").get_attribute("data-in-flight") == "0",
           "the frames in flight to finish")
    assert page_most == WEBCAM_IN_FLIGHT  # it fills its window (the server holds a frame until it does) ...
    assert seen.most == WEBCAM_IN_FLIGHT and seen.now == 0  # ... and never more, counted at the server
    assert float(fps) > 0 and float(latency) > 0, (fps, latency)
    styled = [q for p, q in seen.requests if p == "/v1/stylize"]
    classified = [p for p, _ in seen.requests if p == "/v1/classify"]
    assert len(styled) >= frames and all(q.startswith("emotion=") for q in styled)  # the smoothed emotion, given
    assert classified  # on the video path's schedule (every frame at a few frames/s: classify_seconds 0.2)
    assert text(browser, "r-emotion") in serve_stylizer.labels and "smoothed" in text(browser, "r-source")
    assert len(browser.find_elements("css selector", "#scores li")) == len(serve_stylizer.labels)
    assert console_errors(browser) == []


def test_webcam_emotion_over_time_matches_the_video_path(browser: Any, server: Callable[..., Any],
                                                         serve_stylizer: Stylizer) -> None:
    """The page's smoother.js and emostyle_rt.video's EmotionTimeline (no face to track: the schedule only) on the
    same frames: the same frames classified, the same emotion and switch at every frame, the same smoothed scores."""
    labels = serve_stylizer.labels
    rng = np.random.default_rng(26)
    times = np.cumsum(rng.uniform(0.01, 0.35, 160))
    lead = np.repeat(rng.integers(0, len(labels), 16), 10)  # the emotion that leads changes every 10 frames
    table: list[Any] = []
    for k, t in enumerate(times):
        p = rng.dirichlet(np.ones(len(labels)))
        p = 0.5 * p + 0.5 * np.eye(len(labels))[lead[k]] if rng.uniform() < 0.8 else p  # noise, now and then
        kind = rng.uniform()
        table.append(None if kind < 0.05 else {"emotion": labels[int(lead[k])], "scores": {}} if kind < 0.1 else
                     {"emotion": labels[int(np.argmax(p))], "scores": dict(zip(labels, p.tolist()))})
    scenarios = [TemporalOptions(), TemporalOptions(smooth_seconds=0, switch_seconds=0),
                 TemporalOptions(classify_every=1, smooth_seconds=0.5, switch_margin=0.05, switch_seconds=0.3),
                 TemporalOptions(classify_every=5, classify_seconds=1.0, switch_margin=0.4),
                 TemporalOptions(smooth_seconds=0.2, switch_margin=0.2, min_segment_seconds=0),
                 TemporalOptions(smooth_seconds=0.1, switch_margin=0.1, min_segment_seconds=3.0)]
    url, _, _ = server()
    open_page(browser, f"{url}/")
    for options in scenarios:
        want, frame, current = [], np.zeros((8, 8, 3), np.uint8), {"k": 0}

        def classify(rgb: np.ndarray) -> Classification:
            found = table[current["k"]]
            if found is None:
                raise NoFaceError("no face")
            return Classification(found["emotion"], found["scores"], None, (), "face")  # no box: nothing to track

        timeline = EmotionTimeline(labels, dict(serve_stylizer.manifest.emotions), classify, options,
                                   default_initial(labels))
        for k, t in enumerate(times):
            current["k"] = k
            s = timeline.step(frame, k, float(t))
            want.append([s.reason, s.emotion, s.switched, [s.scores.get(x) for x in labels]])
        got = browser.execute_async_script(
            "const [labels, options, initial, times, table, done] = arguments;"
            "import('./ui/smoother.js').then(({EmotionTimeline}) => {"
            "  const tl = new EmotionTimeline(labels, options, initial); const out = [];"
            "  times.forEach((t, k) => { const reason = tl.schedule(k, t); if (reason) tl.observe(t, table[k]);"
            "    const s = tl.decide(t);"
            "    out.push([reason, s.emotion, s.switched, labels.map(x => s.scores[x] ?? null)]);"
            "  }); done(out); });",
            list(labels), options.__dict__, default_initial(labels), times.tolist(), table)
        assert [g[:3] for g in got] == [w[:3] for w in want], options
        assert sum(w[2] for w in want) >= 3, "the scenario should switch emotions a few times"
        for g, w in zip(got, want):
            assert (g[3] == w[3]) if w[3][0] is None else np.allclose(g[3], w[3], rtol=0, atol=1e-12)


def test_the_csp_holds_in_the_browser(browser: Any, server: Callable[..., Any]) -> None:
    """Another origin (localhost for 127.0.0.1) cannot be fetched, an inline script does not run."""
    url, _, _ = server()
    open_page(browser, f"{url}/")
    other = url.replace("127.0.0.1", "localhost")
    browser.execute_script(
        "window.seen = []; window.fetched = null;"
        "document.addEventListener('securitypolicyviolation', e => window.seen.push(e.effectiveDirective));"
        "const s = document.createElement('script'); s.textContent = 'window.inlineRan = true;';"
        "document.body.append(s);"
        "fetch(arguments[0] + '/healthz').then(() => { window.fetched = 'fetched'; },"
        "                                      () => { window.fetched = 'refused'; });", other)
    until(browser, lambda d: d.execute_script("return window.fetched !== null && window.seen.length >= 2"),
           "two CSP violations")
    assert browser.execute_script("return [window.fetched, window.inlineRan === true]") == ["refused", False]
    assert set(browser.execute_script("return window.seen")) == {"connect-src", "script-src-elem"}
    assert httpx.get(f"{other}/healthz", timeout=10).status_code == 200  # refused by the page's CSP, not the server
