"""``emostyle-export`` and ``emostyle-bench`` under bad input: a typed message and exit 2, never a traceback.

Every bench case also proves the error comes before any measurement: the
function that would measure fails the test if it is called.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from emostyle_bench import cli as bench_cli
from emostyle_export import cli as export_cli
from emostyle_rt.errors import sentence
from emostyle_export.errors import CheckpointError


def _typed(err: str, *needles: str) -> None:
    """A one-line typed error: no traceback, no doubled full stop, every needle present."""
    assert "Traceback" not in err
    assert "error:" in err
    assert ".." not in err.replace("...", "")
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture()
def no_export_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the export starts building graphs."""
    import emostyle_export.bundle as bundle

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the export started before the error")

    monkeypatch.setattr(bundle, "_build", boom)


@pytest.fixture()
def no_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the benchmark starts measuring."""
    import emostyle_bench.bench as bench

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the benchmark started measuring before the error")

    monkeypatch.setattr(bench, "run_benchmark", boom)


def test_sentence_never_doubles_the_full_stop() -> None:
    assert sentence("disk full.") == "disk full."
    assert sentence("disk full") == "disk full."
    assert sentence(OSError(28, "No space left on device")) == "[Errno 28] No space left on device."
    assert sentence("what? ") == "what?"


# ---------------------------------------------------------------- emostyle-export


def test_export_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_export_work: None) -> None:
    (tmp_path / "afile").write_text("not a folder")
    assert export_cli.main(["--demo", "-o", str(tmp_path / "afile" / "bundle"), "-q"]) == 2
    _typed(capsys.readouterr().err, "afile is a file, not a folder", "-o under a folder")
    assert (tmp_path / "afile").read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


CONFIGS = [
    ("styles.toml", b'classifier = "c.keras"\nstyles = "x.pth"\n', ["key 'styles'", "a table of EMOTION = PATH",
                                                                    "string 'x.pth'"]),
    ("classifier.toml", b"classifier = 5\n", ["key 'classifier'", "expected a string", "integer 5"]),
    ("style_entry.toml", b"[styles]\nhappy = 5\n", ["key 'styles.happy'", "a path string", "integer 5"]),
    ("labels.json", b'{"labels": [1, 2]}', ["key 'labels'", "an array of strings", "array [1, 2]"]),
    ("five.json", b"5", ["the top level", "JSON object of settings", "integer 5"]),
    ("null.json", b"null", ["the top level", "available null"]),
    ("list.json", b'["a"]', ["the top level", "array ['a']"]),
    ("latin1.toml", 'classifier = "émotion.keras"\n'.encode("latin-1"), ["not UTF-8 text", "byte 0xe9",
                                                                          "a UTF-8 TOML file"]),
    ("broken.json", b"{", ["is not valid JSON"]),
]


@pytest.mark.parametrize(("name", "content", "needles"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_export_config_of_the_wrong_type(name: str, content: bytes, needles: list[str], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str], no_export_work: None) -> None:
    cfg = tmp_path / name
    cfg.write_bytes(content)
    assert export_cli.main(["--config", str(cfg), "-o", str(tmp_path / "out"), "-q"]) == 2
    _typed(capsys.readouterr().err, f"Config file {cfg}", *needles)
    assert not (tmp_path / "out").exists()


def test_export_config_folder_is_not_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export_cli.main(["--config", str(tmp_path), "-o", str(tmp_path / "out"), "-q"]) == 2
    _typed(capsys.readouterr().err, f"Cannot read config file {tmp_path}")


def test_export_same_emotion_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_export_work: None) -> None:
    args = ["--classifier", "c.keras", "--style", "happy=udnie.pth", "--style", "sad=rain.pth",
            "--style", "happy=candy.pth", "-o", str(tmp_path / "out"), "-q"]
    assert export_cli.main(args) == 2
    _typed(capsys.readouterr().err, "--style happy= is given twice", "'udnie.pth'", "'candy.pth'")


def test_export_flag_replaces_the_config_entry(tmp_path: Path) -> None:
    (tmp_path / "cfg.toml").write_text('classifier = "c.keras"\n[styles]\nhappy = "a.pth"\n')
    args = export_cli.build_parser().parse_args(["--config", str(tmp_path / "cfg.toml"), "--style", "happy=b.pth",
                                                 "--style", "happy=b.pth", "-o", "x"])
    plan = export_cli.plan_from_args(args)
    assert plan.styles["happy"].path == Path("b.pth")  # a flag wins over the file; a repeat of one value is fine


def test_export_keras_file_that_is_not_a_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "emotion.keras").write_text("hello, I am text")
    styles = []
    for e in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"):
        (tmp_path / f"{e}.pth").write_bytes(b"x")
        styles += ["--style", f"{e}={tmp_path / (e + '.pth')}"]
    out = tmp_path / "out"
    assert export_cli.main(["--classifier", str(tmp_path / "emotion.keras"), *styles, "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    _typed(err, "is not a Keras zip archive", "expected a .keras zip archive", "text starting 'hello, I am '")
    assert "File not found" not in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_h5_that_is_a_keras_archive_says_so(tmp_path: Path) -> None:
    import zipfile

    from emostyle_export.classifiers import load_classifier

    with zipfile.ZipFile(tmp_path / "m.h5", "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(CheckpointError, match=r"not an HDF5 file.*available a zip archive"):
        load_classifier(tmp_path / "m.h5")


def test_checkpoint_not_a_dict_names_the_file(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from emostyle_export.checkpoints import load_style_checkpoint

    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match=rf"Style checkpoint {path} is not a dict of tensors.*available list"):
        load_style_checkpoint(path)


def test_export_without_the_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str], no_export_work: None) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras now raises ModuleNotFoundError
    assert export_cli.main(["--demo", "-o", str(tmp_path / "out"), "-q"]) == 2
    _typed(capsys.readouterr().err, "needs the export extra", "keras is not installed", "install torch",
           'pip install "emostyle-rt[cpu,export]"')
    assert not (tmp_path / "out").exists()


def test_export_module_missing_past_the_check_is_still_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(export_cli, "needed_modules", lambda args: [])  # e.g. a package found but broken
    monkeypatch.setitem(sys.modules, "keras", None)
    assert export_cli.main(["--demo", "-o", str(tmp_path / "out"), "-q"]) == 2
    _typed(capsys.readouterr().err, "keras is not installed", 'pip install "emostyle-rt[cpu,export]"')
    assert sorted(tmp_path.iterdir()) == []  # the temporary bundle folder is gone too


_BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Block())
"""


