"""The same app deployed by Ray Serve (the scale-out path): one replica on a local Ray, in a child process, under
a route prefix; the page (GET /) works through Ray's proxy in a real browser."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from servekit import decode, encode
from uikit import console_errors, open_page, shown_image, shown_scores, text, wait_styled

from emostyle_rt import Stylizer

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import base64, json, socket, sys, time
import httpx, ray
from ray import serve
from emostyle_serve import ServeConfig
from emostyle_serve.ray_serve import application

bundle, photo = sys.argv[1], open(sys.argv[2], "rb").read()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
url = f"http://127.0.0.1:{port}/emostyle"
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(ServeConfig(bundle=bundle, warmup=False), num_replicas=1), route_prefix="/emostyle",
              name="emostyle")
    for _ in range(600):
        try:
            if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    ok = httpx.post(url + "/v1/stylize?emotion=sad", content=photo, headers={"content-type": "image/png"}, timeout=120)
    bad = httpx.post(url + "/v1/stylize?emotion=joy", content=photo, headers={"content-type": "image/png"}, timeout=120)
    print(json.dumps({"ok": ok.status_code, "type": ok.headers.get("content-type"), "emotion": ok.headers.get("x-emotion"),
                      "image": base64.b64encode(ok.content).decode(), "bad": bad.status_code, "bad_body": bad.json(),
                      "url": url}), flush=True)
    sys.stdin.readline()  # the test is done with the page
finally:
    serve.shutdown()
    ray.shutdown()
"""


def _has_ray_serve() -> bool:
    """ray with Ray Serve's own dependencies (``ray[serve]``), looked up without importing anything."""
    return all(importlib.util.find_spec(m) is not None for m in ("ray", "fastapi", "pydantic", "aiohttp"))


needs_ray_serve = pytest.mark.skipif(not _has_ray_serve(),
                                     reason='Ray Serve is not installed (pip install "ray[serve]")')


@pytest.fixture(scope="module")
def ray_app(mtcnn_bundle: Path, photos: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The SCRIPT's answers (its Ray Serve app under /emostyle stays up until the module's tests are done) and
    the photo it posted."""
    photo = tmp_path_factory.mktemp("ray-serve") / "photo.png"
    photo.write_bytes(encode(photos[1]))
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(mtcnn_bundle), str(photo)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()
    try:
        got = None
        while got is None:
            line = lines.get(timeout=300)
            if line is None:
                proc.wait(30)
                pytest.fail(f"the Ray Serve script ended ({proc.returncode}): {''.join(err)[-3000:]}")
            if line.startswith("{"):
                got = json.loads(line)
        yield got, photo
    finally:
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write("done\n")
            proc.stdin.close()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(err)[-3000:]


@pytest.mark.slow
@needs_ray_serve
def test_ray_serve_deploys_the_same_app(ray_app: Any, serve_stylizer: Stylizer, photos: list[np.ndarray]) -> None:
    got, _ = ray_app
    assert (got["ok"], got["type"], got["emotion"]) == (200, "image/png", "sad")
    np.testing.assert_array_equal(decode(base64.b64decode(got["image"])),
                                  serve_stylizer.stylize(photos[1], emotion="sad").image)
    assert got["bad"] == 400 and got["bad_body"]["error"] == "InvalidArgumentError"


@pytest.mark.slow
@needs_ray_serve
def test_the_page_works_through_ray_serve(ray_app: Any, browser: Any) -> None:
    """Through Ray's proxy, under the route prefix (asked for without its slash: redirected), the page shows what
    the API answers for the same bytes."""
    got, photo = ray_app
    url = got["url"]
    want = httpx.post(f"{url}/v1/stylize", content=photo.read_bytes(), headers={"content-type": "image/png"},
                      timeout=120)
    assert want.status_code == 200, want.text
    assert "default-src 'none'" in httpx.get(f"{url}/", timeout=30).headers["content-security-policy"]
    open_page(browser, url)
    assert browser.current_url == f"{url}/"
    browser.find_element("id", "file").send_keys(str(photo))
    wait_styled(browser, None)
    assert text(browser, "r-emotion") == want.headers["x-emotion"]
    assert shown_scores(browser) == dict(kv.split("=") for kv in want.headers["x-emotion-scores"].split(","))
    np.testing.assert_array_equal(shown_image(browser, "styled"), decode(want.content))
    assert console_errors(browser) == []


def test_without_ray_serve_the_deployment_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_rt.errors import BackendError
    from emostyle_serve import ServeConfig
    from emostyle_serve.ray_serve import application

    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray fails, as where it is not installed
    with pytest.raises(BackendError, match=r'pip install "ray\[serve\]"'):
        application(ServeConfig(bundle="unused"))
