#!/usr/bin/env bash
# The runtime on OpenCV 5 (no CascadeClassifier, no Haar files): install opencv-python-headless 5.x into a
# separate folder that shadows the venv's OpenCV 4 on PYTHONPATH, and run the runtime's face and Stylizer tests
# with it (Haar tests skip). Needs PyPI. Usage: bash scripts/check_opencv5.sh [extra pytest args]
# Set EMOSTYLE_TEST_BUNDLE to a bundle with a face detector to skip the demo export.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${EMOSTYLE_OPENCV5_DIR:-${TMPDIR:-/tmp}/emostyle-opencv5}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target "$dest" \
    "opencv-python-headless>=5,<6"
PYTHONPATH="$dest" .venv/bin/python -c \
    "import cv2; assert cv2.__version__.startswith('5'), cv2.__version__; print('OpenCV', cv2.__version__)"
PYTHONPATH="$dest" .venv/bin/python -m pytest -p no:cacheprovider -m "not slow" -q \
    tests/runtime/test_mtcnn.py tests/runtime/test_faces.py tests/runtime/test_stylizer.py \
    tests/runtime/test_slim_import.py "$@"
