"""The runtime stays slim: no training or export frameworks are ever imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
from skimage import data

FORBIDDEN = ("torch", "tensorflow", "keras", "tf2onnx", "onnx", "tensorrt")
REPO = Path(__file__).resolve().parents[2]

CODE = """
import json, sys
import emostyle_rt
after_import = sorted(m for m in ("onnxruntime", "openvino", *{forbidden}) if m in sys.modules)
st = emostyle_rt.Stylizer(sys.argv[1])
res = st.stylize(sys.argv[2])
res2 = st.stylize(sys.argv[2], emotion="angry", max_side=32)
after_stylize = sorted(m for m in {forbidden} if m in sys.modules)
print(json.dumps({{"import": after_import, "stylize": after_stylize, "shape": list(res.image.shape)}}))
"""


def test_import_and_stylize_load_no_heavy_frameworks(demo_bundle: Path, tmp_path: Path) -> None:
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.resize(data.astronaut(), (96, 96))[:, :, ::-1])
    done = subprocess.run(
        [sys.executable, "-c", CODE.format(forbidden=FORBIDDEN), str(demo_bundle), str(photo)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["import"] == []  # not even onnxruntime (or OpenVINO) until a bundle is opened
    assert found["stylize"] == []
    assert found["shape"] == [96, 96, 3]


def test_the_runtime_writes_nothing_in_the_users_home(demo_bundle: Path, tmp_path: Path) -> None:
    """onnxruntime 1.32 writes a device id and a telemetry store under ~/.cache/Microsoft when imported; the
    runtime turns that off (ORT_DISABLE_TELEMETRY=1 unless set), so a Stylizer run leaves the home untouched."""
    import os

    home = tmp_path / "home"
    home.mkdir()
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.resize(data.astronaut(), (96, 96))[:, :, ::-1])
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    done = subprocess.run([sys.executable, "-c", CODE.format(forbidden=FORBIDDEN), str(demo_bundle), str(photo)],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []


ORT_ONLY = """
import json, sys
import emostyle_rt
st = emostyle_rt.Stylizer(sys.argv[1], backend="onnxruntime")
st.stylize(sys.argv[2])
print(json.dumps(sorted(m for m in ("openvino", *{forbidden}) if m in sys.modules)))
"""


def test_onnxruntime_backend_never_imports_openvino(demo_bundle: Path, tmp_path: Path) -> None:
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), cv2.resize(data.astronaut(), (64, 64))[:, :, ::-1])
    done = subprocess.run([sys.executable, "-c", ORT_ONLY.format(forbidden=FORBIDDEN), str(demo_bundle), str(photo)],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
