"""Peak RSS and style time of the runtime while stylizing many photos over all seven emotions.

    python studies/peak_rss/peak_rss.py --bundle bundles/demo --photos 50 --size 1280x720
    python studies/peak_rss/peak_rss.py --cpu-memory session --photos 14          # another CPU memory strategy
    python studies/peak_rss/peak_rss.py --paired shared,session --pairs 5 --photos 14
    python studies/peak_rss/peak_rss.py --backend onnxruntime --photos 50      # style graphs in onnxruntime, not OpenVINO
    python studies/peak_rss/peak_rss.py --photos 50 --out rss-50.json --figure rss-50.png   # RSS after every photo

Runs in this process only what a user's process would: ``emostyle_rt`` and
OpenCV (plus scikit-image for the photo: its astronaut, resized and shifted so
no two are equal). Prints one JSON line: photos, size, CPU memory strategy,
seconds, the median style time per photo, RSS after import, after opening the
bundle, and the peak (``VmHWM``, Linux); ``rss_per_photo_mb``: RSS after each
photo, and ``growth_after_first_pass_mb``: RSS after the last photo less RSS
after the first pass over the seven emotions (every graph loaded by then), the
figure that says whether memory grows with the photos.

``--paired A,B`` compares two CPU memory strategies (``$EMOSTYLE_CPU_MEMORY``:
shared, shrink, session) in fresh subprocesses run alternately A, B, A, B, ...
(so load from other processes hits both alike) and prints each run, the medians
and the ratio B/A of the median per-photo style times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _vm(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(bundle: str, photos: int, w: int, h: int, backend: str = "auto") -> dict:
    """Stylize ``photos`` photos of ``w`` x ``h`` cycling through the emotions; times and memory."""
    import numpy as np

    from emostyle_rt import Stylizer

    rss_import = _vm("VmRSS")
    st = Stylizer(bundle, backend=backend)
    rss_open = _vm("VmRSS")
    import cv2
    from skimage import data

    base = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_LINEAR)
    t0 = time.perf_counter()
    per_photo, rss = [], []
    for i in range(photos):
        photo = np.roll(base, 7 * i, axis=1)
        t = time.perf_counter()
        st.stylize(photo, emotion=st.labels[i % len(st.labels)])
        per_photo.append(time.perf_counter() - t)
        rss.append(round(_vm("VmRSS"), 1))
    first = len(st.labels) - 1  # the photo that ends the first pass over the emotions
    engines = sorted({r.name for r in st._styles.values()})
    return {"photos": photos, "size": f"{w}x{h}", "backend": backend, "style_engines": engines, "cpu_memory": os.environ.get("EMOSTYLE_CPU_MEMORY") or "shared",
            "seconds": round(time.perf_counter() - t0, 1),
            "median_photo_s": round(statistics.median(per_photo), 3),
            # the first pass over the 7 emotions loads the graphs; later photos are the steady state
            "median_photo_after_first_pass_s": round(statistics.median(per_photo[7:] or per_photo), 3),
            "rss_after_import_mb": round(rss_import), "rss_after_open_mb": round(rss_open),
            "peak_rss_mb": round(_vm("VmHWM")), "rss_end_mb": round(_vm("VmRSS")),
            "growth_after_first_pass_mb": round(rss[-1] - rss[min(first, len(rss) - 1)], 1),
            "rss_per_photo_mb": rss, "photo_s": [round(x, 3) for x in per_photo]}


def figure(row: dict, path: str) -> None:
    """RSS after each photo (and the peak), one line: the 50-photo study's picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rss = row["rss_per_photo_mb"]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
    ax.plot(range(1, len(rss) + 1), rss, marker=".", label="RSS after the photo")
    ax.axhline(row["peak_rss_mb"], color="grey", linestyle="--", label=f"peak (VmHWM) {row['peak_rss_mb']} MB")
    ax.axvline(7, color="grey", linestyle=":", label="first pass over the 7 emotions ends")
    ax.set_xlabel(f"photo ({row['size']}, emotions in turn)")
    ax.set_ylabel("MB")
    ax.set_ylim(0, row["peak_rss_mb"] * 1.15)
    ax.set_title(f"RSS over {row['photos']} photos, style graphs on {', '.join(row['style_engines'])}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)


def paired(args: argparse.Namespace) -> dict:
    """Alternating fresh-process runs of two CPU memory strategies; medians and ratio."""
    a, b = args.paired.split(",")
    runs: dict[str, list[dict]] = {a: [], b: []}
    for i in range(args.pairs):
        for mode in ((a, b) if i % 2 == 0 else (b, a)):  # ABBA order: drift hits both alike
            cmd = [sys.executable, __file__, "--bundle", args.bundle, "--photos", str(args.photos), "--size", args.size,
                   "--backend", args.backend]
            out = subprocess.run(cmd, env={**os.environ, "EMOSTYLE_CPU_MEMORY": mode}, capture_output=True, text=True,
                                 check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[mode].append(row)
            print(json.dumps(row), flush=True)

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    key = "median_photo_after_first_pass_s"
    summary = {"pairs": args.pairs, "photos": args.photos, "size": args.size,
               **{f"{m}_{k}": med(m, k) for m in (a, b) for k in (key, "seconds", "peak_rss_mb")},
               f"ratio_{b}_over_{a}": round(med(b, key) / med(a, key), 3),
               "spread_pct": {m: round((max(r[key] for r in runs[m]) - min(r[key] for r in runs[m])) / med(m, key) * 100, 1)
                              for m in (a, b)}}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="bundles/demo")
    p.add_argument("--photos", type=int, default=50)
    p.add_argument("--size", default="1280x720", help="WxH of each photo")
    p.add_argument("--cpu-memory", choices=("shared", "shrink", "session"), default=None,
                   help="CPU memory strategy for this run (sets EMOSTYLE_CPU_MEMORY)")
    p.add_argument("--backend", default="auto", help="Stylizer backend (auto: OpenVINO for style graphs where installed)")
    p.add_argument("--paired", default=None, metavar="A,B", help="compare two strategies in alternating subprocesses")
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the JSON result here")
    p.add_argument("--figure", default=None, help="write a picture of RSS after each photo here (PNG)")
    args = p.parse_args(argv)
    if args.paired:
        print(json.dumps(paired(args)))
        return 0
    if args.cpu_memory:
        os.environ["EMOSTYLE_CPU_MEMORY"] = args.cpu_memory
    w, h = (int(v) for v in args.size.lower().split("x"))
    row = measure(args.bundle, args.photos, w, h, args.backend)
    print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(row, indent=1) + "\n")
    if args.figure:
        figure(row, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
