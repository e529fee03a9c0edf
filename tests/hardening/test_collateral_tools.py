"""No collateral damage from the other tools that write: ``emostyle-export``, ``emostyle-train``, ``emostyle-bench``.

Every run happens in the decoy sandbox of ``decoys.py`` (inputs, look-alikes of
temporary files, read-only files, links) with the tools' own decoys on top: a
web app with its own ``manifest.json``, a bundle that also holds the user's
files, a folder of user files where a work folder could go, existing files
named like outputs, outputs inside and above the inputs, empty-string paths,
the inputs themselves. Each path is snapshotted before and after a run; only
the run's intended outputs may differ. Interrupts (Ctrl-C, SIGKILL) come at
events (a file appeared, a log line was written, an import began), never
after a guessed time, so a test passes or fails the same way on a loaded
machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from decoys import own_temp, sandbox, snapshot

from emostyle_rt.manifest import EMOTIONS, MANIFEST_NAME, bundle_files, load_manifest

REPO = Path(__file__).resolve().parents[2]
#: A stage folder of a killed ``emostyle-export --bundle`` run (the pid is replaced by a dead one).
STAGE = ".emostyle-stage-{pid}-0123456789ab"
EVENT_TIMEOUT_S = 300.0
PER_CLASS = 8  # classifier images per emotion: enough for a stratified 70/20/10 split


# ---------------------------------------------------------------- helpers


def changed_outside(before: dict, after: dict, allowed: Callable[[str], bool]) -> set[str]:
    """Changed paths that ``allowed`` does not accept (new folders above an accepted path are fine)."""
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    ok = {p for p in changed if allowed(p)}
    parents = {q.as_posix() for p in ok for q in Path(p).parents}
    return {p for p in changed - ok if not (p in parents and p not in before and after.get(p, ("",))[0] == "dir")}


def under(*prefixes: str) -> Callable[[str], bool]:
    """Accepts each prefix and every path below it."""
    return lambda p: any(p == x or p.startswith(x.rstrip("/") + "/") for x in prefixes)


def wait_for(what: str, cond: Callable[[], bool], proc: subprocess.Popen) -> None:
    """Poll until ``cond()`` (an event of the child's work); the test fails if the child ends first."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while not cond():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the child ended (exit {proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {EVENT_TIMEOUT_S:.0f} s")
        time.sleep(0.01)


def read_line_until(proc: subprocess.Popen, needle: str, stream: str = "stderr") -> str:
    """Read the child's output line by line until one holds ``needle`` (the event); what was read."""
    f = getattr(proc, stream)
    seen = []
    for line in f:
        seen.append(line)
        if needle in line:
            return "".join(seen)
    proc.wait(timeout=60)
    pytest.fail(f"the child ended (exit {proc.returncode}) without writing {needle!r}:\n{''.join(seen)}")


def one_line_interrupt(err: str, prog: str) -> None:
    """Ctrl-C: no traceback; the last line says the command was interrupted."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(f"{prog}") and "interrupted" in lines[-1], err


def typed(err: str, *needles: str) -> None:
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def refused_at_parse(main: Callable[[list[str]], int], argv: list[str], box: Path,
                     capsys: pytest.CaptureFixture[str], needle: str) -> None:
    """``main(argv)`` stops while parsing (exit 2), says ``needle``, and the sandbox is unchanged."""
    before = snapshot(box)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2, argv
    typed(capsys.readouterr().err, needle)
    assert snapshot(box) == before, argv


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}
    return {**env, **extra}


#: Runs a command through its console entry point (emostyle_rt.console) with Python paused at its first import of
#: emostyle_rt.errors (every tool's command module imports it; the entry point itself does not), after telling the
#: parent so on stdout: the SIGINT the parent then sends lands inside the command's imports.
IMPORT_PAUSE = """
import os, sys, time
class Pause:
    def find_spec(self, name, path=None, target=None):
        if name == "emostyle_rt.errors":
            sys.meta_path.remove(self)
            os.write(1, b"importing\\n")
            for _ in range(3000):
                time.sleep(0.1)
        return None
sys.meta_path.insert(0, Pause())
sys.argv = [{prog!r}, *sys.argv[1:]]
from emostyle_rt import console
assert "emostyle_rt.errors" not in sys.modules
sys.exit(console.{entry}())
"""


def ctrl_c_while_importing(prog: str, argv: list[str], cwd: Path) -> None:
    """Ctrl-C in the first second (the command's modules importing): one line, exit 130, nothing written; through
    the console script's own entry point."""
    from importlib import metadata

    entry = prog.replace("-", "_")
    (script,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == prog]
    assert script.value == f"emostyle_rt.console:{entry}"  # what the paused run below starts
    before = snapshot(cwd)
    proc = subprocess.Popen([sys.executable, "-c", IMPORT_PAUSE.format(prog=prog, entry=entry), *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "importing", (line, proc.stderr.read() if proc.stderr else "")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    one_line_interrupt(err, prog)
    assert snapshot(cwd) == before


def mini_bundle(demo_bundle: Path, dest: Path) -> Path:
    """A small valid bundle from the demo one: its classifier and one style graph serving all seven emotions
    (no tiled graphs, no detector, no FP16): what --bundle additions and --force replacements are run on."""
    raw = json.loads((demo_bundle / MANIFEST_NAME).read_text())
    sid = raw["emotions"]["angry"]
    style = {k: v for k, v in raw["styles"][sid].items() if k not in ("tiled", "fp16")}
    clf = {k: v for k, v in raw["classifier"].items() if k != "fp16"}
    raw = {**{k: v for k, v in raw.items() if k not in ("detector", "engines", "aoti")}, "classifier": clf,
           "styles": {sid: style}, "emotions": {e: sid for e in EMOTIONS}}
    for rel in bundle_files(raw) - {MANIFEST_NAME}:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(demo_bundle / rel, dest / rel)
    (dest / MANIFEST_NAME).write_text(json.dumps(raw, indent=2) + "\n")
    load_manifest(dest)
    return dest


@pytest.fixture(scope="module")
def mini(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mini_bundle(demo_bundle, tmp_path_factory.mktemp("mini") / "mini")


def tool_box(box: Path, dead: int, astronaut: np.ndarray, mini: Path) -> None:
    """The decoy sandbox plus the tools' decoys."""
    sandbox(box, dead, astronaut)
    (box / "webapp/src").mkdir(parents=True)
    (box / "webapp/manifest.json").write_text('{"name": "my web app", "version": "1.0"}\n')
    (box / "webapp/src/app.js").write_text("console.log('mine')\n")
    shutil.copy2(box / "single.png", box / "webapp/photo.png")
    shutil.copytree(mini, box / "userbundle")  # a bundle that also holds the user's files
    (box / "userbundle/notes.txt").write_text("my notes about this bundle\n")
    (box / "userbundle/mine").mkdir()
    shutil.copytree(mini, box / "bundle")  # a bundle holding only its own files
    (box / "victim.pth").write_bytes(b"an existing checkpoint of the user")
    (box / "victim.keras").write_bytes(b"an existing model of the user")
    (box / "notes.md").write_text("# my notes\n")
    shutil.copy2(box / "single.png", box / "photo.jpg")
    (box / "userdir").mkdir()
    (box / "userdir/report.json").write_text('{"mine": 1}\n')
    (box / "userdir/notes.txt").write_text("mine\n")
    (box / "ckpts").mkdir()
    for e in EMOTIONS:
        (box / f"ckpts/{e}.pth").write_bytes(b"not read: the destination is refused first " + e.encode())
    (box / "savedmodel").mkdir()
    (box / "savedmodel/saved_model.pb").write_bytes(b"a SavedModel of the user")
    yy, xx = np.mgrid[0:64, 0:64]
    style = np.zeros((64, 64, 3), np.uint8)
    style[((xx + yy) // 8) % 2 == 0], style[((xx + yy) // 8) % 2 == 1] = (40, 40, 230), (30, 200, 250)
    assert cv2.imwrite(str(box / "style.png"), style)
    rng = np.random.default_rng(0)
    for i, e in enumerate(EMOTIONS):  # classifier data: coloured squares, one folder per emotion
        (box / f"data/{e}").mkdir(parents=True)
        for k in range(PER_CLASS):
            img = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
            cv2.rectangle(img, (8, 8), (31, 31), (30 * i, 255 - 30 * i, 120), -1)
            assert cv2.imwrite(str(box / f"data/{e}/{k}.png"), img)
    (box / "labels.csv").write_text("path,label\n" + "".join(f"data/{e}/{k}.png,{e}\n" for e in EMOTIONS
                                                             for k in range(PER_CLASS)))
    shutil.copy2(REPO / "benchmarks/results/quick-cpu.json", box / "q.json")


@pytest.fixture()
def box(tmp_path: Path, dead_pid: int, astronaut: np.ndarray, mini: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    b = tmp_path / "box"
    tool_box(b, dead_pid, astronaut, mini)
    monkeypatch.chdir(b)
    return b


def _fail(msg: str) -> Callable[..., None]:
    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError(msg)

    return boom


# ---------------------------------------------------------------- emostyle-export


def test_export_refuses_what_is_not_the_bundles_own(box: Path, dead_pid: int, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """--force and --bundle additions touch nothing that is not provably the bundle's: exit 2, saying why."""
    import emostyle_export.bundle as bundle
    from emostyle_export.cli import main

    for name in ("_build", "_fp16", "_tiled", "_detector"):  # the refusal comes before any work
        monkeypatch.setattr(bundle, name, _fail(f"the export started ({name}) before the error"))
    sid = next(iter(json.loads((box / "bundle/manifest.json").read_text())["styles"]))
    shutil.copytree(box / "bundle", box / "fp16blocked")
    (box / "fp16blocked/classifier.fp16.onnx").write_bytes(b"the user's file, or an orphan of an older version")
    shutil.copytree(box / "bundle", box / "tiledblocked")
    (box / f"tiledblocked/styles/{sid}.tiled").mkdir()
    (box / f"tiledblocked/styles/{sid}.tiled/mine.onnx").write_bytes(b"the user's graph")
    styles = [a for e in EMOTIONS for a in ("--style", f"{e}=ckpts/{e}.pth")]
    cases = [
        (["--demo", "-o", "webapp", "--force"], "is not an emostyle bundle"),
        (["--demo", "-o", "webapp"], "already exists"),
        (["--demo", "-o", "userbundle", "--force"], "notes.txt"),
        (["--demo", "-o", "photo.jpg", "--force"], "is not an emostyle bundle"),
        (["--demo", "-o", "photos", "--force"], "is not an emostyle bundle"),  # above the inputs of emostyle
        (["--demo", "-o", ".", "--force"], "is not an emostyle bundle"),
        (["--classifier", "savedmodel", *styles, "-o", "ckpts", "--force"], "is not an emostyle bundle"),  # above
        (["--classifier", "savedmodel", *styles, "-o", "savedmodel/bundle"], "inside the input folder"),
        (["--bundle", "webapp", "--fp16"], "webapp"),
        (["--bundle", "fp16blocked", "--fp16"], "classifier.fp16.onnx"),
        (["--bundle", "tiledblocked", "--tiled"], f"styles/{sid}.tiled/mine.onnx"),
    ]
    for argv, needle in cases:
        before = snapshot(box)
        assert main([*argv, "-q"]) == 2, argv
        typed(capsys.readouterr().err, "error:", needle)
        assert snapshot(box) == before, argv
    for argv in (["--demo", "-o", "", "--force"], ["--bundle", "", "--fp16"], ["--config", "", "-o", "x"]):
        refused_at_parse(main, argv, box, capsys, "an empty path")


def _fake_build(src: Path) -> Callable[..., object]:
    """An export's _build that copies ``src``'s files into the build folder (the file handling is what is under
    test here; the conversions have their own tests)."""
    def build(plan: object, tmp: Path, step: object) -> object:
        from dataclasses import replace

        for rel in bundle_files(json.loads((src / MANIFEST_NAME).read_text())):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tmp / rel)
        m = load_manifest(tmp)
        (tmp / MANIFEST_NAME).unlink()
        return replace(m, note="a new export")

    return build


def test_export_force_replaces_only_the_bundles_own_files(box: Path, mini: Path, dead_pid: int,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import emostyle_export.bundle as bundle
    from emostyle_export.cli import main

    monkeypatch.setattr(bundle, "_build", _fake_build(mini))
    # leftovers of killed runs inside the old bundle (ours: removed), and beside it
    (box / f"bundle/{STAGE.format(pid=dead_pid)}").mkdir()
    (box / f"bundle/{STAGE.format(pid=dead_pid)}/x.fp16.onnx").write_bytes(b"half")
    (box / f"bundle/.emostyle-{dead_pid}-0123456789ab.manifest.json.part").write_bytes(b"half")
    (box / f".bundle.partial-{os.getpid()}-1").mkdir()  # a live export's build folder: not ours to touch
    (box / f".bundle.partial-{os.getpid()}-1/a.onnx").write_bytes(b"live")
    old = box / f".bundle.old-{dead_pid}-1"  # a replaced bundle a killed export left, with a user's file in it
    shutil.copytree(mini, old)
    (old / "mine.txt").write_text("the user's\n")
    before = snapshot(box)
    assert main(["--demo", "-o", "bundle", "--force", "-q"]) == 0, capsys.readouterr().err
    after = snapshot(box)
    assert not changed_outside(before, after, under("bundle", old.name))
    assert json.loads((box / "bundle/manifest.json").read_text())["note"] == "a new export"
    raw = json.loads((box / "bundle/manifest.json").read_text())
    assert {p for p in after if p.startswith("bundle/")} == bundle_tree("bundle", raw)  # the leftovers went
    assert sorted(p for p in after if p.startswith(old.name)) == [old.name, f"{old.name}/mine.txt"]
    assert f".bundle.partial-{os.getpid()}-1/a.onnx" in after


#: Runs emostyle-export with _build / _fp16 replaced by fast copies (see _fake_build), pausing for the kill at
#: the event named by $PAUSE_AT: "built" (the new bundle complete in its build folder), "swapped" (the old bundle
#: moved aside, the new one not yet in place), "staged" (a --bundle addition's first new file in its stage),
#: "moving" (its commit has moved the first file into the bundle). The pause writes $PAUSE_FLAG first.
_KILL_WRAPPER = """
import json, os, shutil, sys, time
from pathlib import Path
import emostyle_export.bundle as bundle
from emostyle_rt.fsutil import sha256_file, write_bytes_atomic
from emostyle_rt.manifest import Fp16Graph, MANIFEST_NAME, bundle_files, load_manifest
at, flag, src = os.environ["PAUSE_AT"], Path(os.environ["PAUSE_FLAG"]), Path(os.environ["MINI"])

def pause(point):
    if point == at:
        flag.write_text(point)
        while True:
            time.sleep(0.1)

def build(plan, tmp, step):
    for rel in bundle_files(json.loads((src / MANIFEST_NAME).read_text())):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, tmp / rel)
    m = load_manifest(tmp)
    (tmp / MANIFEST_NAME).unlink()
    return m

def fp16(root, rel, kind, step):
    rel16 = bundle._fp16_name(rel)
    write_bytes_atomic(root / rel16, (root / rel).read_bytes() + b"fp16")
    pause("staged")
    return Fp16Graph(rel16, sha256_file(root / rel16), sha256_file(root / rel), {"kind": kind})

fsync = bundle.fsync_tree  # fsutil.fsync_tree, as bundle calls it
def fsync_tree(root):
    fsync(root)
    pause("built")
replace = os.replace
def os_replace(a, b):
    replace(a, b)
    if ".old-" in str(b):
        pause("swapped")
    if ".emostyle-stage-" in str(a) and ".emostyle-stage-" not in str(b):  # a commit moved a file in
        pause("moving")
bundle._build, bundle._fp16, bundle.fsync_tree = build, fp16, fsync_tree
os.replace = os_replace
from emostyle_export.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _export_until(box: Path, mini: Path, argv: list[str], at: str, sig: int) -> tuple[int, str]:
    """Run the wrapped export; send ``sig`` once it pauses at event ``at``; (exit status, stderr)."""
    flag = box.parent / f"paused-{at}"
    flag.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _KILL_WRAPPER, *argv, "-q"], cwd=box, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env=child_env(PAUSE_AT=at, PAUSE_FLAG=str(flag), MINI=str(mini)))
    wait_for(f"the event {at!r}", flag.exists, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def bundle_tree(name: str, raw: dict) -> set[str]:
    """The paths of a bundle folder ``name`` that holds exactly the files its manifest names (and their folders)."""
    files = bundle_files(raw)
    return {f"{name}/{r}" for r in files} | {f"{name}/{q.as_posix()}" for r in files for q in Path(r).parents
                                              if q != Path(".")}


def _bundle_state(box: Path, name: str) -> dict:
    return {p: e for p, e in snapshot(box).items() if p == name or p.startswith(name + "/")}


def test_export_killed_at_events_leaves_the_old_bundle_or_the_new(box: Path, mini: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """-o DIR --force killed with the new bundle built, and between the two renames: the old bundle stands (or
    comes back), nothing else changes, and the next export removes what the killed one left."""
    import emostyle_export.bundle as bundle
    from emostyle_export.cli import main

    old = _bundle_state(box, "bundle")
    for at in ("built", "swapped"):
        before = snapshot(box)
        rc, err = _export_until(box, mini, ["--demo", "-o", "bundle", "--force"], at, signal.SIGKILL)
        assert rc == -signal.SIGKILL, err
        after = snapshot(box)
        assert not changed_outside(before, after, lambda p: p.startswith((".bundle.partial-", ".bundle.old-"))
                                   or under("bundle")(p)), at
        if at == "built":
            assert _bundle_state(box, "bundle") == old
        else:
            assert not (box / "bundle").exists()  # killed between the renames: the old bundle is aside
            bundle._clean_stale((box / "bundle").absolute())  # what the next export does first
            assert _bundle_state(box, "bundle") == old, "the old bundle did not come back"
    monkeypatch.setattr(bundle, "_build", _fake_build(mini))
    before = snapshot(box)
    assert main(["--demo", "-o", "bundle", "--force", "-q"]) == 0, capsys.readouterr().err
    after = snapshot(box)
    assert not changed_outside(before, after, lambda p: p.startswith((".bundle.partial-", ".bundle.old-"))
                               or under("bundle")(p))
    assert not [p for p in after if p.startswith((".bundle.partial-", ".bundle.old-"))], "leftovers stayed"


def test_bundle_additions_killed_at_events_leave_no_orphans(box: Path, mini: Path, dead_pid: int) -> None:
    """--bundle X --fp16 killed (SIGKILL, Ctrl-C) with a graph staged and in the middle of its commit: the bundle
    keeps working and unchanged but for the stage folder; the next run finishes, no *.fp16.onnx is orphaned, and
    the user's files in the bundle stay."""
    from emostyle_export.bundlefiles import recover

    ctrl_c_while_importing("emostyle-export", ["--bundle", "bundle", "--fp16", "-q"], box)
    (box / "bundle/README.txt").write_text("the user's notes inside the bundle\n")
    (box / "bundle/styles/mine.onnx").write_bytes(b"the user's graph")
    old = _bundle_state(box, "bundle")
    argv = ["--bundle", "bundle", "--fp16"]
    not_stage = under("bundle")

    rc, err = _export_until(box, mini, argv, "staged", signal.SIGINT)
    assert rc == 130, err
    one_line_interrupt(err, "emostyle-export")
    assert _bundle_state(box, "bundle") == old, "Ctrl-C left something in the bundle"

    for at in ("staged", "moving"):
        before = snapshot(box)
        rc, err = _export_until(box, mini, argv, at, signal.SIGKILL)
        assert rc == -signal.SIGKILL, err
        after = snapshot(box)
        assert not changed_outside(before, after, not_stage), at
        stage = [p for p in after if p.startswith("bundle/.emostyle-stage-") and p.count("/") == 1]
        assert len(stage) == 1, at
        load_manifest(box / "bundle")  # still a working bundle
        if at == "moving":
            assert [p for p in after.keys() - before.keys() if not p.startswith(stage[0])], "nothing was moved"
        recover(box / "bundle")  # what the next --bundle run does first
        assert _bundle_state(box, "bundle") == old, f"{at}: the killed run's files were not all taken back"

    before = snapshot(box)
    done = subprocess.run([sys.executable, "-c", _KILL_WRAPPER, *argv, "-q"], cwd=box, capture_output=True,
                          text=True, env=child_env(PAUSE_AT="never", PAUSE_FLAG=str(box.parent / "x"),
                                                   MINI=str(mini)))
    assert done.returncode == 0, done.stderr
    after = snapshot(box)
    raw = json.loads((box / "bundle/manifest.json").read_text())
    own = {f"bundle/{r}" for r in bundle_files(raw)}
    assert not changed_outside(before, after, lambda p: p in own or p == "bundle/styles")
    assert raw["classifier"]["fp16"] and all(s["fp16"] for s in raw["styles"].values())
    orphans = [p for p in after if p.endswith(".fp16.onnx") and p not in own]
    assert not orphans and not [p for p in after if ".emostyle-stage-" in p]
    assert after["bundle/README.txt"] == old["bundle/README.txt"] and after["bundle/styles/mine.onnx"]


def test_bundle_fp16_real_conversion_killed_then_finished(box: Path) -> None:
    """The real --fp16 conversion (no stand-ins): SIGKILL once the first FP16 graph is staged, then a rerun."""
    before = snapshot(box)
    proc = subprocess.Popen([sys.executable, "-m", "emostyle_export.cli", "--bundle", "bundle", "--fp16", "-q"],
                            cwd=box, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    wait_for("a staged FP16 graph", lambda: any(box.glob("bundle/.emostyle-stage-*/**/*.fp16.onnx")), proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert not changed_outside(before, snapshot(box), lambda p: p.startswith("bundle/.emostyle-stage-"))
    done = subprocess.run([sys.executable, "-m", "emostyle_export.cli", "--bundle", "bundle", "--fp16", "-q"],
                          cwd=box, capture_output=True, text=True, env=child_env())
    assert done.returncode == 0, done.stderr
    raw = json.loads((box / "bundle/manifest.json").read_text())
    own = {f"bundle/{r}" for r in bundle_files(raw)}
    after = snapshot(box)
    assert not changed_outside(before, after, lambda p: p in own or p == "bundle/styles")
    assert not [p for p in after if p.startswith("bundle/") and after[p][0] == "file" and p not in own]
    assert raw["classifier"]["fp16"] and all(st["fp16"] for st in raw["styles"].values())
    assert load_manifest(box / "bundle").classifier.fp16 is not None


def test_export_is_quiet_by_default_and_says_what_a_junk_checkpoint_is(box: Path, mini: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from emostyle_export.checkpoints import load_style_checkpoint
    from emostyle_export.cli import main
    from emostyle_export.errors import CheckpointError

    junk = b"hello, this is not a checkpoint\n"
    (box / "junk.pth").write_bytes(junk)
    with pytest.raises(CheckpointError) as exc:
        load_style_checkpoint(box / "junk.pth")
    msg = str(exc.value)
    assert "junk.pth" in msg and "not a PyTorch checkpoint" in msg and f"text, {len(junk)} bytes" in msg
    assert "KeyError" in msg and "cannot be read by torch.load: 1" not in msg  # not torch's bare magic number
    # A real run as a user starts it (no TF_CPP_MIN_LOG_LEVEL, no ORT_DISABLE_TELEMETRY, a home of its own):
    # quiet, and onnxruntime's telemetry (~/.cache/Microsoft) off in the graphs' parity checks
    shutil.copytree(box / "bundle", box / "tiled")
    home = box.parent / "home"
    home.mkdir()
    env = {k: v for k, v in child_env(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")).items()
           if k not in ("ORT_DISABLE_TELEMETRY", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", "import sys; from emostyle_rt.console import emostyle_export; "
                           "sys.argv[0] = 'emostyle-export'; sys.exit(emostyle_export())", "--bundle", "tiled",
                           "--tiled"], cwd=box, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    err = done.stderr
    assert "Loaded " not in err and "CPUExecutionProvider" not in err and "Warning" not in err, err
    assert "tiled graphs" in err  # its own progress lines stay
    assert not (home / ".cache/Microsoft").exists(), sorted(p.relative_to(home).as_posix() for p in home.rglob("*"))
    assert main(["--bundle", "tiled", "--classifier-crop", "default", "-v"]) == 0
    capsys.readouterr()
    assert logging.getLogger("emostyle_rt").level == logging.DEBUG  # -v shows the runtime's lines


# ---------------------------------------------------------------- emostyle-train


def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import emostyle_train.classifier as classifier
    import emostyle_train.style as style

    monkeypatch.setattr(style._Run, "__init__", _fail("training started before the error"))
    monkeypatch.setattr(classifier, "load_dataset", _fail("the classifier started before the error"))


def test_train_refuses_before_any_work(box: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs that exist, that are inputs (even with --force), inside or above the data, work folders of the
    user's files, empty paths: exit 2, nothing written, nothing trained."""
    from emostyle_train.cli import main

    _no_training(monkeypatch)
    (box / "train.toml").write_text('[style]\ncontent = "photos"\nsize = 32\nbatch = 2\nsteps = 1\n[styles]\n'
                                    + "".join(f'{e} = "style.png"\n' for e in EMOTIONS)
                                    + '[classifier]\nmodel = "victim.keras"\n')
    s = ["style", "--style", "style.png", "--content", "photos", "--size", "32", "--batch", "2", "--steps", "1"]
    c = ["classifier", "--data", "data", "--epochs", "1"]
    a = ["all", "--config", "train.toml"]
    cases = [
        ([*s, "-o", "victim.pth"], "already exists"),
        ([*s, "-o", "victim.pth", "--resume"], "already exists"),  # not the output of a run being resumed
        ([*s, "-o", "photos/p0.png", "--force"], "Refusing to write over the input"),
        ([*s, "-o", "style.png", "--force"], "Refusing to write over the input"),
        ([*s, "-o", "photos/angry.pth"], "inside the data folder"),
        ([*s, "-o", "out/angry.pth", "--work", "photos/w"], "inside the data folder"),
        ([*s, "-o", "out/angry.pth", "--work", "photos"], "inside the data folder"),
        ([*s, "-o", "out/angry.pth", "--work", "userdir"], "did not write"),
        ([*s, "-o", "out/angry.pth", "--work", "."], "holds the data folder"),  # a work folder above the inputs
        ([*s, "-o", "w/checkpoint.pth", "--work", "w"], "a file the run writes into its work folder"),
        ([*c, "-o", "victim.keras"], "already exists"),
        ([*c, "-o", "data/happy/m.keras"], "inside the data folder"),
        ([*c, "-o", "m.keras", "--work", "data/w"], "inside the data folder"),
        ([*c, "-o", "m.keras", "--work", "userdir"], "did not write"),
        (["classifier", "--data", "labels.csv", "-o", "m.keras", "--work", "."], "did not write"),
        ([*a, "-o", "webapp", "--force"], "is not an emostyle bundle"),
        ([*a, "-o", "userbundle", "--force"], "notes.txt"),
        ([*a, "-o", "bundle"], "already exists"),
        ([*a, "-o", "photos/bundle"], "inside the data folder"),
        ([*a, "-o", "new", "--work", "photos/w"], "inside the data folder"),
        ([*a, "-o", "new", "--work", "userdir"], "did not write"),
    ]
    for argv, needle in cases:
        before = snapshot(box)
        assert main([*argv, "-q"]) == 2, argv
        typed(capsys.readouterr().err, "error:", needle)
        assert snapshot(box) == before, argv
    for argv in ([*s, "-o", ""], ["style", "--style", "style.png", "--content", "", "-o", "x.pth"],
                 [*c[:1], "--data", "", "-o", "m.keras"], [*a, "-o", ""]):
        refused_at_parse(main, argv, box, capsys, "an empty path")


def test_train_style_touches_only_its_outputs(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Real tiny runs in the sandbox: a style network, a refused rerun, a resumed one; only -o and its work folder
    change, and work folders are never read as data."""
    from emostyle_train.cli import main
    from emostyle_train.data import list_images

    s = ["style", "--style", "style.png", "--content", "photos", "-o", "out/angry.pth", "--size", "32", "--batch",
         "2", "--checkpoint-every", "1", "--preview-every", "1", "--preview-images", "1", "-q"]
    before = snapshot(box)
    assert main([*s, "--steps", "2"]) == 0, capsys.readouterr().err
    after = snapshot(box)
    assert not changed_outside(before, after, under("out/angry.pth", "out/angry.train"))
    assert {"out/angry.pth", "out/angry.train/checkpoint.pth", "out/angry.train/preview.png"} <= after.keys()
    assert not [p for p in after if own_temp(p)]
    assert main([*s, "--steps", "2"]) == 2  # exists: not written over
    assert "already exists" in capsys.readouterr().err and snapshot(box) == after
    assert main([*s, "--steps", "3", "--resume"]) == 0, capsys.readouterr().err  # its own output: replaced
    again = snapshot(box)
    assert not changed_outside(after, again, under("out/angry.pth", "out/angry.train"))
    assert after["out/angry.pth"] != again["out/angry.pth"]

    files = list_images(box / "photos", "content folder")
    shutil.copytree(box / "out/angry.train", box / "photos/angry.train")  # a work folder moved into the data
    assert list_images(box / "photos", "content folder") == files  # its previews are not content photos
    shutil.rmtree(box / "photos/angry.train")


def test_train_classifier_touches_only_its_outputs(box: Path, dead_pid: int,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from emostyle_train.cli import main

    (box / f"out/.emotion.partial-{dead_pid}.keras").write_bytes(b"left by a killed run")
    (box / f"out/.emotion.partial-{os.getpid()}-0123456789ab.keras").write_bytes(b"a live run's")
    before = snapshot(box)
    c = ["classifier", "--data", "data", "-o", "out/emotion.keras", "--epochs", "1", "--batch", "8", "--bn-images",
         "0", "-q"]
    assert main(c) == 0, capsys.readouterr().err
    after = snapshot(box)
    assert not changed_outside(before, after, under("out/emotion.keras", "out/emotion.train",
                                                    f"out/.emotion.partial-{dead_pid}.keras"))
    assert "out/emotion.keras" in after and f"out/.emotion.partial-{dead_pid}.keras" not in after
    assert f"out/.emotion.partial-{os.getpid()}-0123456789ab.keras" in after
    assert main(c) == 2 and snapshot(box) == after


def test_train_ctrl_c_one_line_130_no_leftovers(box: Path) -> None:
    """Ctrl-C while the modules import, and once training runs (the first preview written): one line, exit 130;
    only the work folder changed, no temporary file stays; --resume then finishes."""
    argv = ["style", "--style", "style.png", "--content", "photos", "-o", "out/angry.pth", "--size", "32",
            "--batch", "2", "--checkpoint-every", "1", "--preview-every", "1", "--preview-images", "1", "-q"]
    ctrl_c_while_importing("emostyle-train", [*argv, "--steps", "3"], box)

    before = snapshot(box)
    # 200 steps: the run is inside its loop (the preview of step 1 written) long before it could end
    proc = subprocess.Popen([sys.executable, "-m", "emostyle_train.cli", *argv, "--steps", "200"], cwd=box,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env())
    wait_for("the preview of step 1", (box / "out/angry.train/previews/step_0000001.png").exists, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    after = snapshot(box)
    assert proc.returncode == 130, err
    one_line_interrupt(err, "emostyle-train")
    assert "--resume" in err
    assert not changed_outside(before, after, under("out/angry.train"))
    assert not [p for p in after if own_temp(p)] and "out/angry.train/checkpoint.pth" in after
    done = subprocess.run([sys.executable, "-m", "emostyle_train.cli", *argv, "--steps", "3", "--resume"], cwd=box,
                          capture_output=True, text=True, env=child_env())
    assert done.returncode == 0, done.stderr
    assert not changed_outside(after, snapshot(box), under("out/angry.pth", "out/angry.train"))


@pytest.mark.slow
def test_train_all_touches_only_its_bundle_and_work_folder(box: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """emostyle-train all (one tiny style for all emotions, a given classifier) exports its bundle; a rerun is
    refused; --resume --force replaces only the bundle's own files."""
    import keras

    from emostyle_export.models.classifier import build_classifier

    from emostyle_train.cli import main

    keras.utils.set_random_seed(0)
    build_classifier().save(box / "given.keras")
    (box / "train.toml").write_text('[style]\ncontent = "photos"\nsize = 32\nbatch = 2\nsteps = 2\n'
                                    'preview_every = 1\npreview_images = 1\n[styles]\n'
                                    + "".join(f'{e} = "style.png"\n' for e in EMOTIONS)
                                    + '[classifier]\nmodel = "given.keras"\n')
    argv = ["all", "--config", "train.toml", "-o", "bundles/mine", "-q"]
    before = snapshot(box)
    assert main(argv) == 0, capsys.readouterr().err
    after = snapshot(box)
    assert not changed_outside(before, after, under("bundles/mine", "bundles/mine.train"))
    load_manifest(box / "bundles/mine")
    assert main(argv) == 2 and snapshot(box) == after
    (box / "bundles/mine/notes.txt").write_text("mine\n")  # the user's file in the bundle: --force refuses it
    assert main([*argv, "--resume", "--force"]) == 2
    typed(capsys.readouterr().err, "notes.txt")
    (box / "bundles/mine/notes.txt").unlink()
    before = snapshot(box)
    assert main([*argv, "--resume", "--force"]) == 0, capsys.readouterr().err
    assert not changed_outside(before, snapshot(box), under("bundles/mine", "bundles/mine.train"))


# ---------------------------------------------------------------- emostyle-bench


def test_bench_outputs_never_replace_files_without_force(box: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import emostyle_bench.bench as bench
    from emostyle_bench.cli import main

    monkeypatch.setattr(bench, "run_benchmark", _fail("the benchmark started measuring before the error"))
    cases = [
        (["--from-json", "q.json", "--markdown", "notes.md"], "already exists"),
        (["--from-json", "q.json", "--chart", "photo.jpg"], "already exists"),
        (["--from-json", "q.json", "--json", "q.json"], "same file"),
        (["--from-json", "q.json", "--markdown", "./q.json", "--force"], "same file"),
        (["--from-json", "q.json", "--chart", "photos/p0.png"], "already exists"),  # an input of emostyle
        (["--stages", "classify", "--json", "notes.md"], "already exists"),
        (["--stages", "classify", "--chart", "photo.jpg"], "already exists"),
        (["--stages", "classify", "--markdown", "photos"], "is a folder"),
    ]
    for argv, needle in cases:
        before = snapshot(box)
        assert main([*argv, "-q"]) == 2, argv
        typed(capsys.readouterr().err, "error:", needle)
        assert snapshot(box) == before, argv
    for argv in (["--from-json", "q.json", "--json", ""], ["--from-json", "", "--markdown", "m.md"]):
        before = snapshot(box)
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and snapshot(box) == before
        typed(capsys.readouterr().err, "an empty path")
    before = snapshot(box)
    assert main(["--from-json", "q.json", "--json", "re.json", "--markdown", "notes.md", "--chart", "new.png",
                 "--force", "-q"]) == 0, capsys.readouterr().err
    after = snapshot(box)
    assert {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)} == {"re.json", "notes.md",
                                                                                        "new.png"}
    assert json.loads((box / "re.json").read_text())["rows"]  # --from-json X --json Y writes Y
    capsys.readouterr()
    assert main(["--from-json", "re.json", "-q"]) == 0  # and Y is a result it reads back


def test_bench_says_only_what_holds(demo_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--list-paths claims no Haar where OpenCV has none, no AOTInductor path without packages; paths that cannot
    run are "unavailable" rows with the reason, naming only their own device; --stages classify runs no style cold
    start; an unknown --paths value lists the real names."""
    from emostyle_bench import cli
    from emostyle_bench.bench import Runner
    from emostyle_bench.paths import Context, default_paths

    from emostyle_rt.detection.faces import haar_available

    assert cli.main(["--list-paths", "--bundle", str(demo_bundle)]) == 0
    rows = {(ln.split()[0], ln.split()[1]): ln for ln in capsys.readouterr().out.splitlines()
            if ln.split()[:1] in (["detect"], ["classify"], ["style"], ["chain"], ["video"])}
    if not haar_available()[0]:
        assert " not here: " in rows[("detect", "haar")]
    manifest = load_manifest(demo_bundle)
    if not manifest.aoti:
        for key in (("style", "aoti-cpu"), ("chain", "aoti-cpu")):
            assert " not here: " in rows[key] and "--aoti" in rows[key], rows[key]
    runner = Runner(Context(demo_bundle), default_paths(), repeat={}, warmup=0, budget_s=0.0)
    for p in default_paths():
        if p.name.startswith("aoti-") and not manifest.aoti:
            b = runner.build(p)
            assert b.status == "unavailable" and b.reason, (p.stage, p.name, b)
            if p.device == "cuda":
                assert "cpu-" not in b.reason, b.reason  # a CUDA row never names CPU package keys

    settings, _ = cli._plan(cli.build_parser().parse_args(["--stages", "classify"]), demo_bundle)
    assert "style" not in settings.coldstart and "chain" not in settings.coldstart  # type: ignore[attr-defined]
    settings, _ = cli._plan(cli.build_parser().parse_args(["--quick", "--stages", "classify"]), demo_bundle)
    assert settings.coldstart == ()  # type: ignore[attr-defined]
    assert cli.main(["--bundle", str(demo_bundle), "--paths", "ort-cpu,nosuch", "-q"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "available" in err
    available = err.split("available", 1)[1]
    assert "torch-eager" in available and "nosuch" not in available, err


def test_bench_aoti_note_names_only_its_devices_packages(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU machine with a bundle holding only CPU packages, the CUDA row says what CUDA key it looks for and
    that the bundle has no CUDA package, never the CPU keys (the issue: "the CUDA row's note names CPU package
    keys"); the CPU row names the CPU ones."""
    from dataclasses import replace

    import emostyle_rt.backends.aoti as aoti_backend
    import emostyle_rt.backends.ort as ortb
    from emostyle_bench.paths import aoti_missing

    from emostyle_rt.bundle.compiled import AotiEntry, AotiHost

    manifest = load_manifest(demo_bundle)
    sid = next(iter(manifest.styles))
    cpu_key = "cpu-avx512-torch2.13.0"
    entry = AotiEntry(sid, f"aoti/{cpu_key}/{sid}.pt2", f"aoti/{cpu_key}/{sid}.pt2.json", cpu_key, "cpu", "fp32",
                      "0" * 64)
    m = replace(manifest, aoti=(entry,))
    monkeypatch.setattr(ortb, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(aoti_backend, "host", lambda: AotiHost("2.13.0", ("avx512", "avx2"), "9.0", "H100"))
    cuda = aoti_missing(m, [sid], "cuda")
    assert cuda and "cuda-sm90-torch2.13.0" in cuda and "no CUDA packages" in cuda and "cpu-" not in cuda, cuda
    assert "--device cuda" in cuda
    cpu = aoti_missing(m, [sid], "cpu")  # the sidecar is not there: the CPU row names what the bundle lists
    assert cpu and cpu_key in cpu and "cuda-" not in cpu, cpu


def test_bench_ctrl_c_one_line_130_no_leftovers(box: Path, demo_bundle: Path) -> None:
    """Ctrl-C while importing, during a cold start (its input file written, its subprocess running) and while
    Keras runs in-process: one line, exit 130, no result file, no emostyle-bench-*.npy left."""
    tmp = box / "tmp"
    tmp.mkdir()
    argv = ["--bundle", str(demo_bundle.resolve()), "--stages", "classify", "--batches", "1", "--repeat", "1",
            "--paths", "keras-eager,ort-cpu", "--json", "out.json", "--markdown", "out.md"]
    ctrl_c_while_importing("emostyle-bench", [*argv, "-q"], box)
    (tmp / "emostyle-bench-99999999-abcdefgh.npy").write_bytes(b"a killed run's (pid gone)")
    (tmp / f"emostyle-bench-{os.getpid()}-abcdefgh.npy").write_bytes(b"a live run's")
    (tmp / "emostyle-bench-abcdefgh.npy").write_bytes(b"not our name: an older release's, or someone's")

    home = box.parent / "home"  # a home of its own and telemetry not set: onnxruntime must write nothing there
    env = {k: v for k, v in child_env(TMPDIR=str(tmp), HOME=str(home), XDG_CACHE_HOME=str(home / ".cache")).items()
           if k != "ORT_DISABLE_TELEMETRY"}
    before = snapshot(box)
    proc = subprocess.Popen([sys.executable, "-m", "emostyle_bench.cli", *argv, "--coldstart-stages", "classify",
                             "-q"], cwd=box, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    npy = lambda: [p for p in tmp.glob("emostyle-bench-*.npy") if str(os.getpid()) not in p.name  # noqa: E731
                   and "99999999" not in p.name and p.name != "emostyle-bench-abcdefgh.npy"]
    wait_for("the cold start's input file", lambda: bool(npy()), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    one_line_interrupt(err, "emostyle-bench")
    after = snapshot(box)
    assert not npy(), "the cold start's input file was left"
    # onnxruntime keeps a session id in the temporary folder (tmp/.ses): its own file, not one of ours
    assert not changed_outside(before, after, lambda p: p in ("tmp/emostyle-bench-99999999-abcdefgh.npy", "tmp/.ses"))
    assert "tmp/emostyle-bench-abcdefgh.npy" in after and f"tmp/emostyle-bench-{os.getpid()}-abcdefgh.npy" in after

    before = snapshot(box)
    proc = subprocess.Popen([sys.executable, "-m", "emostyle_bench.cli", *argv, "--no-coldstart"], cwd=box,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    read_line_until(proc, "keras-eager (output check)")  # Keras (TensorFlow) runs in this process now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    one_line_interrupt(err, "emostyle-bench")
    assert not changed_outside(before, snapshot(box), lambda p: p == "tmp/.ses")
    assert not (home / ".cache/Microsoft").exists(), "onnxruntime's telemetry wrote into the home"
