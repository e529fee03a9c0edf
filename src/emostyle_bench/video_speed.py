"""Video pipeline speed and memory on this machine: ``emostyle_rt.video.stylize_video`` file to file.

    python -m emostyle_bench.video_speed --bundle bundles/demo                       # 640x360 and 1280x720
    python -m emostyle_bench.video_speed --bundle bundles/demo --sizes 640x360 --frames 30 --batch 1,2,4
    python -m emostyle_bench.video_speed --bundle bundles/demo --rss --sizes 160x90 --seconds 300
    python -m emostyle_bench.video_speed --bundle bundles/demo --decisions --sizes 640x360 --frames 150  # lookahead

Speed: a synthetic clip (the astronaut photo panning, H.264 + AAC) is styled file
to file (decode, face tracking and classification on schedule, style, encode,
audio copy) and, separately, the same decoded frames go through the style network
alone (``Stylizer.stylize(frame, emotion=...)``, one after the other). The two are
alternated ``--rounds`` times and medians reported (a shared machine drifts): both
frame rates, the style network's share of the file-to-file wall time and what the
rest adds, in wall time and in this process's CPU time (which other jobs on a
shared machine disturb much less: the style network keeps every core busy, so CPU
time added is wall time added on a quiet machine). ``--rss``: the process's resident memory sampled every
frame of a long clip; prints it at each minute of video. ``--parts``: each
stage alone, in milliseconds per frame, one thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def synthetic_clip(path: Path, width: int, height: int, frames: int, fps: int = 30) -> Path:
    """The astronaut photo panning and zooming slowly (a face that moves), with a silent AAC track."""
    import av
    from skimage import data

    photo = data.astronaut()
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps, options={"preset": "veryfast", "crf": "20"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus = out.add_stream("aac", rate=48000)
        aus.layout = "mono"
        for i in range(frames):
            s = 0.85 + 0.1 * np.sin(i / 90)
            cw, ch = int(512 * s), int(512 * s * height / width)
            x, y = int((512 - cw) * (0.5 + 0.5 * np.sin(i / 70))), int((512 - ch) * 0.1)
            img = cv2.resize(photo[y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_AREA)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            out.mux(vs.encode(f))
        out.mux(vs.encode())
        n = 48000 * frames // fps
        for k in range(0, n, 48000):
            af = av.AudioFrame.from_ndarray(np.zeros((1, min(48000, n - k)), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 48000, k
            out.mux(aus.encode(af))
        out.mux(aus.encode())
    return path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def speed(st, width: int, height: int, frames: int, batch: int, rounds: int, tmp: Path) -> dict[str, float]:
    """Style network alone vs file to file, alternated ``rounds`` times (medians: a shared machine drifts)."""
    import av

    from emostyle_rt.video import stylize_video

    src = synthetic_clip(tmp / f"in-{width}x{height}.mp4", width, height, frames)
    with av.open(str(src)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for e in st.labels:  # warm-up: load every graph, size the arena
        st.stylize(decoded[0], emotion=e)
    style, e2e, ratio, cpu = [], [], [], []
    for r in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        for f in decoded:
            st.stylize(f, emotion="happy")
        style_s, style_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        res = stylize_video(st, src, tmp / f"out-{width}x{height}-{batch}-{r}.mp4", batch=batch)
        e2e_s, e2e_cpu = time.perf_counter() - t, time.process_time() - c
        style.append(len(decoded) / style_s)
        e2e.append(res.frames / e2e_s)
        ratio.append(e2e_s / style_s)
        cpu.append(e2e_cpu / style_cpu)
    return {"frames": len(decoded), "style_fps": float(np.median(style)), "e2e_fps": float(np.median(e2e)),
            "share": 1 / float(np.median(ratio)), "overhead": float(np.median(ratio)) - 1,
            "spread": (min(ratio) - 1, max(ratio) - 1), "cpu_overhead": float(np.median(cpu)) - 1}


def decisions(st, width: int, height: int, frames: int, rounds: int, tmp: Path) -> dict[str, float]:
    """What the lookahead's analysis pass costs: the same file styled with ``decision="causal"`` and "lookahead",
    alternated ``rounds`` times (medians): wall and CPU time of each, and the analysis pass's share of the
    lookahead run's wall time."""
    from emostyle_rt.video import stylize_video

    src = synthetic_clip(tmp / f"dec-{width}x{height}.mp4", width, height, frames)
    stylize_video(st, src, tmp / "warm.mp4", decision="causal", overwrite=True)  # load the graphs once
    wall: dict[str, list[float]] = {"causal": [], "lookahead": []}
    cpu: dict[str, list[float]] = {"causal": [], "lookahead": []}
    share = []
    for r in range(rounds):
        for d in ("causal", "lookahead") if r % 2 == 0 else ("lookahead", "causal"):
            t, c = time.perf_counter(), time.process_time()
            res = stylize_video(st, src, tmp / f"dec-{d}-{r}.mp4", decision=d)
            wall[d].append(time.perf_counter() - t)
            cpu[d].append(time.process_time() - c)
            if d == "lookahead":
                share.append(res.analysis_seconds / res.wall_seconds)
    med = {d: float(np.median(v)) for d, v in wall.items()}
    return {"frames": frames, "causal_s": med["causal"], "lookahead_s": med["lookahead"],
            "wall_ratio": float(np.median(np.array(wall["lookahead"]) / np.array(wall["causal"]))),
            "cpu_ratio": float(np.median(np.array(cpu["lookahead"]) / np.array(cpu["causal"]))),
            "analysis_share": float(np.median(share))}


