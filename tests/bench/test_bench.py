"""emostyle-bench: statistics, agreement gate, ranking, report structure; a tiny end-to-end run (slow).

Nothing here checks speed: only that the numbers are computed right and that a
path giving wrong outputs is reported as wrong and never ranked.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from emostyle_bench import cli
from emostyle_bench.agreement import compare_chain, compare_images, compare_probs, psnr
from emostyle_bench.images import Size, parse_size, photo
from emostyle_bench.machine import MachineInfo
from emostyle_bench.paths import BenchPath, ChainOutput, default_paths
from emostyle_bench.report import (
    ColdStart,
    Report,
    Row,
    Settings,
    compute_targets,
    markdown,
    rank_rows,
    report_from_dict,
    write_chart,
)
from emostyle_bench.stats import measure, percentile, summarize

from emostyle_rt.errors import InvalidArgumentError

# ---------------------------------------------------------------- statistics


def test_percentile_matches_numpy() -> None:
    xs = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 10, 50, 90, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_summarize_median_p90_spread_throughput() -> None:
    t = summarize([10.0, 20.0, 30.0, 40.0, 50.0], batch=4)
    assert t.median_ms == 30.0
    assert t.p90_ms == pytest.approx(46.0)
    assert t.p10_ms == pytest.approx(14.0)
    assert t.spread_pct == pytest.approx((46.0 - 14.0) / 30.0 * 100)
    assert t.throughput == pytest.approx(4 / 0.030)
    assert (t.min_ms, t.max_ms, t.n) == (10.0, 50.0, 5)


@pytest.mark.parametrize("bad", [[], [1.0, -1.0], [float("nan")]])
def test_summarize_rejects_bad_samples(bad: list[float]) -> None:
    with pytest.raises(InvalidArgumentError):
        summarize(bad)


def test_measure_warmup_repeat_and_budget() -> None:
    calls: list[int] = []
    now = [0.0]

    def clock() -> float:
        return now[0]

    def fn() -> None:
        calls.append(1)
        now[0] += 0.5  # every call takes 0.5 s

    t = measure(fn, warmup=2, repeat=10, budget_s=1.2, clock=clock)
    # 2 warm-ups; timed calls stop once 1.2 s are spent (but never fewer than 3)
    assert len(calls) == 2 + 3 and t.n == 3 and t.median_ms == pytest.approx(500.0)
    calls.clear()
    t = measure(fn, warmup=0, repeat=2, budget_s=100, clock=clock)
    assert t.n == 2 and len(calls) == 2
    with pytest.raises(InvalidArgumentError):
        measure(fn, repeat=0)
    calls.clear()
    # a deadline 0.7 s ahead allows the first timed call only (the next would end past it)
    t = measure(fn, warmup=0, repeat=10, deadline=now[0] + 0.7, clock=clock)
    assert t.n == 1 and len(calls) == 1


def test_measure_interleaved_rounds_share_the_load() -> None:
    from emostyle_bench.stats import measure_interleaved

    now = [0.0]
    order: list[str] = []

    def clock() -> float:
        return now[0]

    def make(name: str, cost: float):  # noqa: ANN202
        def fn() -> None:
            order.append(name)
            now[0] += cost
        return fn

    t = measure_interleaved({"a": make("a", 0.2), "b": make("b", 0.1)}, warmup=1, repeat=4, clock=clock)
    assert order == ["a", "b"] * 5  # one warm-up round, then four timed rounds, alternating
    assert t["a"].median_ms == pytest.approx(200.0) and t["b"].median_ms == pytest.approx(100.0)
    assert t["a"].n == t["b"].n == 4
    order.clear()
    # budget: 0.25 s per function -> 0.5 s of rounds; each round costs 0.3 s -> stops after the minimum of 3
    t = measure_interleaved({"a": make("a", 0.2), "b": make("b", 0.1)}, repeat=10, budget_s=0.25, clock=clock)
    assert t["a"].n == 3
    t = measure_interleaved({"a": make("a", 0.2)}, repeat=10, deadline=now[0] + 0.3, clock=clock)
    assert t["a"].n == 1
    assert measure_interleaved({}) == {}


def test_cases_run_cheapest_first() -> None:
    from emostyle_bench.bench import make_cases

    cases = make_cases(("style", "classify", "chain"), [Size(1080, 1920), Size(512, 512)], (1, 4), (1,))
    assert [c.stage for c in cases[:2]] == ["classify", "classify"]
    assert [(c.stage, c.size.name) for c in cases[2:]] == [("style", "512x512"), ("chain", "512x512"),
                                                            ("style", "1920x1080"), ("chain", "1920x1080")]


# ---------------------------------------------------------------- agreement


def test_compare_probs_gate() -> None:
    ref = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], np.float32)
    assert compare_probs(ref, ref + 1e-6).ok
    flipped = ref[:, ::-1].copy()
    a = compare_probs(ref, flipped)
    assert not a.ok and a.top1_agree is False
    assert not compare_probs(ref, ref + 0.05).ok  # top-1 same, but too far for fp32
    assert compare_probs(ref, ref + 0.005, "fp16").ok
    assert not compare_probs(ref, ref[:1]).ok
    # a tie in the reference may flip without being wrong
    tie = np.array([[0.4, 0.4 + 1e-7, 0.2]])
    assert compare_probs(tie, np.array([[0.4 + 2e-7, 0.4, 0.2]])).ok


def test_compare_images_gate() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (1, 16, 20, 3), dtype=np.uint8)
    assert compare_images(ref, ref.copy()).summary == "identical"
    near = ref.copy()
    near[0, 0, 0, 0] ^= 1
    assert compare_images(ref, near).ok
    assert not compare_images(ref, np.zeros_like(ref)).ok
    assert not compare_images(ref, ref.astype(np.float32)).ok
    assert not compare_images(ref, ref[:, :8]).ok
    assert math.isinf(psnr(ref, ref))


def test_compare_chain_needs_same_emotions() -> None:
    img = np.zeros((1, 8, 8, 3), np.uint8)
    assert compare_chain(ChainOutput(("happy",), img), ChainOutput(("happy",), img)).ok
    assert not compare_chain(ChainOutput(("happy",), img), ChainOutput(("sad",), img)).ok


# ---------------------------------------------------------------- report


def _machine() -> MachineInfo:
    return MachineInfo("test cpu", 2, 2, 8.0, "none", "Linux", "3.11", (("numpy", "2"),), (0.1, 0.1, 0.1))


def _row(path: str, median: float | None, status: str = "ok", role: str = "ours", stage: str = "style") -> Row:
    from emostyle_bench.agreement import Agreement

    timing = summarize([median] * 3) if median is not None else None
    return Row(stage=stage, path=path, label=path, role=role, device="cpu", input="512x512", batch=1,
               status=status, timing=timing if status == "ok" else None,
               agreement=Agreement(status == "ok", "x"), reason="" if status == "ok" else "bad")


def test_rank_rows_skips_wrong_and_adds_speedups() -> None:
    rows = [_row("torch-eager", 800.0, role="baseline"), _row("ort-cpu", 400.0),
            _row("fast-but-wrong", 1.0, status="wrong"), _row("ort-cuda", None, status="unavailable")]
    ranked = {r.path: r for r in rank_rows(rows, (("torch-eager", "x eager"),))}
    assert ranked["ort-cpu"].rank == 1 and ranked["torch-eager"].rank == 2
    assert ranked["ort-cpu"].speedup("torch-eager") == pytest.approx(2.0)
    assert ranked["fast-but-wrong"].rank is None and ranked["fast-but-wrong"].speedups == ()
    assert ranked["ort-cuda"].rank is None


def _report(rows: list[Row], cold: list[ColdStart]) -> Report:
    s = Settings("b", True, ("style",), ("512x512",), (1,), None, (("style", 3),), 0, 5.0, ("chain",), "512x512")
    return Report(_machine(), s, tuple(rows), tuple(cold), compute_targets(rows, cold), "now", 1.0,
                  (0.1, 0.1, 0.1), True, ("note",))


def test_targets_markdown_json(tmp_path: Path) -> None:
    rows = rank_rows([_row("torch-eager", 900.0, role="baseline"), _row("ort-cpu", 450.0),
                      _row("broken", 5.0, status="wrong")], (("torch-eager", "x eager"),))
    cold = [ColdStart("chain", "eager-chain", "eager", "baseline", "512x512", "ok", wall_s=8.0, load_s=6.0,
                      first_s=1.0, peak_rss_mb=1200.0),
            ColdStart("chain", "ort-cpu", "ours", "ours", "512x512", "ok", wall_s=1.0, load_s=0.5, first_s=0.4,
                      peak_rss_mb=300.0)]
    rep = _report(rows, cold)
    t = {x.name: x for x in rep.targets}
    assert t["style network 512x512 vs eager PyTorch"].met is True
    assert t["style network 1920x1080 vs eager PyTorch"].met is None  # not measured
    assert t["cold start vs eager stack"].met is True and t["peak RSS vs eager stack"].met is True
    md = markdown(rep)
    assert "| stage | input | batch | path |" in md
    assert "WRONG (not ranked)" in md and "2.00x vs eager" in md and "Cold start" in md
    d = json.loads(rep.to_json())
    assert {"machine", "settings", "rows", "coldstarts", "targets", "started", "duration_s"} <= set(d)
    assert d["machine"]["cpu"] == "test cpu"
    wrong = [r for r in d["rows"] if r["path"] == "broken"][0]
    assert wrong["status"] == "wrong" and wrong["rank"] is None and wrong["timing"] is None
    again = report_from_dict(json.loads(rep.to_json()))
    assert again == rep and markdown(again) == md
    png = write_chart(rep, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missed_target_says_by_how_much() -> None:
    rows = rank_rows([_row("torch-eager", 600.0, role="baseline"), _row("ort-cpu", 500.0)],
                     (("torch-eager", "x eager"),))
    t = {x.name: x for x in _report(rows, []).targets}["style network 512x512 vs eager PyTorch"]
    assert t.met is False and "short by 1.25x" in t.note


def test_no_verdict_from_a_single_run() -> None:
    one = dataclasses.replace(_row("ort-cpu", 100.0), timing=summarize([100.0]))
    rows = rank_rows([_row("torch-eager", 600.0, role="baseline"), one], (("torch-eager", "x eager"),))
    t = {x.name: x for x in _report(rows, []).targets}["style network 512x512 vs eager PyTorch"]
    assert t.met is None and "too few runs" in t.note


# ---------------------------------------------------------------- inputs and CLI


def test_parse_size_and_photo() -> None:
    assert parse_size("1080p") == Size(1080, 1920) and parse_size("640x360") == Size(360, 640)
    with pytest.raises(InvalidArgumentError):
        parse_size("huge")
    img = photo(Size(72, 128))
    assert img.shape == (72, 128, 3) and img.dtype == np.uint8 and img.std() > 20  # a photo, not flat


def test_registry_covers_every_stage_and_gpu_path() -> None:
    names = {(p.stage, p.name) for p in default_paths()}
    for stage in ("classify", "style", "chain"):
        assert {(stage, "ort-cpu"), (stage, "ort-cuda"), (stage, "ort-trt-ep"), (stage, "tensorrt")} <= names
    assert {("classify", "keras-eager"), ("classify", "keras-tf-function"), ("classify", "keras-predict"),
            ("style", "torch-eager"), ("style", "torch-cuda-fp32"), ("style", "torch-cuda-fp16"),
            ("chain", "eager-chain"), ("detect", "haar")} <= names


def test_cli_missing_bundle_and_bad_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--bundle", str(tmp_path / "nope"), "-q"]) == 2
    assert "emostyle-export --demo -o" in capsys.readouterr().err
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{}")
    assert cli.main(["--bundle", str(tmp_path / "b"), "--stages", "nonsense", "-q"]) == 2
    assert cli.main(["--bundle", str(tmp_path / "b"), "--paths", "warp-drive", "-q"]) == 2
    assert cli.main(["--list-paths"]) == 0
    assert "keras-tf-function" in capsys.readouterr().out


# ---------------------------------------------------------------- end to end (slow)


def _wrong_style(ctx: object) -> object:
    """A fast path with wrong outputs: it must be reported as wrong and not ranked."""
    return lambda images: np.zeros_like(images)


def _wrong_classifier(ctx: object) -> object:
    def run(crops: np.ndarray) -> np.ndarray:
        p = np.zeros((len(crops), 7), np.float32)
        p[:, 0] = 1.0
        return p

    return run


@pytest.mark.slow
def test_tiny_benchmark_end_to_end(demo_bundle: Path, tmp_path: Path) -> None:
    from emostyle_bench.bench import make_cases, run_benchmark

    paths = default_paths() + (
        BenchPath("zeros", "style", "broken: zeros", "ours", _wrong_style),
        BenchPath("always-angry", "classify", "broken: always angry", "ours", _wrong_classifier),
    )
    names = ("mtcnn", "haar", "keras-eager", "ort-cpu", "ort-cuda", "tensorrt", "torch-eager", "eager-chain", "zeros",
             "always-angry")
    settings = Settings(str(demo_bundle), True, ("detect", "classify", "style", "chain"), ("96x64",), (1, 2), names,
                        (("classify", 3), ("detect", 2), ("style", 2), ("chain", 2)), 0, 1.0, ("classify",),
                        "96x64")
    cases = make_cases(settings.stages, [Size(64, 96)], (1, 2), (1,))
    rep = run_benchmark(settings, cases, paths=paths, coldstart_size=Size(64, 96))

    by = {(r.stage, r.path, r.batch): r for r in rep.rows}
    zeros = by[("style", "zeros", 1)]
    assert zeros.status == "wrong" and zeros.rank is None and zeros.timing is None and "PSNR" in zeros.reason
    angry = by[("classify", "always-angry", 1)]
    # the demo classifier's top-1 on the astronaut is not "angry" with p=1: max diff fails either way
    assert angry.status == "wrong" and angry.rank is None
    for stage, batch in (("classify", 1), ("classify", 2), ("style", 1), ("chain", 1)):
        ours = by[(stage, "ort-cpu", batch)]
        assert ours.status == "ok" and ours.rank is not None and ours.agreement and ours.agreement.ok
        assert ours.timing is not None and ours.timing.n >= 2
        base = "keras-eager" if stage == "classify" else "torch-eager" if stage == "style" else "eager-chain"
        assert ours.speedup(base) is not None
    assert by[("style", "tensorrt", 1)].status == "unavailable" or by[("style", "tensorrt", 1)].status == "ok"
    assert by[("detect", "mtcnn", 1)].status == "ok"
    # OpenCV 5 removed the Haar cascades: the row must then say so instead of failing
    from emostyle_rt.detection.faces import haar_available

    haar = by[("detect", "haar", 1)]
    assert haar.status == ("ok" if haar_available()[0] else "unavailable")
    if haar.status == "unavailable":
        assert "OpenCV" in haar.reason
    assert {c.path for c in rep.coldstarts if c.status == "ok"} >= {"keras-eager", "ort-cpu"}
    for c in rep.coldstarts:
        if c.status == "ok":
            assert c.wall_s and c.wall_s > 0 and c.peak_rss_mb and c.peak_rss_mb > 10
    d = json.loads(rep.to_json())
    assert d["machine"]["libraries"] and d["settings"]["quick"] is True
    md = markdown(rep)
    assert "WRONG (not ranked)" in md and "broken: zeros" in md and "Targets" in md
    assert dataclasses.is_dataclass(rep) and rep.demo_bundle


@pytest.mark.slow
def test_cli_quick_subset_writes_outputs(demo_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["--bundle", str(demo_bundle), "--quick", "--stages", "classify", "--paths", "ort-cpu",
                   "--no-coldstart", "--repeat", "3", "--json", str(tmp_path / "r.json"),
                   "--chart", str(tmp_path / "r.png"), "--markdown", str(tmp_path / "r.md"), "-q"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| classify |" in out and "onnxruntime CPU" in out
    d = json.loads((tmp_path / "r.json").read_text())
    assert [r["status"] for r in d["rows"] if r["path"] == "ort-cpu"] == ["ok", "ok"]
    assert (tmp_path / "r.png").stat().st_size > 1000 and (tmp_path / "r.md").read_text().startswith("## ")


@pytest.mark.slow
def test_gpu_eager_script_smoke_on_cpu(tmp_path: Path) -> None:
    """The standalone GPU script runs with PyTorch alone (here on CPU, tiny) and writes its JSON."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "studies" / "gpu_eager" / "gpu_eager.py"
    out = tmp_path / "gpu.json"
    code = ("import sys, runpy\n"
            "main = runpy.run_path(sys.argv[1])['main']\n"
            "rc = main(sys.argv[2:])\n"
            "assert not any(m.startswith(('emostyle', 'tensorflow', 'onnx')) for m in sys.modules), 'not standalone'\n"
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(script), "--device", "cpu", "--sizes", "24x16",
                           "--batches", "1", "--warmup", "0", "--repeat", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = json.loads(out.read_text())
    assert {r["variant"] for r in d["rows"]} == {"fp32", "fp16", "fp32-channels_last", "fp16-channels_last"}
    assert all("end_to_end" in r and "compute" in r for r in d["rows"])
    assert d["machine"]["torch"]


def test_chain_path_plans_as_a_fresh_process(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """emostyle-bench builds the chain's Stylizer after other stages grew its process: the row must still measure
    what a user's process does (a 720p photo whole), not the 512 MB budget floor's tiles spooled to disk."""
    import logging

    import emostyle_rt.stylizer as stylizer_mod
    from emostyle_bench.paths import Context

    import emostyle_rt.tiling as tiling_mod

    monkeypatch.setattr(stylizer_mod, "process_rss", lambda: 5_400_000_000)  # what the style stage had left held
    # The floor this bug met (512 MB). Today's default keeps at least 1.5 GB for a process that holds memory, which
    # runs this photo whole anyway; the old floor keeps the test able to fail if the chain path judged the budget
    # by the process it runs in.
    monkeypatch.setattr(tiling_mod.memory, "HELD_FLOOR_BUDGET", tiling_mod.MIN_DEFAULT_BUDGET)
    (chain,) = [p for p in default_paths() if p.stage == "chain" and p.name == "ort-cpu"]
    run = chain.build(Context(demo_bundle))
    x = photo(Size(720, 1280))[None]  # 1280x720
    with caplog.at_level(logging.INFO, logger="emostyle_rt.stylizer"):
        out = run(x)
    assert out.images.shape == x.shape
    assert not [r for r in caplog.records if "in tiles" in r.getMessage()]
    # and the floor really would have tiled it: the default Stylizer in the same (faked) process does
    from emostyle_rt import Stylizer

    with Stylizer(demo_bundle, backend="onnxruntime") as st, caplog.at_level(logging.INFO, "emostyle_rt.stylizer"):
        st.stylize(x[0], emotion=st.labels[0])
    assert [r for r in caplog.records if "in tiles" in r.getMessage()]
