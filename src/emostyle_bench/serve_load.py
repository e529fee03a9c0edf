"""Load test of ``emostyle serve`` on this machine (localhost): throughput, latency, batching gain, bad requests.

    python -m emostyle_bench.serve_load --bundle bundles/demo              # 200 requests per phase (~8 min on 2 cores)
    python -m emostyle_bench.serve_load --bundle bundles/demo --requests 40 --chunks 1 --bad 2 --json out.json
    python -m emostyle_bench.serve_load --bundle bundles/demo --size 1280x720 --concurrency 8,1   # e.g. on a GPU

A real server (``python -m emostyle_rt.cli serve``, one uvicorn process, default
batching: --max-batch 8, --max-wait-ms 5) is started on a free localhost port.
``--requests`` 256x256 JPEG photos (crops of scikit-image's real photos, different
from each other) are sent by a bounded asyncio client (httpx) at each
``--concurrency``; every answer must be a 200 with an image of the right size and
an X-Emotion header, or it counts as an error. The same photos, decoded, go
through an in-process ``Stylizer.stylize`` one after the other (the baseline: no
HTTP, no decoding or encoding). The photos are split into ``--chunks`` slices;
each slice goes through every phase in turn (the order rotating from slice to
slice), so that the phases share the machine's load as it drifts on a shared
machine: throughput is each phase's requests over its total time, ratios the
median of the per-slice ratios, latency percentiles over all requests. The mean
batch size of each phase comes from the server's /metrics. CPU time per image
(the server process, and this client apart; the baseline's own) is reported too:
on a machine shared with other jobs it moves much less than wall time.

Then the bad-request barrage (``--bad`` rounds of: not an image, a truncated JPEG,
a real PNG decompression bomb, a body over --max-body declared and streamed
without Content-Length, an unknown emotion, a wrong Content-Type, an oversized
multipart upload), 8 at a time: each must get a 4xx JSON error naming the problem,
the server must stay up, and its resident memory (VmRSS) must come back to within
50 MB of what it was before the barrage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, AsyncIterator

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]  # the source checkout (this file is src/emostyle_bench/serve_load.py)


def photos(n: int, width: int, height: int) -> list[np.ndarray]:
    """``n`` different real photos of ``width`` x ``height``: shifted crops of scikit-image's photos, resized."""
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        side = int(min(h, w) * (0.7 + 0.3 * ((i * 7) % 10) / 10))
        y, x = (i * 37) % (h - side + 1), (i * 53) % (w - side + 1)
        out.append(np.ascontiguousarray(cv2.resize(src[y:y + side, x:x + side], (width, height),
                                                   interpolation=cv2.INTER_AREA)))
    return out


def jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def png_bomb(side: int = 20000) -> bytes:
    """A real PNG of ``side`` x ``side`` black RGB pixels: ~1.2 GB decoded from about a megabyte."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    z = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    idat = b"".join(z.compress(row * 100) for _ in range(side // 100)) + z.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of process ``pid`` and its live children (``--workers N``: uvicorn's
    worker processes), seconds (Linux /proc)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
            fields = rest.split()
        except OSError:  # a process that ended meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent's pid
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric(text: str, name: str) -> float:
    """Sum of the samples called ``name`` in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def load(url: str, bodies: list[bytes], concurrency: int, shape: tuple[int, int],
               server_pid: int | None = None) -> dict[str, Any]:
    """Send every body once, ``concurrency`` at a time; latencies, throughput, errors, batches, CPU time
    of the server (``server_pid``) and of this client."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        before = (await client.get("/metrics")).text
        queue = list(enumerate(bodies))

        async def worker() -> None:
            while queue:
                _, body = queue.pop()
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/stylize", content=body, headers={"content-type": "image/jpeg"})
                    ok = r.status_code == 200 and "x-emotion" in r.headers
                    if ok:
                        img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
                        ok = img is not None and img.shape[:2] == shape
                    if not ok:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                lat.append(time.perf_counter() - t)

        server_cpu = cpu_seconds(server_pid) if server_pid else 0.0
        client_cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - started
        client_cpu = time.process_time() - client_cpu
        server_cpu = (cpu_seconds(server_pid) if server_pid else 0.0) - server_cpu
        after = (await client.get("/metrics")).text
    batches = metric(after, "emostyle_batch_size_count") - metric(before, "emostyle_batch_size_count")
    images = metric(after, "emostyle_batch_size_sum") - metric(before, "emostyle_batch_size_sum")
    return {"concurrency": concurrency, "requests": len(bodies), "errors": len(errors), "error_samples": errors[:3],
            "wall_s": wall, "throughput": len(bodies) / wall, "latencies": lat, "batches": batches,
            "batched_images": images, "cpu_s": server_cpu, "client_cpu_s": client_cpu}


def in_process(bundle: str, images: list[np.ndarray], st: Any) -> dict[str, Any]:
    """The baseline: the same photos through ``Stylizer.stylize``, one after the other, in this process."""
    lat = []
    cpu = time.process_time()
    started = time.perf_counter()
    for im in images:
        t = time.perf_counter()
        st.stylize(im)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return {"requests": len(images), "wall_s": wall, "throughput": len(images) / wall, "latencies": lat,
            "cpu_s": time.process_time() - cpu}


async def _chunks(total: int, size: int = 1 << 20) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"\xff\xd8" + b"\0" * (n - 2) if sent == n else b"\0" * n


async def barrage(url: str, good: bytes, rounds: int, max_body: int, pid: int) -> dict[str, Any]:
    """Bad requests of every kind, 8 at a time: each a 4xx JSON error; RSS before, peak and after."""
    import httpx

    bomb = png_bomb()
    kinds: dict[str, dict[str, Any]] = {
        "not an image": dict(content=b"this is not an image" * 50, headers={"content-type": "image/jpeg"}),
        "truncated": dict(content=good[: len(good) // 2], headers={"content-type": "image/jpeg"}),
        "decompression bomb": dict(content=bomb, headers={"content-type": "image/png"}),
        "huge body (declared)": dict(content=b"\0" * (max_body + 1), headers={"content-type": "image/jpeg"}),
        "huge body (streamed)": dict(content=None, headers={"content-type": "image/jpeg"}),
        "wrong emotion": dict(content=good, headers={"content-type": "image/jpeg"}, params={"emotion": "joy"}),
        "wrong content type": dict(content=good, headers={"content-type": "text/plain"}),
        "huge multipart": dict(files={"image": ("x.jpg", b"\0" * (max_body + 1), "image/jpeg")}),
    }
    seen: dict[str, set[tuple[int, str]]] = {k: set() for k in kinds}
    failures: list[str] = []
    peak = before = rss_mb(pid)
    sem = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        async def one(kind: str) -> None:
            nonlocal peak
            req = dict(kinds[kind])
            if req.get("content", 0) is None:
                req["content"] = _chunks(max_body + (4 << 20))
            async with sem:
                try:
                    r = await client.post("/v1/stylize", **req)
                    err = r.json()
                    seen[kind].add((r.status_code, err.get("error", "?")))
                    if not (400 <= r.status_code < 500 and err.get("message")):
                        failures.append(f"{kind}: {r.status_code} {r.text[:200]}")
                except (httpx.HTTPError, ValueError) as exc:
                    # a server may close the connection after refusing a body it did not read: record it
                    seen[kind].add((0, type(exc).__name__))
                peak = max(peak, rss_mb(pid))

        await asyncio.gather(*[one(k) for _ in range(rounds) for k in kinds])
        up = (await client.get("/healthz")).status_code == 200
        ok = (await client.post("/v1/stylize", content=good, headers={"content-type": "image/jpeg"})).status_code
    time.sleep(2)
    after = rss_mb(pid)
    return {"rounds": rounds, "requests": rounds * len(kinds), "answers": {k: sorted(v) for k, v in seen.items()},
            "failures": failures, "still_up": up and ok == 200, "rss_before_mb": before, "rss_peak_mb": peak,
            "rss_after_mb": after, "rss_delta_mb": after - before}


def start_server(bundle: str, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "emostyle_rt.cli", "serve", "--bundle", bundle, "--port", str(port), "-q", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO)
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not get ready in 180 s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=None, help="bundle with a face detector (emostyle-export --demo; default: as emostyle's: $EMOSTYLE_BUNDLE, else bundles/demo)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", default="8,1", help="client concurrencies to run, comma-separated")
    p.add_argument("--size", default="256x256", help="photo size WIDTHxHEIGHT")
    p.add_argument("--chunks", type=int, default=5,
                   help="slices of the photos; each goes through every phase in turn (default 5)")
    p.add_argument("--bad", type=int, default=20, help="rounds of the bad-request barrage (0: none)")
    p.add_argument("--server-args", default="", help="extra `emostyle serve` options, e.g. '--max-batch 16'")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    from emostyle_rt.console import default_bundle

    args.bundle = str(default_bundle(args.bundle))  # --bundle, $EMOSTYLE_BUNDLE, bundles/demo (or an old engines/demo)
    width, height = (int(v) for v in args.size.lower().split("x"))
    levels = [int(c) for c in args.concurrency.split(",")]
    images = photos(args.requests, width, height)
    bodies = [jpeg(im) for im in images]
    decoded = [cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
               for b in bodies]  # the baseline styles exactly what the server receives

    from emostyle_rt import Stylizer

    st = Stylizer(args.bundle)
    st.preload()
    in_process(args.bundle, decoded[:8], st)  # warm-up
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args.bundle, port, args.server_args.split())
    results: dict[str, Any] = {"size": args.size, "requests": args.requests, "chunks": [], "cores": os.cpu_count(),
                               "load_avg_start": os.getloadavg(), "server_args": args.server_args}
    phases = ["in_process", *(f"c{c}" for c in levels)]
    try:
        asyncio.run(load(url, bodies[:16], max(levels), (height, width)))  # warm-up
        bounds = np.linspace(0, args.requests, args.chunks + 1).astype(int)
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            row: dict[str, Any] = {}
            for phase in phases[i % len(phases):] + phases[:i % len(phases)]:  # rotate the order
                if phase == "in_process":
                    row[phase] = in_process(args.bundle, decoded[a:b], st)
                else:
                    row[phase] = asyncio.run(load(url, bodies[a:b], int(phase[1:]), (height, width), server.pid))
            results["chunks"].append(row)
            print(json.dumps({"chunk": i + 1, **{k: round(d["throughput"], 3) for k, d in row.items()}}), flush=True)
        if args.bad:
            max_body = 32 << 20
            results["barrage"] = asyncio.run(barrage(url, bodies[0], args.bad, max_body, server.pid))
    finally:
        server.send_signal(signal.SIGTERM)
        results["server_exit"] = server.wait(60)
    results["load_avg_end"] = os.getloadavg()
    summary = summarize(results, levels)
    results["summary"] = summary
    print(report(results, levels))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    errors = sum(row[f"c{c}"]["errors"] for row in results["chunks"] for c in levels)
    bad = results.get("barrage", {})
    return 1 if errors or bad.get("failures") or bad.get("still_up") is False else 0


def summarize(results: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    """Per phase: requests over total time, latency percentiles over all requests; ratios: median of the
    per-chunk ratios (each chunk's phases ran back to back, under about the same load)."""
    chunks = results["chunks"]

    def phase(key: str) -> dict[str, Any]:
        lat = [x for c in chunks for x in c[key]["latencies"]]
        n = sum(c[key]["requests"] for c in chunks)
        d = {"throughput": n / sum(c[key]["wall_s"] for c in chunks),
             "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
             "cpu_ms_per_image": 1000 * sum(c[key]["cpu_s"] for c in chunks) / n}
        if key != "in_process":
            d["client_cpu_ms_per_image"] = 1000 * sum(c[key]["client_cpu_s"] for c in chunks) / n
        if key != "in_process":
            batches = sum(c[key]["batches"] for c in chunks)
            d["mean_batch"] = sum(c[key]["batched_images"] for c in chunks) / batches if batches else float("nan")
            d["errors"] = sum(c[key]["errors"] for c in chunks)
            d["vs_in_process"] = statistics.median(c[key]["throughput"] / c["in_process"]["throughput"] for c in chunks)
            d["vs_in_process_per_chunk"] = [round(c[key]["throughput"] / c["in_process"]["throughput"], 3)
                                            for c in chunks]
        return d

    out: dict[str, Any] = {"in_process": phase("in_process")}
    for c in levels:
        out[f"c{c}"] = phase(f"c{c}")
    if len(levels) > 1:
        hi, lo = f"c{max(levels)}", f"c{min(levels)}"
        ratios = [c[hi]["throughput"] / c[lo]["throughput"] for c in chunks]
        out["batching_gain"] = statistics.median(ratios)
        out["batching_gain_per_chunk"] = [round(r, 3) for r in ratios]
    return out


def report(results: dict[str, Any], levels: list[int]) -> str:
    s = results["summary"]
    lines = [f"\n{results['requests']} requests of {results['size']} JPEG photos, {len(results['chunks'])} chunk(s), "
             f"{results['cores']} cores, load {results['load_avg_start'][0]:.1f} -> {results['load_avg_end'][0]:.1f}",
             "", "| | throughput (img/s) | x in-process | p50 (ms) | p99 (ms) | mean batch | errors "
                 "| CPU ms / image (server + client) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| in-process Stylizer.stylize | {s['in_process']['throughput']:.2f} | 1.00 | "
             f"{s['in_process']['p50_ms']:.0f} | {s['in_process']['p99_ms']:.0f} | | | "
             f"{s['in_process']['cpu_ms_per_image']:.0f} |"]
    for c in levels:
        d = s[f"c{c}"]
        lines.append(f"| server, {c} concurrent | {d['throughput']:.2f} | {d['vs_in_process']:.2f} | {d['p50_ms']:.0f} | "
                     f"{d['p99_ms']:.0f} | {d['mean_batch']:.2f} | {d['errors']} | "
                     f"{d['cpu_ms_per_image']:.0f} + {d['client_cpu_ms_per_image']:.0f} |")
    if "batching_gain" in s:
        lines.append(f"\nconcurrency {max(levels)} vs {min(levels)}: {s['batching_gain']:.2f}x throughput "
                     f"(per chunk {s['batching_gain_per_chunk']})")
    for c in levels:
        lines.append(f"server at {c} vs in-process, per chunk: {s[f'c{c}']['vs_in_process_per_chunk']}")
    b = results.get("barrage")
    if b:
        lines.append(f"\nbad requests: {b['requests']} ({b['rounds']} rounds), failures {len(b['failures'])}, "
                     f"still up: {b['still_up']}; RSS {b['rss_before_mb']:.0f} MB before, {b['rss_peak_mb']:.0f} peak, "
                     f"{b['rss_after_mb']:.0f} after ({b['rss_delta_mb']:+.1f} MB)")
        for k, v in b["answers"].items():
            lines.append(f"  {k}: {v}")
    lines.append(f"server exit status after SIGTERM: {results['server_exit']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