def test_export_demo_without_keras_in_a_fresh_process(tmp_path: Path) -> None:
    """The installed entry point, with keras and TensorFlow really unimportable."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(_BLOCKER.format(blocked={"keras", "tensorflow"})))
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "emostyle_export.cli", "--demo", "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    _typed(proc.stderr, "keras", "tensorflow", 'pip install "emostyle-rt[cpu,export]"')
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- emostyle-bench


@pytest.mark.parametrize("option", ["--stages", "--sizes", "--paths", "--batches", "--image-batches",
                                    "--coldstart-stages"])
def test_bench_empty_list_is_refused(option: str, demo_bundle: Path, capsys: pytest.CaptureFixture[str],
                                     no_measuring: None) -> None:
    assert bench_cli.main(["--bundle", str(demo_bundle), option, ",", "-q"]) == 2
    err = capsys.readouterr().err
    _typed(err, f"{option} names nothing", "expected a comma list of")
    if option == "--stages":
        assert "detect, classify, style, chain" in err
    if option == "--paths":
        assert "ort-cpu" in err and "torch-eager" in err


def test_bench_output_paths_checked_before_measuring(demo_bundle: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], no_measuring: None) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    cases = [
        (["--json", str(tmp_path)], ["--json", "is a folder; it takes a file name"]),
        (["--json", str(afile / "x.json")], ["afile is a file, not a folder"]),
        (["--markdown", str(afile / "x.md")], ["--markdown", "afile is a file, not a folder"]),
        (["--chart", str(afile / "c.png")], ["--chart", "afile is a file, not a folder"]),
        (["--chart", str(tmp_path / "c.jpgx")], ["unknown extension .jpgx", ".png", ".svg"]),
        (["--chart", str(tmp_path / "chart")], ["has no extension", ".png"]),
        (["--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.json")], ["name the same file"]),
    ]
    for extra, needles in cases:
        assert bench_cli.main(["--bundle", str(demo_bundle), "--quick", *extra, "-q"]) == 2, extra
        _typed(capsys.readouterr().err, *needles)
    assert afile.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("extra", [["--warmup", "-1"], ["--time-limit", "0"], ["--repeat", "0"],
                                   ["--budget", "nan"], ["--coldstart-stages", "detect"]])
def test_bench_numbers_and_cold_stages_checked(extra: list[str], demo_bundle: Path,
                                               capsys: pytest.CaptureFixture[str], no_measuring: None) -> None:
    assert bench_cli.main(["--bundle", str(demo_bundle), *extra, "-q"]) == 2
    _typed(capsys.readouterr().err, extra[0] if extra[0] != "--coldstart-stages" else "cold-start stage")


def _result() -> dict:
    return json.loads((Path(__file__).parents[2] / "benchmarks" / "results" / "quick-cpu.json").read_text())


def _mangled(what: str) -> object:
    d = _result()
    if what == "median":
        next(r for r in d["rows"] if r["timing"])["timing"]["median_ms"] = "fast"
    elif what == "row":
        d["rows"][0] = 1
    elif what == "no-rows":
        del d["rows"]
    elif what == "machine":
        d["machine"] = None
    return d


FROM_JSON = [("list", [1, 2], "the top level is an array"), ("number", 5, "the top level is a number"),
             ("null", None, "the top level is null"), ("empty", {}, "no key 'rows'"),
             ("row", "row", "Not an emostyle-bench result"), ("no-rows", "no-rows", "no key 'rows'"),
             ("median", "median", "is not an emostyle-bench result"),
             ("machine", "machine", "is not an emostyle-bench result")]


@pytest.mark.parametrize(("name", "data", "needle"), FROM_JSON, ids=[c[0] for c in FROM_JSON])
def test_bench_from_json_of_the_wrong_shape(name: str, data: object, needle: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    if isinstance(data, str):
        data = _mangled(data)
    src = tmp_path / f"{name}.json"
    src.write_text(json.dumps(data))
    md = tmp_path / "out.md"
    assert bench_cli.main(["--from-json", str(src), "--markdown", str(md), "-q"]) == 2
    out, err = capsys.readouterr()
    _typed(err, str(src), needle)
    assert out == "" and not md.exists()  # nothing half-rendered


def test_bench_from_json_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "r.json"
    src.write_bytes(b"\xff\xfe{}")
    assert bench_cli.main(["--from-json", str(src), "-q"]) == 2
    _typed(capsys.readouterr().err, f"Cannot read {src}", "utf-8")


def test_bench_list_paths_says_what_runs_here(capsys: pytest.CaptureFixture[str]) -> None:
    from emostyle_rt.backends.ort import cuda_device_count

    assert bench_cli.main(["--list-paths"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.split()[:1] in (["detect"], ["classify"],
                                                                                      ["style"], ["chain"], ["video"])]
    from emostyle_bench.paths import default_paths

    assert len(lines) == len(default_paths())
    assert all(ln.endswith("runs here") or " not here: " in ln for ln in lines)
    by_name = {(ln.split()[0], ln.split()[1]): ln for ln in lines}
    assert by_name[("style", "ort-cpu")].endswith("runs here")
    if cuda_device_count() == 0:
        assert by_name[("style", "ort-cuda")].endswith("not here: no CUDA GPU answers")
        assert by_name[("style", "torch-cuda-fp32")].endswith("not here: no CUDA GPU answers")


def test_bench_path_without_torch_names_the_bench_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from emostyle_bench.paths import Context, PathUnavailable, availability, default_paths, find_path

    monkeypatch.setitem(sys.modules, "torch", None)
    eager = find_path(default_paths(), "style", "torch-eager")
    assert 'pip install "emostyle-rt[cpu,bench]"' in (availability(eager) or "")
    with pytest.raises(PathUnavailable, match=r"PyTorch is not installed.*emostyle-rt\[cpu,bench\]") as info:
        eager.build(Context(Path("unused")))
    assert "[export]" not in str(info.value)


@pytest.mark.parametrize(("module", "extra"), [("skimage", []), ("matplotlib", ["--chart", "c.png"])])
def test_bench_without_the_extra_names_it(module: str, extra: list[str], demo_bundle: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                          no_measuring: None) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)
    assert bench_cli.main(["--bundle", str(demo_bundle), "--quick", *extra, "-q"]) == 2
    err = capsys.readouterr().err
    _typed(err, "needs the bench extra", f"{module} is not installed", 'pip install "emostyle-rt[cpu,bench]"')
    assert "[export]" not in err
