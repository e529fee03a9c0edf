"""The ``emostyle`` command's Stylizer flags: one shared set (with ``emostyle serve``), choices from the registries,
each reaching the Stylizer; an explicit precision this machine cannot run is refused at start, once."""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import pytest
from skimage import data

from emostyle_rt import StylizerOptions, cli
from emostyle_rt.backends import BACKENDS, PRECISIONS
from emostyle_rt.backends.ort import PROVIDERS
from emostyle_rt.imaging.io import write_image
from emostyle_rt.options import options_from_args
from emostyle_rt.tiling import TILE_MODES

FACE = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)


def _choices(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...] | None]:
    return {a.dest: tuple(a.choices) if a.choices is not None else None for a in parser._actions}  # noqa: SLF001


def test_choice_lists_come_from_the_registries() -> None:
    choices = _choices(cli.parser())
    assert choices["backend"] == BACKENDS and choices["precision"] == PRECISIONS
    assert choices["provider"] == tuple(PROVIDERS) and choices["tile_mode"] == TILE_MODES
    assert cli._parser is cli.parser  # the old private name still works


def test_every_flag_reaches_the_stylizer(demo_bundle: Path, tmp_path: Path) -> None:
    args = cli.parser().parse_args([str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png"), "--backend", "onnxruntime",
                                    "--provider", "cpu", "--precision", "fp32", "--memory-budget", "1GB",
                                    "--tile-mode", "fast", "--no-face", "happy", "--detector", "haar",
                                    "--max-pixels", "5000000"])
    want = StylizerOptions(backend="onnxruntime", provider="cpu", precision="fp32", memory_budget=10**9,
                           tile_mode="fast", no_face="happy", detector="haar", max_pixels=5_000_000)
    assert cli.stylizer_options(args) == want
    try:
        st = cli.make_stylizer(args, demo_bundle)
    except Exception as exc:  # noqa: BLE001 - an OpenCV without Haar cascades: the rest is what is checked
        if "haar" not in str(exc).lower():
            raise
        args.detector = None
        want = want.replace(detector=None)
        st = cli.make_stylizer(args, demo_bundle)
    assert st.options == want


def test_defaults_are_the_stylizers(tmp_path: Path) -> None:
    args = cli.parser().parse_args([str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png")])
    assert cli.stylizer_options(args) == StylizerOptions()
    assert options_from_args(argparse.Namespace()) == StylizerOptions()  # a Namespace made by hand


def test_an_unknown_precision_is_an_argument_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png"), "--precision", "int4"])
    assert exit_.value.code == 2 and "--precision" in capsys.readouterr().err


@pytest.mark.parametrize("flags, says", [
    (["--backend", "onnxruntime", "--precision", "bf16"], "bf16"),
    (["--precision", "fp16"], "no FP16 graph"),  # the demo bundle is FP32 only
])
def test_a_precision_that_cannot_run_here_fails_at_start_once(
        demo_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str) -> None:
    src = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        write_image(src / name, FACE)
    out = tmp_path / "out"
    code = cli.main([str(src), "-o", str(out), "--bundle", str(demo_bundle), *flags])
    errors = [line for line in capsys.readouterr().err.splitlines() if "Note: expected" in line]
    assert code == 2
    assert len(errors) == 1 and says in errors[0]  # one message for the run, not one per photo
    assert not out.exists()  # refused before anything was created

