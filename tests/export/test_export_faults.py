"""emostyle-export killed mid-run: no half-written bundle, an existing bundle survives."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _kill_export_at(dest: Path, after_s: float) -> int:
    cmd = [sys.executable, "-m", "emostyle_export.cli", "--demo", "-o", str(dest), "--force", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=after_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def _run_kills(demo_bundle: Path, tmp_path: Path, delays: list[float]) -> None:
    from emostyle_export.bundle import _clean_stale
    from emostyle_rt.manifest import load_manifest

    dest = tmp_path / "bundle"
    shutil.copytree(demo_bundle, dest)
    before = _digest_tree(dest)
    for delay in delays:
        rc = _kill_export_at(dest, delay)
        assert rc in (0, -signal.SIGKILL)
        after = _digest_tree(dest)
        if after != before:
            # The kill came after the rename: then only a complete new bundle may stand
            # there (load_manifest checks every file against the new manifest's sha256).
            load_manifest(dest)
            assert set(after) == set(before), f"files added or lost by an export killed after {delay:.1f}s"
            before = after
        load_manifest(dest)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "bundle"]
    assert all(n.startswith((".bundle.partial-", ".bundle.old-")) for n in leftovers), leftovers
    _clean_stale(dest)  # the next export removes what killed ones left beside the destination
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_killed_export_leaves_existing_bundle_intact(demo_bundle: Path, tmp_path: Path) -> None:
    _run_kills(demo_bundle, tmp_path, [2.0, 9.0])


@pytest.mark.slow
def test_killed_export_at_random_points(demo_bundle: Path, tmp_path: Path) -> None:
    """Kills spread over an export's phases (it takes about 25 s here): fixed points, not clock-seeded,
    so a failure reruns the same way."""
    _run_kills(demo_bundle, tmp_path, [1.0, 4.0, 9.0, 16.0, 24.0])


def test_killed_fresh_export_creates_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "new"
    assert _kill_export_at(dest, 6.0) == -signal.SIGKILL
    assert not dest.exists()
