"""Face-detection recall and false positives: the bundle's MTCNN against OpenCV's Haar cascade.

On the synthetic set of ``tests/support/faces.py`` (faces cut from real photos, pasted at
20-400 px and up to +-30 degrees onto face-free real photos; some images hold two faces,
some none). Run from the repository root:

    python studies/face_recall/face_recall.py --bundle bundles/demo
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on sys.path (tests.support)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.faces import evaluate, synthetic_set  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Print recall and false positives of the bundle's MTCNN and of OpenCV's Haar cascade (where it exists)."""
    from emostyle_rt.detection.faces import HaarDetector, haar_available, make_detector
    from emostyle_rt.manifest import default_bundle, load_manifest

    p = argparse.ArgumentParser(prog="python studies/face_recall/face_recall.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="bundle with a face detector (default: as emostyle)")
    p.add_argument("--faces", type=int, default=64, help="photos with faces (default 64)")
    p.add_argument("--empty", type=int, default=16, help="photos without a face (default 16)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    samples = synthetic_set(args.faces, args.empty, seed=args.seed)
    detectors = {"mtcnn": make_detector("mtcnn", load_manifest(default_bundle(args.bundle)), provider="cpu")}
    if haar_available()[0]:
        detectors["haar"] = HaarDetector()
    for name, det in detectors.items():
        print(evaluate(name, det.detect, samples).row())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
