"""``emostyle serve`` as a real uvicorn process (graceful shutdown finishes the requests in flight), its
argument checks, and the runtime never importing the service."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from servekit import decode, encode, metric

import emostyle_rt.cli as rt_cli

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric_dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith("emostyle-serve-metrics-")]


def test_sigterm_finishes_the_requests_in_flight(mtcnn_bundle: Path, astronaut: np.ndarray, tmp_path: Path) -> None:
    """Two worker processes (so /metrics sums both): SIGTERM while 4 requests are in flight; all 4 answered."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emostyle_rt.cli", "serve", "--bundle", str(mtcnn_bundle), "--port", str(port),
         "--workers", "2", "--max-batch", "4", "--max-wait-ms", "1000", "-q"],  # a batch waits 1 s for more
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    photo = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    answers: list[Any] = []
    try:
        deadline = time.monotonic() + 180  # two processes load and warm up the bundle (slow on a busy machine)
        while time.monotonic() < deadline:  # /readyz answers for one worker: wait for both (livemin gauge)
            try:
                ready = httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                both = len([f for d in _metric_dirs(tmp_path) for f in d.glob("gauge_livemin_*.db")]) == 2
                if ready and both and metric(httpx.get(f"{url}/metrics", timeout=5).text, "emostyle_ready") == 1:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.1)
        else:
            pytest.fail("the server did not get ready in 180 s")

        def post() -> None:
            try:
                answers.append(httpx.post(f"{url}/v1/stylize", content=encode(photo),
                                          headers={"content-type": "image/png"}, timeout=60))
            except httpx.HTTPError as exc:  # recorded: the assertion below says what went wrong
                answers.append(exc)

        clients = [threading.Thread(target=post) for _ in range(4)]
        for t in clients:
            t.start()
        arrived, in_flight, deadline = 0.0, 0.0, time.monotonic() + 60
        while time.monotonic() < deadline and arrived < 4:  # all 4 in (a slow thread start may trail the others)
            page = httpx.get(f"{url}/metrics", timeout=5).text
            in_flight = metric(page, "emostyle_requests_in_flight")
            arrived = in_flight + metric(page, "emostyle_requests_total", endpoint="stylize")
            time.sleep(0.005)
        assert arrived == 4 and in_flight >= 1, f"{arrived} requests arrived, {in_flight} in flight: nothing to test"
        assert len(_metric_dirs(tmp_path)) == 1  # where the workers' metrics meet
        proc.send_signal(signal.SIGTERM)  # while all 4 are being served
        for t in clients:
            t.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(answers) == 4
    for r in answers:
        assert isinstance(r, httpx.Response) and r.status_code == 200, r
        assert decode(r.content).shape == photo.shape and r.headers["x-emotion"]
    with pytest.raises(httpx.ConnectError):  # and it is gone
        httpx.get(f"{url}/healthz", timeout=2)
    assert _metric_dirs(tmp_path) == []  # removed at exit


def test_serve_arguments_are_checked_before_the_port_opens(mtcnn_bundle: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as done:
        rt_cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "/v1/stylize" in out and "./serve" in out and "Ray Serve" in out
    bundle = str(mtcnn_bundle)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        used = busy.getsockname()[1]
        for argv, words in [
            (["--bundle", str(tmp_path / "none")], "No bundle"),
            (["--bundle", bundle, "--port", "70000"], "out of range"),
            (["--bundle", bundle, "--port", str(used)], "Cannot listen"),
            (["--bundle", bundle, "--max-wait-ms", "5000"], "max_wait_ms"),
            (["--bundle", bundle, "--queue", "0"], "queue"),
            (["--bundle", bundle, "--no-face", "sometimes"], "no-face policy"),
            (["--bundle", bundle, "--memory-budget", "lots"], "memory size"),
        ]:
            assert rt_cli.main(["serve", *argv, "--port", str(_free_port())] if "--port" not in argv else
                               ["serve", *argv]) == 2, argv
            err = capsys.readouterr().err
            assert words in err and ("Note: expected" in err or "--bundle DIR" in err), (argv, err)
    monkeypatch.setattr(rt_cli, "SERVE_MODULES", ("emostyle_serve", "no_such_module_of_the_serve_extra"))
    assert rt_cli.main(["serve", "--bundle", bundle]) == 2
    assert 'pip install "emostyle-rt[cpu,serve]"' in capsys.readouterr().err


def test_the_runtime_never_imports_the_service(mtcnn_bundle: Path) -> None:
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "import emostyle_rt, emostyle_rt.cli\n"
        "st = emostyle_rt.Stylizer(sys.argv[1])\n"
        "st.stylize(np.full((32, 32, 3), 128, np.uint8), emotion='sad')\n"
        "bad = ('emostyle_serve', 'starlette', 'uvicorn', 'prometheus_client', 'multipart', 'ray')\n"
        "print(json.dumps(sorted(m for m in bad if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(mtcnn_bundle)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_workers_get_budgets_that_add_up_to_the_machine(mtcnn_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_rt import tiling
    from emostyle_serve import cli as serve_cli

    monkeypatch.setattr(tiling.memory, "host_available", lambda: 8 << 30)
    config = serve_cli._config(serve_cli._parser().parse_args(["--bundle", str(mtcnn_bundle), "--workers", "8"]))
    assert config.memory_budget == int(0.75 * (8 << 30)) // 8  # each worker's share: together 75% of the machine
    assert serve_cli.ServeConfig.from_env.__func__  # the budget travels to the workers in the config's JSON
    assert json.loads(config.to_env())["memory_budget"] == config.memory_budget
    one = serve_cli._config(serve_cli._parser().parse_args(["--bundle", str(mtcnn_bundle)]))
    assert one.memory_budget is None  # one worker: the library's default (peak RSS near 2.5 GB)
    mine = serve_cli._config(serve_cli._parser().parse_args(["--bundle", str(mtcnn_bundle), "--workers", "8",
                                                            "--memory-budget", "3GB"]))
    assert mine.memory_budget == 3 * 10**9
