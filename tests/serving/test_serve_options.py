"""``emostyle serve``: every Stylizer option reaches each worker's Stylizer (one StylizerOptions in the config),
through the flags shared with ``emostyle``, the JSON of ``--workers N`` and Ray Serve's builder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from emostyle_rt import StylizerOptions
from emostyle_rt import cli as rt_cli
from emostyle_rt.errors import BackendError, InvalidArgumentError
from emostyle_rt.options import add_stylizer_arguments
from emostyle_serve import cli as serve_cli
from emostyle_serve import ray_serve
from emostyle_serve.app import Service, app_from_env
from emostyle_serve.config import CONFIG_ENV, SERVE_MAX_PIXELS, ServeConfig

FLAGS = ["--backend", "onnxruntime", "--precision", "fp32", "--memory-budget", "1GB", "--tile-mode", "fast",
         "--no-face", "sad", "--max-pixels", "4000000"]
WANT = StylizerOptions(backend="onnxruntime", precision="fp32", memory_budget=10**9, tile_mode="fast", no_face="sad",
                       max_pixels=4_000_000)


def _config(*argv: str) -> ServeConfig:
    return serve_cli._config(serve_cli._parser().parse_args(list(argv)))


def test_serve_flags_reach_the_stylizer_of_each_worker(mtcnn_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config("--bundle", str(mtcnn_bundle), "--workers", "3", *FLAGS)
    assert config.options == WANT and config.memory_budget == 10**9  # read by name too
    monkeypatch.setenv(CONFIG_ENV, config.to_env())  # how it reaches --workers N processes
    assert ServeConfig.from_env() == config
    service = app_from_env().state.service  # what a worker process builds
    service.config = ServeConfig(**{**service.config.as_dict(), "warmup": False})
    service.load()
    try:
        assert service.error is None and service.stylizer is not None
        assert service.stylizer.options == WANT
    finally:
        service.shutdown()


def test_serve_keeps_its_per_worker_budget_rule(mtcnn_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --memory-budget: each of N workers gets its share of the machine (one worker: the library's default);
    a --memory-budget given is each worker's, as it says."""
    from emostyle_rt import tiling

    monkeypatch.setattr(tiling.memory, "host_available", lambda: 8 << 30)
    assert _config("--bundle", str(mtcnn_bundle), "--workers", "4").options.memory_budget == tiling.worker_budget(4)
    assert _config("--bundle", str(mtcnn_bundle)).options.memory_budget is None
    assert _config("--bundle", str(mtcnn_bundle), "--workers", "4", "--memory-budget", "2GB").memory_budget == 2 * 10**9


def test_serve_refuses_a_bad_option_before_the_port_opens(mtcnn_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = serve_cli.main(["--bundle", str(mtcnn_bundle), "--backend", "onnxruntime", "--precision", "bf16",
                           "--port", "0", "--no-warmup"])
    assert code == 2 and "bf16" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_cli._parser().parse_args(["--tile-mode", "quick"])


def test_emostyle_and_serve_share_one_flag_set() -> None:
    """The same Stylizer flags with the same choices (the service has its own max-pixels default and help)."""
    ours = argparse.ArgumentParser()
    add_stylizer_arguments(ours)
    names = {a.dest for a in ours._actions} - {"help"}  # noqa: SLF001

    def flags(p: argparse.ArgumentParser) -> dict[str, Any]:
        return {a.dest: (a.option_strings, a.choices) for a in p._actions if a.dest in names}  # noqa: SLF001

    assert flags(rt_cli.parser()) == flags(serve_cli._parser()) == flags(ours)
    assert serve_cli._parser().parse_args([]).max_pixels == SERVE_MAX_PIXELS


def test_serve_config_takes_options_by_name_or_whole() -> None:
    by_name = ServeConfig(bundle="b", backend="onnxruntime", memory_budget="1GB", max_batch=4)
    whole = ServeConfig(bundle="b", options=StylizerOptions(backend="onnxruntime", memory_budget=10**9,
                                                            max_pixels=SERVE_MAX_PIXELS), max_batch=4)
    assert by_name == whole and by_name.backend == "onnxruntime" and by_name.max_pixels == SERVE_MAX_PIXELS
    assert json.loads(by_name.to_env())["backend"] == "onnxruntime"
    with pytest.raises(TypeError, match="colour"):
        ServeConfig(bundle="b", colour="red")
    with pytest.raises(BackendError, match="Unknown precision"):
        ServeConfig(bundle="b", precision="int4")
    with pytest.raises(InvalidArgumentError, match="options must be a StylizerOptions"):
        ServeConfig(bundle="b", options={"backend": "onnxruntime"})  # type: ignore[arg-type]


def test_ray_serve_builder_reads_every_option(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(ray_serve, "application", lambda cfg, **kw: seen.setdefault("config", cfg))
    ray_serve.app({"bundle": "/models/mine", "backend": "onnxruntime", "precision": "fp32", "memory_budget": "1GB",
                   "tile_mode": "fast", "no_face": "sad", "max_pixels": "4000000", "max_batch": "4"})
    assert seen["config"].options == WANT and seen["config"].max_batch == 4
    with pytest.raises(InvalidArgumentError, match="Bad Ray Serve arguments"):
        ray_serve.app({"bundle": "/models/mine", "tile_mode": "quick"})


def test_service_builds_its_stylizer_from_the_config_options(mtcnn_bundle: Path) -> None:
    service = Service(ServeConfig(bundle=str(mtcnn_bundle), warmup=False, backend="onnxruntime", tile_mode="fast"))
    service.load()
    try:
        assert service.error is None
        assert service.stylizer.options == StylizerOptions(backend="onnxruntime", tile_mode="fast",
                                                           max_pixels=SERVE_MAX_PIXELS)
    finally:
        service.shutdown()
