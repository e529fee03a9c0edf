"""``emostyle --ray``: each actor's Stylizer gets the command's StylizerOptions; only public names of the CLI."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from emostyle_rt import StylizerOptions, cli
from emostyle_rt.backends.ort import CPU_THREADS_ENV

job = pytest.importorskip("emostyle_ray.job", reason="the ray extra is not installed")


def test_an_actors_stylizer_has_the_commands_options(demo_bundle: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_THREADS_ENV, "1")  # the actor sets it; restored after the test
    args = cli.parser().parse_args([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ray", "--backend",
                                    "onnxruntime", "--precision", "fp32", "--memory-budget", "1GB",
                                    "--tile-mode", "fast", "--no-face", "sad"])
    actor = job.StyleActor(args, str(demo_bundle), None, 1)
    try:
        assert actor.st.options == StylizerOptions(backend="onnxruntime", precision="fp32", memory_budget=10**9,
                                                   tile_mode="fast", no_face="sad")
    finally:
        actor.st.close()


def test_the_ray_package_uses_only_public_names_of_the_cli() -> None:
    from emostyle_ray import api

    for module in (job, api):
        assert "cli._" not in inspect.getsource(module), module.__name__
