"""Where the fast mode's InstanceNorm statistics come from, and what that costs in fidelity.

    python studies/tiling_stats/tiling_stats.py --bundle DIR --size 4000x3000
    python studies/tiling_stats/tiling_stats.py --bundle DIR --size 4000x3000 --photo collage --out result.json

The fast mode runs the tile graph on full-resolution tiles with statistics it
did not compute on the whole image. This study runs the untiled graph once for
reference, then the tile graph (tiles of 1160 px, halo included, so only the
statistics differ) with statistics from:

- the whole image (the exact statistics: a check that the tiling itself adds
  nothing but float error);
- a copy downscaled (area interpolation) to a long side of 1024, 1536 and 2048 px
  (the issue's first design);
- :func:`emostyle_rt.tiling.stats_sample`: full-resolution crops from a regular
  grid, side by side, about 1024 and 1536 px on the long side (what the fast
  mode does).

Printed per row: PSNR and max |diff| against untiled, and the seconds the
statistics took. ``--photo``: ``mosaic`` (four scikit-image photos resized to
the size: little detail at full resolution, the hard case for a downscaled
copy) or ``collage`` (native-resolution crops of twelve scikit-image photos:
detail at every scale). Needs memory for the untiled run (about 10 GB at 12 MP).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from emostyle_bench.images import mosaic as photo

#: Window of the tile runs (incl. the halo): large, so that the tiles are few and only the statistics vary.
WINDOW = 1160


def collage(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A width x height RGB collage of native-resolution crops of real photos (no resizing): detail at every scale."""
    from skimage import data

    gray = [data.camera(), data.brick(), data.grass(), data.gravel()]
    srcs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina(), data.hubble_deep_field(),
            data.immunohistochemistry(), data.colorwheel(), *[np.dstack([g] * 3) for g in gray]]
    srcs = [np.ascontiguousarray(s[..., :3]) for s in srcs]
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3), np.uint8)
    y = 0
    while y < height:
        x, row_h = 0, int(rng.integers(300, 520))
        while x < width:
            s = srcs[int(rng.integers(len(srcs)))]
            h, w = min(row_h, s.shape[0], height - y), min(int(rng.integers(300, 640)), s.shape[1], width - x)
            oy, ox = int(rng.integers(0, s.shape[0] - h + 1)), int(rng.integers(0, s.shape[1] - w + 1))
            out[y:y + h, x:x + w] = s[oy:oy + h, ox:ox + w]
            x += w
        y += row_h
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python studies/tiling_stats/tiling_stats.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="a bundle with tiled graphs")
    p.add_argument("--size", default="4000x3000", help="photo size WxH (default 4000x3000)")
    p.add_argument("--photo", choices=("mosaic", "collage"), default="mosaic", help="the test photo (default mosaic)")
    p.add_argument("--emotion", default="angry", help="the style to run (default angry)")
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    args = p.parse_args(argv)

    from emostyle_export.parity import psnr
    from emostyle_rt.backends import make_runner
    from emostyle_rt.imaging.io import pad_to_multiple
    from emostyle_rt.manifest import load_manifest
    from emostyle_rt.tiling import TiledStyle, stats_sample

    width, height = (int(v) for v in args.size.lower().split("x"))
    manifest = load_manifest(args.bundle)
    style = manifest.style_for(args.emotion)
    if style.tiled is None:
        p.error(f"style {style.style_id} has no tiled graphs (emostyle-export --bundle DIR --tiled)")
    img = pad_to_multiple(collage(width, height) if args.photo == "collage" else photo(width, height), 4)
    whole = make_runner(manifest.path(style.onnx), provider="cpu")
    ref = whole.run({style.input_name: img[None]})[style.output_name][0]
    whole.close()
    tiled = TiledStyle(manifest.root, style, provider="cpu")
    align = tiled.spec.align

    def downscaled(side: int) -> np.ndarray:
        s = side / max(img.shape[:2])
        h, w = (round(d * s) // align * align for d in img.shape[:2])
        return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)

    sources = [("whole image (exact)", lambda: img)]
    smaller = [s for s in (1024, 1536, 2048) if s < max(img.shape[:2])]  # a sample that is the image is exact
    sources += [(f"downscaled copy, {s} px", lambda s=s: downscaled(s)) for s in smaller]
    sources += [(f"full-resolution crop sample, {s} px", lambda s=s: stats_sample(img, s, align))
                for s in smaller if s <= 1536]
    rows = []
    for name, make in sources:
        t0 = time.perf_counter()
        source = make()
        stats = tiled.exact_statistics(source, strip_rows=256, spool_ram=1 << 62)
        took = time.perf_counter() - t0
        out = tiled.run_fast(img, window=(WINDOW, WINDOW), stats=stats)
        rows.append({"statistics": name, "source_px": list(source.shape[:2]), "seconds": round(took, 2),
                     "psnr_db": round(min(psnr(out, ref), 999.0), 2), "max_abs_diff": int(np.abs(out.astype(int) - ref).max())})
        print(json.dumps(rows[-1]), flush=True)
    tiled.close()
    result = {"bundle": str(args.bundle), "style": style.style_id, "size": args.size, "photo": args.photo,
              "window": WINDOW, "cpus": os.cpu_count(), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
