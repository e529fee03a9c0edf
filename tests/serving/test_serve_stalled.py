"""``emostyle serve`` under stalled clients: they get 408 and free their connection and queue slot, real requests
keep being served, ``/readyz`` tells the truth (503 "busy" exactly while the queue is full).

Before (issue 22): 32 connections that sent their headers and 2 bytes of a 100000-byte body held every slot
for as long as they liked; every real request got 429 for over 90 s while /readyz said 200. A real server
process, each HTTP parser (h11 is what a plain ``serve`` extra gets; httptools comes with uvicorn[standard]),
a handful of raw sockets on 127.0.0.1, and the server's own answers as the synchronisation: a stalled
connection is known to hold a slot when /metrics counts it in flight, and its 408 arrives on its socket.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from servekit import encode, metric

REPO = Path(__file__).resolve().parents[2]
#: Deadlines of the server under test (seconds): long enough that every step of a phase, on a loaded machine,
#: happens while its stalled clients still hold their slots; the test waits about this long once per parser.
HEADER_S = BODY_S = 10.0
QUEUE = 3
#: Longest the test waits for any one answer (a generous bound; nothing here should take more than seconds).
PATIENCE_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _stalled_body(port: int) -> tuple[socket.socket, float]:
    """A client that sends its headers and 2 bytes of a 100000-byte body, then waits; (socket, when it sent)."""
    s = _connect(port)
    s.sendall(b"POST /v1/stylize?emotion=happy HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
              b"Content-Length: 100000\r\n\r\n\x89P")
    return s, time.monotonic()


def _stalled_headers(port: int) -> tuple[socket.socket, float]:
    """A client that sends half of its headers, then waits."""
    s = _connect(port)
    s.sendall(b"POST /v1/stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
    return s, time.monotonic()


def _answer(s: socket.socket) -> bytes:
    """Everything the server sends on ``s`` until it closes the connection."""
    data = b""
    with s:
        while chunk := s.recv(65536):
            data += chunk
    return data


def _wait(what: str, check, proc: subprocess.Popen, limit: float = PATIENCE_S) -> None:  # noqa: ANN001
    """Poll the server until ``check()`` holds (its own state, read over HTTP)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.02)
    pytest.fail(f"{what}: not within {limit:.0f} s")


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_stalled_clients_get_408_and_real_requests_are_served(mtcnn_bundle: Path, astronaut: np.ndarray,
                                                              tmp_path: Path, http: str) -> None:
    if http == "httptools" and importlib.util.find_spec("httptools") is None:
        pytest.skip("httptools is not installed (uvicorn[standard])")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "emostyle_rt.cli", "serve", "--bundle", str(mtcnn_bundle), "--port", str(port),
         "--queue", str(QUEUE), "--max-batch", "1", "--http", http, "--header-timeout", str(HEADER_S),
         "--body-timeout", str(BODY_S), "-q"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TMPDIR": str(tmp_path)},
        start_new_session=True)  # its own process group, stopped whole below
    png = encode(cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA))
    client = httpx.Client(base_url=url, timeout=PATIENCE_S)
    real = {"content": png, "headers": {"content-type": "image/png"}}

    def in_flight() -> float:
        return metric(client.get("/metrics").text, "emostyle_requests_in_flight")

    try:
        _wait("ready", lambda: client.get("/readyz").status_code == 200, proc, limit=180)

        # 1. The queue filled by stalled uploads, and stalled or silent connections besides: /readyz says busy,
        #    a real request gets 429 at once; then each stalled client gets its 408, the silent one is closed.
        bodies = [_stalled_body(port) for _ in range(QUEUE)]
        heads = [_stalled_headers(port) for _ in range(2)]
        silent = (_connect(port), time.monotonic())
        _wait("stalled uploads admitted", lambda: in_flight() == QUEUE, proc)
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "busy", ready.text
        assert ready.json()["admitted"] == QUEUE and int(ready.headers["retry-after"]) >= 1
        busy = client.post("/v1/stylize?emotion=happy", **real)
        assert busy.status_code == 429 and busy.json()["error"] == "ServiceBusyError"
        for s, sent in bodies:
            got = _answer(s)
            took = time.monotonic() - sent
            assert got.startswith(b"HTTP/1.1 408 "), got[:200]
            head, _, body = got.partition(b"\r\n\r\n")
            assert b"connection: close" in head.lower()
            assert json.loads(body)["error"] == "RequestTimeoutError" and b"--body-timeout" in body
            assert took >= BODY_S * 0.95, f"408 after {took:.2f} s, before the {BODY_S} s deadline"
        for s, sent in heads:
            got = _answer(s)
            took = time.monotonic() - sent
            assert got.startswith(b"HTTP/1.1 408 ") and b"--header-timeout" in got, got[:200]
            assert took >= HEADER_S * 0.95, f"408 after {took:.2f} s, before the {HEADER_S} s deadline"
        assert _answer(silent[0]) == b""  # sent nothing: closed without an answer
        assert time.monotonic() - silent[1] >= HEADER_S * 0.95
        # Their slots are free again: the 408 went out after the slot was given back.
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text
        assert client.post("/v1/stylize?emotion=happy", **real).status_code == 200

        # 2. Some slots held by stalled uploads: real requests are served meanwhile, /readyz says ready; a client
        #    that hangs up frees its slot at once.
        held = [_stalled_body(port) for _ in range(QUEUE - 1)]
        _wait("stalled uploads admitted", lambda: in_flight() == QUEUE - 1, proc)
        assert client.get("/readyz").status_code == 200
        for _ in range(3):
            r = client.post("/v1/stylize?emotion=happy", **real)
            assert r.status_code == 200 and r.headers["x-emotion"] == "happy"
        for s, _ in held:
            s.close()
        _wait("slots freed by hung-up clients", lambda: in_flight() == 0, proc)
        page = client.get("/metrics").text
        assert metric(page, "emostyle_requests_total", endpoint="stylize", status="408") == QUEUE
        assert metric(page, "emostyle_requests_total", endpoint="stylize", status="429") == 1
        assert metric(page, "emostyle_requests_total", endpoint="stylize", status="200") == 4
    finally:
        client.close()
        try:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    pass
            os.killpg(proc.pid, signal.SIGKILL)  # anything of its group left
        except ProcessLookupError:
            pass
        proc.wait()
