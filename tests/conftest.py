"""Shared fixtures: real photos and a demo bundle built once per test session."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from emostyle_rt.logutil import TF_QUIET_ENV

for _name, _value in TF_QUIET_ENV.items():  # before any test imports TensorFlow
    os.environ.setdefault(_name, _value)

# A suite started in the background (`nohup ... &`, a CI runner without a terminal) inherits SIGINT
# ignored, and so would every command the tests start: the Ctrl-C tests would then wait for an
# interrupt that can never arrive. Give the commands the disposition a user's terminal gives them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _user_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write the developer's user cache (OpenVINO blobs and gate markers, TensorRT EP engines)."""
    if not os.environ.get("EMOSTYLE_CACHE_DIR"):
        os.environ["EMOSTYLE_CACHE_DIR"] = str(tmp_path_factory.mktemp("user-cache"))


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut: a real 512x512 RGB photo, face at about (177, 66, 95, 95)."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def _trained_styles(bundle: Path) -> list[str]:
    import json

    styles = json.loads((bundle / "manifest.json").read_text()).get("styles", {})
    return sorted(sid for sid, s in styles.items() if s.get("source", {}).get("family", "demo") != "demo")


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle with seeded, untrained style networks, exported once with every parity check.

    Seeded whatever weights/demo/styles holds: several tests need the untrained
    networks' worst case (their output flickers and shows seams between naive
    tiles); the trained demo styles have their own tests (tests/training).
    Set EMOSTYLE_TEST_BUNDLE to reuse a bundle already exported by the same code
    and save about a minute; one with trained styles (bundles/demo once the
    trained weights are in the repo) is not reused.
    """
    reuse = os.environ.get("EMOSTYLE_TEST_BUNDLE")
    if reuse and not _trained_styles(Path(reuse)):
        return Path(reuse)
    if reuse:
        import warnings

        warnings.warn(f"EMOSTYLE_TEST_BUNDLE={reuse} has trained styles ({', '.join(_trained_styles(Path(reuse)))}); "
                      "the tests export their own demo bundle with seeded styles", stacklevel=1)
    from emostyle_export.bundle import export_demo

    return export_demo(tmp_path_factory.mktemp("bundles") / "demo", trained_styles=False)


@pytest.fixture(scope="session")
def mtcnn_bundle(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo bundle with the MTCNN face detector (what ``emostyle-export --demo`` writes).

    ``demo_bundle`` itself when it has one; else (an older EMOSTYLE_TEST_BUNDLE) a
    copy with the detector added by ``emostyle-export --bundle DIR --detector mtcnn``.
    """
    import json
    import shutil

    if "detector" in json.loads((demo_bundle / "manifest.json").read_text()):
        return demo_bundle
    from emostyle_export.cli import main

    copy = tmp_path_factory.mktemp("bundles") / "demo-mtcnn"
    shutil.copytree(demo_bundle, copy)
    if main(["--bundle", str(copy), "--detector", "mtcnn", "-q"]) != 0:
        raise RuntimeError(f"emostyle-export --bundle {copy} --detector mtcnn failed")
    return copy
