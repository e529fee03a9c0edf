#!/usr/bin/env bash
# The prepared GPU check (issue 28): run on the GPU machine, in the repository root. docs/gpu-check.md has the
# device calls that come before it (the carried wheel parts), their order and the time budget.
#
#   bash scripts/gpu/check.sh                     # everything, within --deadline 470 s
#   bash scripts/gpu/check.sh --only bench,aoti   # a rerun of some stages (see --help)
#   PYTHON=.venv/bin/python bash scripts/gpu/check.sh --dry-run --out /tmp/gc   # here, on the CPU: same plumbing
#
# What it does:
#  1. the carried wheels (onnxruntime-gpu, PyAV, the serve extra): ../shared/tools/device-pack's parts in
#     /tmp/dvparts are checked and unpacked into /tmp/site once (bash /tmp/dvparts/unpack.sh);
#  2. PYTHONPATH = /tmp/site (onnxruntime-gpu over the image's CPU onnxruntime), then a folder of links to
#     the repo's packages under src/ (nothing is pip-installed there), then the repo;
#  3. python -m emostyle_bench.gpu_check: gpu-<gpu>.json/.md, check.log and junit.xml in $OUT, rewritten as
#     the stages run (a run cut off by its limit still brings back what was done).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpucheck-out}
export OUT
mkdir -p "$OUT"
SITE=${GPUCHECK_SITE:-/tmp/site}
if [ -f /tmp/dvparts/unpack.sh ] && [ ! -d "$SITE/onnxruntime" ]; then
  echo "unpacking the carried wheels into $SITE"
  t0=$(date +%s)
  bash /tmp/dvparts/unpack.sh || { echo "the carried parts are missing or damaged: carry them again from part 1"; exit 3; }
  echo "unpacked in $(( $(date +%s) - t0 )) s"
fi
# The repo's packages (src/<import name>, pyproject.toml's src layout), linked into one folder.
LINKS=${GPUCHECK_LINKS:-/tmp/emostyle-links}
rm -rf "$LINKS" && mkdir -p "$LINKS"
for name in emostyle_rt emostyle_export emostyle_bench emostyle_train emostyle_ray emostyle_serve; do
  ln -sfn "$PWD/src/$name" "$LINKS/$name"
done
export PYTHONPATH="$SITE:$LINKS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
"$PY" - <<'PY' 2>&1 | tee -a "$OUT/check.log"
import sys
import onnxruntime as ort
import emostyle_bench, emostyle_export, emostyle_rt
print("check.sh: python", sys.version.split()[0], "| onnxruntime", ort.__version__, "from", ort.__file__,
      "|", ", ".join(ort.get_available_providers()), "| emostyle from", emostyle_rt.__file__)
PY
exec "$PY" -X faulthandler -m emostyle_bench.gpu_check "$@"
