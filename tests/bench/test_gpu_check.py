"""The prepared GPU check (scripts/gpu/check.sh, emostyle_bench.gpu_check) proven on the CPU before a GPU is asked for.

The dry run goes through the same script, the same PYTHONPATH links and the same stage children as on the
device, with TensorFlow, Ray, TensorRT and the other packages the device lacks made unimportable; a hung or
crashing stage is recorded and the report still written; the AOTInductor diagnosis says at which step and
by which signal its child died.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("skimage")

from emostyle_bench import gpu_check as gc  # noqa: E402
from emostyle_rt.manifest import load_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def check_bundle(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("onnxconverter_common")
    return gc.make_check_bundle(demo_bundle, tmp_path_factory.mktemp("gpucheck") / "bundle")


def test_the_bundle_that_travels_is_one_style_with_fp16_and_tiled_graphs(check_bundle: Path) -> None:
    m = load_manifest(check_bundle)  # every file it names is there, with its sha256
    (sid,) = m.styles
    assert set(m.emotions.values()) == {sid} and set(m.emotions) == set(m.labels)
    spec = m.styles[sid]
    assert spec.fp16 is not None and m.classifier.fp16 is not None and spec.tiled is not None
    assert m.detector is not None and not m.engines and not m.aoti
    files = {p.relative_to(check_bundle).as_posix() for p in check_bundle.rglob("*") if p.is_file()}
    assert not any(f.startswith(("aoti/", "trt/")) for f in files)
    assert all(f.startswith((f"styles/{sid}.", "classifier", "detector/", "manifest")) for f in files), files
    # it travels with the work tree in one call of at most 64 MiB (about 5 MiB of work tree today)
    assert gc.folder_bytes(check_bundle) < 45 << 20


def _dry_run(bundle: Path, tmp: Path, *options: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "GPUCHECK_LINKS": str(tmp / "links"),
           "GPUCHECK_SITE": str(tmp / "no-site"), "OUT": str(tmp / "out")}
    env.pop("PYTHONPATH", None)
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "check.sh"), "--dry-run", "--bundle", str(bundle),
                           "--work", str(tmp / "work"), *options], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=900, check=False)


def _report(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "gpu-cpu-dry-run.json").read_text())


def test_dry_run_through_check_sh_writes_the_reports(check_bundle: Path, tmp_path: Path) -> None:
    """env and bench through the device's script: links, PYTHONPATH, stage children, report, log."""
    done = _dry_run(check_bundle, tmp_path, "--only", "env,bench")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = _report(tmp_path)
    assert {k: v["status"] for k, v in data["stages"].items()} == {"env": "ok", "bench": "ok"}
    machine = data["machine"]
    assert machine["onnxruntime_providers"] and "tensorflow" in machine["blocked_or_missing"]
    assert str(tmp_path / "links") not in machine["onnxruntime_file"]
    rows = data["bench"]["rows"]
    timed = {(r["path"], r["stage"], r["size"]) for r in rows if "median_ms" in r}
    for path in ("torch-eager-fp32", "torch-eager-fp16", "ort-cpu-fp32", "ort-cpu-fp16", "stylizer-default"):
        for stage in ("style", "chain"):
            assert {(path, stage, s) for s in gc.DRY_SIZES} <= timed, (path, stage)
    assert all(r.get("psnr_db") is None or r["psnr_db"] >= gc.MIN_PSNR_DB for r in rows if "median_ms" in r)
    skipped = {r["path"]: r["skipped"] for r in rows if "skipped" in r}
    assert set(skipped) == {"ort-cpu-fp32-graph", "ort-cpu-fp16-graph"} and "CUDA EP" in skipped["ort-cpu-fp16-graph"]
    assert not [r for r in rows if "error" in r]
    chain = [r for r in rows if r["stage"] == "chain" and r["path"] == "torch-eager-fp32"]
    assert all(r["runner"] == "torch-eager:cpu" and r["face"] for r in chain)  # the eager style ran in the chain
    assert [t for t in data["targets"] if t["target"].startswith("chain through the runtime")]
    md = (tmp_path / "out" / "gpu-cpu-dry-run.md").read_text()
    assert md.startswith("# GPU check: dry run on the CPU") and "| 64x64 | chain | stylizer-default |" in md
    log = (tmp_path / "out" / "check.log").read_text()
    assert "check.sh: python" in log and "===== stage bench: ok" in log


