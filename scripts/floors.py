"""The oldest versions pyproject.toml allows for the runtime, as a pip constraints file (``name==floor``).

scripts/check_floors.sh installs these pins into a fresh venv and runs the runtime tests there, so a
floor in pyproject is a version the tests have passed on, not a guess. Every requirement of the runtime
and of the extras below must carry a ``>=`` floor that is itself a release on the index (OpenCV's
releases have four parts: write ``4.8.0.76``, since ``==4.8`` matches no OpenCV wheel).

    python scripts/floors.py                  # constraints for the running Python
    python scripts/floors.py --python 3.11    # ... for another one (extras it cannot install left out)
    python scripts/floors.py --all            # every runtime extra (the record, scripts/floors.txt)
    python scripts/floors.py --requires-python
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
#: the extras the runtime tests exercise, with the oldest Python their floors have wheels for
#: (PyAV 18, the video floor, starts at 3.11; without it the video tests skip)
RUNTIME_EXTRAS: dict[str, tuple[int, int]] = {"cpu": (3, 10), "openvino": (3, 10), "video": (3, 11)}
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")


class FloorError(ValueError):
    """A requirement without a usable floor."""


def _project(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]


def requires_python(pyproject: Path = ROOT / "pyproject.toml") -> tuple[int, int]:
    """The floor of ``requires-python`` (``>=3.10`` -> (3, 10))."""
    spec = _project(pyproject)["requires-python"]
    m = re.fullmatch(r">=\s*3\.(\d+)", spec.strip())
    if not m:
        raise FloorError(f"requires-python {spec!r} is not of the form '>=3.N'.")
    return 3, int(m.group(1))


def floors(pyproject: Path = ROOT / "pyproject.toml", python: tuple[int, int] | None = None) -> dict[str, str]:
    """``{name: "name==floor[; marker]"}`` for the runtime and RUNTIME_EXTRAS (self-references expanded).

    ``python``: leave out the extras whose floors have no wheels for that Python.
    """
    project = _project(pyproject)
    own = project["name"]
    extras = project.get("optional-dependencies", {})
    out: dict[str, str] = {}

    def add(reqs: list[str], where: str) -> None:
        for req in reqs:
            m = _REQ.match(req)
            if not m:
                raise FloorError(f"{where}: cannot parse requirement {req!r}.")
            name, extra, spec, marker = m.groups()
            if name == own:
                for e in (extra or "[]")[1:-1].split(","):
                    add(extras[e.strip()], f"{where} -> [{e.strip()}]")
                continue
            lows = re.findall(r">=\s*([0-9][0-9A-Za-z.]*)", spec)
            if len(lows) != 1:
                raise FloorError(f"{where}: {req!r} has no single '>=' floor; every runtime dependency needs one.")
            pin = f"{name}=={lows[0]}" + (f"; {marker[1:].strip()}" if marker else "")
            key = name.lower().replace("_", "-")
            if out.setdefault(key, pin) != pin:
                raise FloorError(f"{where}: {name} has two floors: {out[key]!r} and {pin!r}.")

    add(project["dependencies"], "dependencies")
    for extra, oldest in RUNTIME_EXTRAS.items():
        if python is None or python >= oldest:
            add(extras[extra], f"[{extra}]")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", help="the Python the constraints are for, as 3.N (default: this one)")
    ap.add_argument("--requires-python", action="store_true", help="print requires-python's floor (3.N) and exit")
    ap.add_argument("--all", action="store_true", help="every runtime extra, whatever the Python (scripts/floors.txt)")
    ap.add_argument("--extras", action="store_true", help="print the extras to install for --python and exit")
    args = ap.parse_args(argv)
    if args.requires_python:
        print("%d.%d" % requires_python())
        return 0
    py = tuple(int(x) for x in args.python.split(".")[:2]) if args.python else sys.version_info[:2]
    if args.extras:
        print(",".join(e for e, oldest in RUNTIME_EXTRAS.items() if py >= oldest))
        return 0
    for pin in floors(python=None if args.all else py).values():  # type: ignore[arg-type]
        print(pin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