def parts(st, width: int, height: int, frames: int, tmp: Path) -> dict[str, float]:
    """Milliseconds per frame of each stage alone, one thread (less disturbed by other jobs than a whole run)."""
    import av

    from emostyle_rt.video import FaceTracker, TemporalOptions

    src = synthetic_clip(tmp / f"parts-{width}x{height}.mp4", width, height, frames)
    ms: dict[str, float] = {}
    t = time.perf_counter()
    with av.open(str(src)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    ms["decode + RGB"] = (time.perf_counter() - t) * 1000 / len(decoded)
    st.classify(decoded[0])
    t = time.perf_counter()
    found = [st.classify(f) for f in decoded]
    ms["detect + classify (each)"] = (time.perf_counter() - t) * 1000 / len(decoded)
    tr = FaceTracker()
    tr.reset(decoded[0], found[0].face)
    t = time.perf_counter()
    for f in decoded:
        tr.track(f)
    ms["track"] = (time.perf_counter() - t) * 1000 / len(decoded)
    st.stylize(decoded[0], emotion="happy")
    t = time.perf_counter()
    for f in decoded:
        st.stylize(f, emotion="happy")
    ms["style network"] = (time.perf_counter() - t) * 1000 / len(decoded)
    with av.open(str(tmp / "parts-out.mp4"), "w") as out:
        vs = out.add_stream("libx264", rate=30, options={"crf": "18", "preset": "veryfast"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        t = time.perf_counter()
        for i, f in enumerate(decoded):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            out.mux(vs.encode(vf))
        out.mux(vs.encode())
        ms["encode (x264 veryfast)"] = (time.perf_counter() - t) * 1000 / len(decoded)
    o = TemporalOptions()
    per = min(o.classify_every, max(1, round(o.classify_seconds * 30)))
    rest = ms["decode + RGB"] + ms["detect + classify (each)"] / per + ms["track"] + ms["encode (x264 veryfast)"]
    ms["rest per frame (classify every %d frames at 30 fps)" % per] = rest
    ms["rest / style network"] = rest / ms["style network"]
    return ms


def rss_run(st, width: int, height: int, seconds: int, tmp: Path) -> list[tuple[int, float]]:
    from emostyle_rt.video import stylize_video

    fps = 30
    src = synthetic_clip(tmp / "long.mp4", width, height, seconds * fps, fps)
    marks: list[tuple[int, float]] = []
    peak = [0.0]

    def progress(frame, total) -> None:  # noqa: ANN001
        peak[0] = max(peak[0], rss_mb())
        if (frame.index + 1) % (60 * fps) == 0:
            marks.append(((frame.index + 1) // (60 * fps), peak[0]))
            print(f"  minute {marks[-1][0]}: peak RSS {peak[0]:.1f} MB", flush=True)

    stylize_video(st, src, tmp / "long-out.mp4", progress=progress)
    return marks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="the bundle (default: as emostyle's: $EMOSTYLE_BUNDLE, else bundles/demo)")
    p.add_argument("--sizes", default="640x360,1280x720")
    p.add_argument("--frames", type=int, default=24, help="frames per size (default 24)")
    p.add_argument("--batch", default="1", help="comma-separated frames per style run to compare (default 1)")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two measurements (default 3)")
    p.add_argument("--rss", action="store_true", help="measure memory over a long clip instead of speed")
    p.add_argument("--parts", action="store_true", help="time each stage alone instead (ms per frame)")
    p.add_argument("--seconds", type=int, default=300, help="--rss: clip length in seconds (default 300)")
    p.add_argument("--decisions", action="store_true",
                   help="compare a file's causal and lookahead emotion decision instead (the analysis pass's cost)")
    args = p.parse_args(argv)
    from emostyle_rt.console import default_bundle

    args.bundle = str(default_bundle(args.bundle))  # --bundle, $EMOSTYLE_BUNDLE, bundles/demo (or an old engines/demo)
    import logging

    logging.basicConfig(level=logging.ERROR)
    from emostyle_rt import Stylizer

    st = Stylizer(args.bundle)
    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}; noisy if shared")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for size in args.sizes.split(","):
            w, h = map(int, size.split("x"))
            if args.parts:
                for k, v in parts(st, w, h, args.frames, tmp).items():
                    print(f"{w}x{h} {k}: {v:.1%}" if k.startswith("rest /") else f"{w}x{h} {k}: {v:.1f} ms", flush=True)
                continue
            if args.decisions:
                r = decisions(st, w, h, args.frames, args.rounds, tmp)
                print(f"{w}x{h}: {r['frames']} frames x {args.rounds} rounds (medians): causal {r['causal_s']:.2f} s, "
                      f"lookahead {r['lookahead_s']:.2f} s (x{r['wall_ratio']:.2f} wall, x{r['cpu_ratio']:.2f} CPU); "
                      f"the analysis pass is {r['analysis_share']:.0%} of the lookahead run", flush=True)
                continue
            if args.rss:
                print(f"RSS over {args.seconds} s of {w}x{h} at 30 fps:")
                marks = rss_run(st, w, h, args.seconds, tmp)
                if len(marks) >= 2:
                    print(f"  minute {marks[0][0]} -> {marks[-1][0]}: {marks[-1][1] - marks[0][1]:+.1f} MB")
                continue
            for b in map(int, args.batch.split(",")):
                r = speed(st, w, h, args.frames, b, args.rounds, tmp)
                print(f"{w}x{h} batch {b}: {r['frames']} frames x {args.rounds} rounds (medians): style network alone "
                      f"{r['style_fps']:.2f} fps, file to file {r['e2e_fps']:.2f} fps, style share {r['share']:.0%}, "
                      f"rest adds {r['overhead']:+.0%} (rounds {r['spread'][0]:+.0%}..{r['spread'][1]:+.0%}); "
                      f"CPU time: rest adds {r['cpu_overhead']:+.0%}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
