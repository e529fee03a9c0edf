#!/usr/bin/env bash
# The runtime on the OpenCV major the venv does NOT have: a fresh install gets OpenCV 5 (no
# CascadeClassifier, no Haar files), so this installs opencv-python-headless 4.x into a separate folder
# that shadows the venv's OpenCV on PYTHONPATH and runs the runtime's face and Stylizer tests with it
# (with 4.x the Haar tests run; with 5.x they skip). On a venv that has 4.x it installs 5.x instead.
# The 4.x it takes is the newest from pyproject's floor up; scripts/check_floors.sh runs the floor itself.
# Needs a package index. Usage: bash scripts/check_opencv_other.sh [extra pytest args]
# Set EMOSTYLE_TEST_BUNDLE to a bundle with a face detector to skip the demo export.
set -euo pipefail
cd "$(dirname "$0")/.."
have=$(.venv/bin/python -c "import cv2; print(cv2.__version__.split('.')[0])")
floor=$(.venv/bin/python scripts/floors.py --all | sed -n 's/^opencv-python-headless==//p')
if [ "$have" = "4" ]; then want=5; spec="opencv-python-headless>=5,<6"; else want=4; spec="opencv-python-headless>=$floor,<5"; fi
dest="${EMOSTYLE_OPENCV_OTHER_DIR:-${TMPDIR:-/tmp}/emostyle-opencv$want}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$dest" "$spec"
PYTHONPATH="$dest" .venv/bin/python -c \
    "import cv2, sys; v = cv2.__version__; sys.exit(f'got OpenCV {v}') if not v.startswith('$want') else print('OpenCV', v)"
PYTHONPATH="$dest" .venv/bin/python -m pytest -p no:cacheprovider -m "not slow" -q \
    tests/runtime/test_mtcnn.py tests/runtime/test_faces.py tests/runtime/test_stylizer.py \
    tests/runtime/test_slim_import.py "$@"
