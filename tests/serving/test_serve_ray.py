"""The same app deployed by Ray Serve (the scale-out path): one replica on a local Ray, in a child process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from servekit import encode

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
url = f"http://127.0.0.1:{port}"
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(application(ServeConfig(bundle=bundle, warmup=False), num_replicas=1), route_prefix="/", name="emostyle")
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
                      "image": base64.b64encode(ok.content).decode(), "bad": bad.status_code, "bad_body": bad.json()}))
finally:
    serve.shutdown()
    ray.shutdown()
"""


def _has_ray_serve() -> bool:
    """ray with Ray Serve's own dependencies (``ray[serve]``), looked up without importing anything."""
    return all(importlib.util.find_spec(m) is not None for m in ("ray", "fastapi", "pydantic", "aiohttp"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_ray_serve(), reason='Ray Serve is not installed (pip install "ray[serve]")')
def test_ray_serve_deploys_the_same_app(mtcnn_bundle: Path, serve_stylizer: Stylizer, photos: list[np.ndarray],
                                        tmp_path: Path) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode(photos[1]))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(mtcnn_bundle), str(photo)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("{")))
    assert (got["ok"], got["type"], got["emotion"]) == (200, "image/png", "sad")
    import base64

    from servekit import decode

    np.testing.assert_array_equal(decode(base64.b64decode(got["image"])),
                                  serve_stylizer.stylize(photos[1], emotion="sad").image)
    assert got["bad"] == 400 and got["bad_body"]["error"] == "InvalidArgumentError"


def test_without_ray_serve_the_deployment_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_rt.errors import BackendError
    from emostyle_serve import ServeConfig
    from emostyle_serve.ray_serve import application

    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray fails, as where it is not installed
    with pytest.raises(BackendError, match=r'pip install "ray\[serve\]"'):
        application(ServeConfig(bundle="unused"))
