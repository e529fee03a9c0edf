"""The chain stage of emostyle_bench.openvino_cpu: a fresh process, each path's plan reported.

The stage once opened its Stylizers in the process that had just run the style
stage (5.4 GB held): every path then got the 512 MB budget floor and ran 720p
in exact tiles spooled to disk. These tests hold the fix: the child process opens
the Stylizers first, and each row says whether a path ran whole or in tiles.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emostyle_bench import openvino_cpu
from emostyle_rt import Stylizer
from emostyle_rt.backends import openvino as ovb
from emostyle_rt.errors import MemoryBudgetError

needs_openvino = pytest.mark.skipif(not ovb.installed(), reason="openvino is not installed (the cpu extra brings it)")


@needs_openvino
def test_chain_runs_in_a_fresh_process_whole_with_every_path(demo_bundle: Path) -> None:
    ballast = np.ones(700 << 20, np.uint8)  # this process holds more than the child's Stylizers ever see
    (row,) = openvino_cpu.bench_chain(demo_bundle, ["512"], rounds=1, eager=False)
    del ballast
    assert row["fresh_process"] and set(row["paths"]) == {label for label, _, _ in openvino_cpu.CHAIN_PATHS}
    assert all(mb < 600 for mb in row["rss_mb_when_opened"].values()), row["rss_mb_when_opened"]
    assert set(row["plan"].values()) == {"whole"}
    assert row["default_style_engine"] == "openvino:CPU:fp32"
    assert max(row["max_abs_diff_vs_onnxruntime"].values()) <= 1  # the bundle's tolerance
    assert len(set(row["emotions"].values())) == 1


def test_plans_records_a_tiled_run(demo_bundle: Path) -> None:
    plans = openvino_cpu._Plans()
    try:
        with Stylizer(demo_bundle, backend="onnxruntime", memory_budget="1MB") as st:
            with pytest.raises(MemoryBudgetError):  # too small for any plan: refused before it runs, nothing recorded
                st.stylize(np.zeros((512, 512, 3), np.uint8), emotion=st.labels[0])
        assert plans.tiled == []
        with Stylizer(demo_bundle, backend="onnxruntime", memory_budget="300MB") as st:
            st.stylize(np.zeros((512, 512, 3), np.uint8), emotion=st.labels[0])
        assert len(plans.tiled) == 1 and "in tiles" in plans.tiled[0]
    finally:
        logging.getLogger("emostyle_rt.stylizer").removeHandler(plans.handler)


def test_chain_child_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="child process failed"):
        openvino_cpu.bench_chain(tmp_path / "no-bundle", ["512"], rounds=1, eager=False)


def test_chain_child_is_hidden_from_help() -> None:
    done = subprocess.run([sys.executable, "-m", "emostyle_bench.openvino_cpu", "--help"], capture_output=True,
                          text=True, check=True)
    assert "--chain-child" not in done.stdout and "--stages" in done.stdout