@pytest.mark.slow
def test_the_whole_dry_run(check_bundle: Path, tmp_path: Path) -> None:
    """Every stage on the CPU (AOTInductor CPU build, torch.compile, tiles, video, serve, pytest)."""
    done = _dry_run(check_bundle, tmp_path, "--cap-scale", "4", "--deadline", "2400")
    data = _report(tmp_path)
    assert done.returncode == 0, {k: v for k, v in data["stages"].items() if v["status"] != "ok"}
    assert data["pytest"]["counts"]["failed"] == 0 and data["pytest"]["counts"]["skipped"] >= 8
    a = data["aoti"]
    assert a["build"]["status"] == "ok" and [d["status"] for d in a["diagnosis"]] == ["ok", "ok"]
    assert {r["stage"] for r in a["rows"] if "median_ms" in r} == {"style", "chain"}
    assert any(r["path"] == "torch-compile" and "median_ms" in r for r in data["compile"]["rows"])
    tiled = {r["mode"]: r for r in data["tiled8k"]["rows"]}
    assert tiled["fast"]["plan_mode"] == "fast" and tiled["exact"]["plan_mode"] == "exact"
    assert tiled["exact"]["max_diff"] <= 2 and tiled["fast"]["psnr_db"] is None or tiled["fast"]["psnr_db"] > 30
    assert data["video"]["file_to_file"]["fps"] > 0 and data["video"]["cli"]["exit"] == 0
    assert data["serve"]["summary"]["c8"]["errors"] == 0 and data["serve"]["exit"] == 0


