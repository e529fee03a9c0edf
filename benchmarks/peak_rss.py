"""Peak RSS of the runtime while stylizing many photos over all seven emotions.

    python benchmarks/peak_rss.py --bundle engines/demo --photos 50 --size 1280x720

Runs in this process only what a user's process would: ``emostyle_rt`` and
OpenCV (plus scikit-image for the photo: its astronaut, resized and shifted so
no two are equal). Prints one JSON line: photos, size, seconds, RSS after import, after
opening the bundle, and the peak (``VmHWM``, Linux).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _vm(field: str) -> float:
    """A ``/proc/self/status`` memory field in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="engines/demo")
    p.add_argument("--photos", type=int, default=50)
    p.add_argument("--size", default="1280x720", help="WxH of each photo")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))

    import numpy as np

    from emostyle_rt import Stylizer

    rss_import = _vm("VmRSS")
    st = Stylizer(args.bundle)
    rss_open = _vm("VmRSS")
    import cv2
    from skimage import data

    base = cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_LINEAR)
    t0 = time.perf_counter()
    for i in range(args.photos):
        photo = np.roll(base, 7 * i, axis=1)
        st.stylize(photo, emotion=st.labels[i % len(st.labels)])
    out = {"photos": args.photos, "size": f"{w}x{h}", "seconds": round(time.perf_counter() - t0, 1),
           "rss_after_import_mb": round(rss_import), "rss_after_open_mb": round(rss_open),
           "peak_rss_mb": round(_vm("VmHWM")), "rss_end_mb": round(_vm("VmRSS"))}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
