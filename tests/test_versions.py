"""Declared versions are true: pyproject's floors are the ones scripts/check_floors.sh last passed on, and
requires-python is not lower than what the code imports (a newer stdlib module only behind a fallback)."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "scripts" / "floors.txt"
#: stdlib modules and names newer than some Python we may allow -> (first version, the backport package or None)
NEWER = {
    "tomllib": ((3, 11), "tomli"), "wsgiref.types": ((3, 11), None),
    "typing.Self": ((3, 11), None), "typing.LiteralString": ((3, 11), None), "typing.assert_never": ((3, 11), None),
    "enum.StrEnum": ((3, 11), None), "datetime.UTC": ((3, 11), None), "asyncio.TaskGroup": ((3, 11), None),
    "hashlib.file_digest": ((3, 11), None), "contextlib.chdir": ((3, 11), None), "asyncio.timeout": ((3, 11), None),
    "typing.override": ((3, 12), None), "itertools.batched": ((3, 12), None), "warnings.deprecated": ((3, 13), None),
}


def _floors_module():
    spec = importlib.util.spec_from_file_location("floors", ROOT / "scripts" / "floors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a ``try`` that catches ImportError / ModuleNotFoundError (or an ``except`` of one)."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else h.type.elts
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
    return False


def newer_uses(source: str, floor: tuple[int, int]) -> list[tuple[int, str, bool]]:
    """``(line, name, guarded)`` for each use of a NEWER name that ``floor`` lacks."""
    tree = ast.parse(source)
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names = [f"{node.value.id}.{node.attr}"]
        for name in names:
            if name in NEWER and NEWER[name][0] > floor:
                found.append((node.lineno, name, _guarded(node, parents)))
    return sorted(found)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_floors_match_the_last_passed_check() -> None:
    """A floor changed in pyproject without a pass of scripts/check_floors.sh on it fails here."""
    pins = list(_floors_module().floors().values())
    recorded = [ln for ln in RECORD.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert pins == recorded, (
        f"pyproject.toml's floors are not those of {RECORD.name}: run bash scripts/check_floors.sh --write. "
        f"Note: expected {recorded}, available {pins}")
    assert re.search(r"\d+ passed", RECORD.read_text()), "the record names no passing run"
    for pin in pins:  # exact releases pip can pin (OpenCV's have four parts)
        assert re.fullmatch(r"[A-Za-z0-9._-]+==\d+(\.\d+)*", pin.split(";")[0].strip()), pin
    assert any(p.startswith("opencv-python-headless==4.") for p in pins), "the OpenCV floor is a 4.x release"


def test_every_runtime_requirement_has_a_floor(tmp_path: Path) -> None:
    floors = _floors_module()
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[project]\nname = "x"\nrequires-python = ">=3.10"\ndependencies = ["numpy"]\n'
                   '[project.optional-dependencies]\ncpu = []\nopenvino = []\nvideo = []\n')
    with pytest.raises(floors.FloorError, match="no single '>=' floor"):
        floors.floors(bad)
    assert floors.requires_python() <= sys.version_info[:2]  # the interpreter running the tests is allowed


def test_requires_python_covers_what_the_code_imports() -> None:
    project = _project()
    floor = _floors_module().requires_python()
    declared = " ".join(r for reqs in project["project"]["optional-dependencies"].values() for r in reqs)
    dirs = {ROOT / d for d in project["tool"]["setuptools"]["package-dir"].values()} | {ROOT / "scripts"}
    problems = []
    for path in sorted(p for d in dirs for p in d.rglob("*.py")):
        for line, name, guarded in newer_uses(path.read_text(encoding="utf-8"), floor):
            need, backport = NEWER[name]
            where = f"{path.relative_to(ROOT)}:{line} uses {name} (Python {need[0]}.{need[1]})"
            if not guarded or backport is None:
                problems.append(f"{where} without a fallback")
            elif not re.search(rf"{backport}>=[\d.]+; python_version < '{need[0]}\.{need[1]}'", declared):
                problems.append(f"{where}: its fallback {backport} is not declared for Python < {need[0]}.{need[1]}")
    assert not problems, f"requires-python >={floor[0]}.{floor[1]} is lower than the code needs: {problems}"


def test_the_scan_finds_what_it_must() -> None:
    """The scanner itself: unguarded uses are found, guarded ones are told apart, old names pass."""
    src = ("import tomllib\nfrom typing import Self\nimport enum\nx = enum.StrEnum\n"
           "try:\n    import tomllib\nexcept ModuleNotFoundError:\n    import tomli as tomllib\nimport json\n")
    assert newer_uses(src, (3, 10)) == [(1, "tomllib", False), (2, "typing.Self", False), (4, "enum.StrEnum", False),
                                        (6, "tomllib", True)]
    assert newer_uses(src, (3, 11)) == []