def test_a_hung_or_crashing_stage_is_recorded_and_the_report_is_still_written(tmp_path: Path) -> None:
    log, result = tmp_path / "check.log", tmp_path / "x.json"
    hang = gc.run_stage([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(120)"],
                        log, result, cap_s=2)
    assert hang["status"] == "timeout" and "killed at its 2 s cap" in hang["exit"] and "started" in hang["said"]
    crash = gc.run_stage([sys.executable, "-X", "faulthandler", "-c", "import faulthandler; faulthandler._sigsegv()"],
                         log, result, cap_s=60)
    assert crash["status"] == "crashed" and "SIGSEGV" in crash["exit"] and "Fatal Python error" in crash["said"]
    ok = gc.run_stage([sys.executable, "-c", "print('fine')"], log, result, cap_s=60)
    assert ok["status"] == "ok" and "said" not in ok
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    out.mkdir()
    # a bench stage cut off after two rows: the report keeps them
    gc.write_json_atomic(work / "bench.json", {"rows": [
        {"size": "1920x1080", "stage": "style", "path": "torch-eager-fp32", "median_ms": 18.0, "p10_ms": 17.0,
         "p90_ms": 19.0},
        {"size": "1920x1080", "stage": "chain", "path": "stylizer-default", "median_ms": 24.0, "p10_ms": 23.0,
         "p90_ms": 25.0, "runner": "onnxruntime:CUDAExecutionProvider:fp16"}]})
    gc.write_json_atomic(work / "env.json", {"machine": {"gpu": "NVIDIA H100 80GB HBM3", "driver": "580.159.04"}})
    state = {"check": {"started": "now", "dry_run": False, "deadline_s": 470, "bundle": "b"},
             "stages": {"env": {"status": "ok", "cap_s": 30}, "bench": hang | {"cap_s": 110}}}
    js, md = gc.write_report(out, state, work)
    assert js.name == "gpu-nvidia-h100-80gb-hbm3.json"
    text = md.read_text()
    assert "| bench | timeout |" in text and "| 1920x1080 | chain | stylizer-default |" in text
    targets = {t["target"]: t for t in json.loads(js.read_text())["targets"]}
    chain = targets["chain through the runtime >= 1x eager fp32 end to end, 1920x1080"]
    assert chain["measured"] == 0.75 and chain["met"] is False
    assert targets["auto picks the FP16 graph on CUDA"]["met"] is True


def test_the_aoti_diagnosis_says_at_which_step_and_by_which_signal_its_child_died(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = gc.Ctx(tmp_path, True, tmp_path, tmp_path, gc.Recorder(tmp_path / "aoti.json"))
    bogus = tmp_path / "style.pt2"
    bogus.write_bytes(b"not a package")
    monkeypatch.setenv(gc.CRASH_AT_ENV, "load package")
    crashed = gc._aoti_attempt(ctx, bogus, "cpp", {}, 120, [(64, 64)])
    assert crashed["status"] == "crashed" and "SIGSEGV" in crashed["exit"]
    assert crashed["last_step"] == "load package with the cpp loader"
    assert "Fatal Python error" in crashed["said"] and crashed["env"]["TORCH_SHOW_CPP_STACKTRACES"] == "1"
    monkeypatch.delenv(gc.CRASH_AT_ENV)
    failed = gc._aoti_attempt(ctx, bogus, "aoti_load_package", {}, 120, [(64, 64)])
    assert failed["status"] == "failed" and failed["last_step"].startswith("load package")
    assert "zip" in failed["said"].lower()  # torch's own message, not "no message"
    assert "crashed" in gc._verdict({"status": "failed"}, [crashed, failed]) and "load package" in gc._verdict(
        {"status": "failed"}, [crashed, failed])


def test_unknown_stages_and_a_missing_bundle_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert gc.main(["--only", "bench,nope", "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err
    assert gc.main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "--make-bundle" in capsys.readouterr().err


def test_the_docs_give_the_stages_and_caps_the_driver_uses_within_eight_minutes() -> None:
    import re

    text = (REPO / "docs" / "gpu-check.md").read_text()
    table = dict(re.findall(r"^\| ([a-z0-9]+) \| (\d+) \|", text, flags=re.M))
    assert {k: int(v) for k, v in table.items()} == {s.name: s.cap_s for s in gc.STAGES}
    assert gc.DEFAULT_DEADLINE_S + 10 <= 8 * 60  # the 8 minutes, with the unpack of the wheels
    assert "bash scripts/gpu/check.sh" in text and '`[".gpucheck"]`' in text and "timeout_s" in text
    pack = (REPO / "scripts" / "gpu" / "pack.sh").read_text()
    assert "onnxruntime-gpu==1.31.1" in pack and "av==" in pack and "starlette==" in pack


def test_wheel_parts_are_recut_smaller_and_still_unpack(tmp_path: Path) -> None:
    """A work tree larger than device-pack's 8 MiB of room gets smaller parts; unpack.sh's checksum still holds."""
    import hashlib
    import tarfile

    payload = tmp_path / "site"
    (payload / "pkg").mkdir(parents=True)
    (payload / "pkg" / "blob.bin").write_bytes(os.urandom(5 << 20))
    tar = tmp_path / "site.tar"
    with tarfile.open(tar, "w") as t:
        t.add(payload / "pkg", arcname="pkg")
    data = tar.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    dev = tmp_path / ".dev"
    half = len(data) // 2 + 1
    for i, chunk in enumerate((data[:half], data[half:]), 1):  # two parts, as device-pack writes them
        (dev / f"p{i}").mkdir(parents=True)
        (dev / f"p{i}" / f"part{i}").write_bytes(chunk)
    parts, site = tmp_path / "dvparts", tmp_path / "unpacked"
    (dev / "p1" / "unpack.sh").write_text(  # device-pack's unpack.sh with the paths of this test (and no xz)
        f'set -euo pipefail\n[ "$(cat {parts}/part* | sha256sum | cut -d" " -f1)" = "{sha}" ] || exit 3\n'
        f'mkdir -p {site} && cat {parts}/part* | tar -x -C {site}\n')
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "resplit.sh"), "2", str(dev)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    cut = sorted(dev.glob("p*"))
    assert len(cut) == 3 and all((d / f"part{d.name[1:]}").stat().st_size <= 2 << 20 for d in cut)
    parts.mkdir()
    for d in cut:  # what the part calls do: cp .dev/pN/* /tmp/dvparts/
        for f in d.iterdir():
            (parts / f.name).write_bytes(f.read_bytes())
    assert subprocess.run(["bash", str(parts / "unpack.sh")], check=False).returncode == 0
    assert (site / "pkg" / "blob.bin").read_bytes() == (payload / "pkg" / "blob.bin").read_bytes()
    refused = subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "resplit.sh"), "0", str(dev)],
                              capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "MAX_MIB" in refused.stdout and len(sorted(dev.glob("p*"))) == 3
