#!/usr/bin/env bash
# The runtime on the oldest versions pyproject.toml allows: a fresh venv on the oldest Python found that
# requires-python allows, every runtime dependency pinned to its floor (scripts/floors.py writes the
# constraints: numpy, OpenCV 4.x, tqdm, onnxruntime, OpenVINO, and PyAV where that Python has it), the
# package installed with --no-deps, then the runtime tests (tests/runtime -m "not slow"; the venv has no
# torch or TensorFlow, so the tests that need them skip). Needs a package index; about 5 minutes on 2 cores.
# Usage: bash scripts/check_floors.sh [--write] [extra pytest args]
#   --write                 on a pass, record the floors and the result in scripts/floors.txt
#   EMOSTYLE_FLOORS_PYTHON  the interpreter (default: python3.N of requires-python, from PATH or pyenv)
#   EMOSTYLE_TEST_BUNDLE    an exported bundle (default: bundles/demo, which scripts/demo.sh writes)
set -euo pipefail
cd "$(dirname "$0")/.."
write=0
if [ "${1:-}" = "--write" ]; then write=1; shift; fi
gen=.venv/bin/python; [ -x "$gen" ] || gen=python3
floor=$("$gen" scripts/floors.py --requires-python)
py=${EMOSTYLE_FLOORS_PYTHON:-}
if [ -z "$py" ]; then
  for cand in "$(command -v "python$floor" || true)" \
              $( (command -v pyenv >/dev/null && ls -d "$(pyenv root)/versions/$floor".*/bin/"python$floor") 2>/dev/null); do
    if [ -n "$cand" ] && "$cand" -V >/dev/null 2>&1; then py=$cand; break; fi  # (a pyenv shim may not run)
  done
  if [ -z "$py" ]; then
    py=$(command -v python3.11 || command -v python3)
    echo "warning: no python$floor (requires-python's floor) found; the floors run on $("$py" -V) instead" >&2
  fi
fi
ver=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
bundle=${EMOSTYLE_TEST_BUNDLE:-$PWD/bundles/demo}
if [ ! -f "$bundle/manifest.json" ]; then
  echo "error: no bundle at $bundle. Note: expected EMOSTYLE_TEST_BUNDLE or bundles/demo (bash scripts/demo.sh)" >&2
  exit 2
fi
venv=${EMOSTYLE_FLOORS_VENV:-${TMPDIR:-/tmp}/emostyle-floors-py$ver}
rm -rf "$venv"
"$py" -m venv "$venv"
"$gen" scripts/floors.py --python "$ver" > "$venv/floors.txt"
echo "Python $("$py" -V | cut -d' ' -f2); floors ($("$gen" scripts/floors.py --python "$ver" --extras)):"
sed 's/;.*//; s/^/  /' "$venv/floors.txt"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
# the pins themselves, then the test tools resolved against them (a test tool needing a newer numpy fails here)
"${pip[@]}" -r "$venv/floors.txt"
"${pip[@]}" -c "$venv/floors.txt" pytest hypothesis scikit-image
"${pip[@]}" --no-deps -e .
"$venv/bin/python" - "$venv/floors.txt" <<'EOF'
import sys
from importlib.metadata import version
bad = []
for line in open(sys.argv[1]):
    name, want = line.split(";")[0].strip().split("==")
    try:
        got = version(name)
    except Exception:
        continue  # its marker left it out on this machine
    pad = lambda v: [int(x) for x in v.split(".")] + [0] * (5 - len(v.split(".")))  # 1.24 == 1.24.0
    if pad(got) != pad(want):
        bad.append(f"{name} {got} (pinned {want})")
sys.exit(f"not the floors: {', '.join(bad)}" if bad else 0)
EOF
log="$venv/pytest.log"
set +e
EMOSTYLE_TEST_BUNDLE="$bundle" "$venv/bin/python" -m pytest -p no:cacheprovider -m "not slow" -q tests/runtime "$@" \
    2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" = 0 ] && [ "$write" = 1 ]; then
  # one line per Python that passed; another Python's line stays while the floors are unchanged
  "$gen" - "$ver" "$("$py" -V | cut -d' ' -f2)" "$("$gen" scripts/floors.py --python "$ver" --extras)" \
      "$(tail -1 "$log" | sed 's/=//g; s/^ *//; s/ *$//')" "$("$gen" scripts/floors.py --all)" <<'EOF'
import datetime, sys
from pathlib import Path
ver, full, extras, result, pins = sys.argv[1:]
record = Path("scripts/floors.txt")
old = record.read_text().splitlines() if record.exists() else []
same = [ln for ln in old if ln and not ln.startswith("#")] == pins.splitlines()
runs = [ln for ln in old if same and ln.startswith("# Python ") and not ln.startswith(f"# Python {ver}.")]
runs.append(f"# Python {full} ({extras}), {datetime.date.today()}: {result}")
record.write_text("# The runtime's floors: scripts/floors.py from pyproject.toml, each run below by\n"
                  "# bash scripts/check_floors.sh --write (tests/test_versions.py checks this file against pyproject).\n"
                  + "\n".join(sorted(runs)) + "\n" + pins + "\n")
print(f"wrote {record}")
EOF
fi
exit "$rc"
