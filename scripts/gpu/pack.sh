#!/usr/bin/env bash
# Prepare here (no GPU needed) everything the GPU check carries to the GPU machine: docs/gpu-check.md.
#
#   bash scripts/gpu/pack.sh [SRC_BUNDLE]     # default bundles/demo (bash scripts/demo.sh makes it)
#   SKIP_WHEELS=1 bash scripts/gpu/pack.sh    # the bundle only (the wheel parts are already in .dev/)
#
#  1. .gpucheck/bundle: SRC's "happy" style (with its tiled graphs) serving all seven emotions, the classifier,
#     the MTCNN detector, FP16 graphs added and verified here (TensorFlow is not on the GPU machine, so
#     nothing is exported there); about 37 MiB.
#  2. .dev/p1 .. .dev/pN: the wheels the GPU machine lacks, in parts of <= 56 MiB (../shared/tools/device-pack):
#     onnxruntime-gpu (CUDA 13), PyAV (emostyle video), starlette + uvicorn + python-multipart (emostyle serve).
#     About 9 minutes on 2 cores (xz).
#     When the work tree leaves less than 56 MiB beside a part, the parts are cut again (scripts/gpu/resplit.sh).
#  3. prints what each device call carries against the 64 MiB limit.
# Both folders are git-ignored: they travel only with `carry`. Run it in a main checkout (device-pack writes
# .git/info/exclude, which a `git worktree` checkout does not have as a folder).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-.venv/bin/python}
SRC=${1:-engines/demo}
WHEELS=(onnxruntime-gpu==1.31.1 av==18.1.0 starlette==1.10.0 uvicorn==0.55.0 python-multipart==0.0.34)
"$PY" -m emostyle_bench.gpu_check --make-bundle "$SRC" .gpucheck/bundle
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
  "${DEVICE_PACK:-../shared/tools/device-pack}" "${WHEELS[@]}"
fi
mib() { echo $(( ($1 + 1048575) / 1048576 )); }
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
bundle=$(du -sb .gpucheck | cut -f1)
# One part and the work tree must fit 63 MiB (64, less a margin): device-pack's 56 MiB parts leave 7 for the tree.
room=$(( 63 - $(mib "$tree") ))
if [ -d .dev/p1 ] && [ "$(du -sm .dev/p1 | cut -f1)" -gt "$room" ]; then
  bash scripts/gpu/resplit.sh "$room" .dev
fi
echo
echo "what travels (limit 64 MiB a call):"
echo "  the work tree alone: $(mib "$tree") MiB (every call)"
n=0
for p in .dev/p*; do
  [ -d "$p" ] || continue
  n=$((n + 1))
  echo "  part call $n: work tree + $p = $(mib $(( tree + $(du -sb "$p" | cut -f1) ))) MiB"
done
total=$(( tree + bundle ))
echo "  check call: work tree + .gpucheck = $(mib "$total") MiB"
if [ "$total" -gt $(( 62 * 1048576 )) ]; then
  echo "  too close to 64 MiB: carry .gpucheck in a call of its own before the check (docs/gpu-check.md, step 3b)"
fi
