"""scripts/gpu/train_demo_styles: the demo styles' GPU recipe, run here at a tiny size on the CPU.

The script is what a session with a GPU runs (docs/gpu-training.md); these tests
run the same script, through the same shell wrapper and package links the GPU
machine uses, on a few 32 px crops for a few steps, and check that what it
returns loads, installs and exports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from emostyle_export.checkpoints import load_style_checkpoint
from emostyle_rt.manifest import EMOTIONS
from trainkit import demo_driver

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu" / "train_demo_styles.sh"


drv = demo_driver()


def _sh(args: list[str], tmp: Path, extra_path: str = "") -> subprocess.CompletedProcess[str]:
    """The wrapper as the GPU machine runs it (package links in a site folder), with this venv's python."""
    env = {**os.environ, "PYTHON": sys.executable, "EMOSTYLE_SITE": str(tmp / "site"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": extra_path}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=tmp,
                          timeout=600)


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pack") / "gpu-train"
    drv.pack(d, check_travel=False)
    return d


def test_recipe_seven_distinct_styles_licensed_and_explained() -> None:
    r = drv.load_recipe()
    assert list(r.styles) == list(EMOTIONS)
    images = [img for img, _ in r.styles.values()]
    assert len({p.name for p in images}) == 7 and all(p.is_file() for p in images)
    stored = sorted(p.name for p in drv.STYLE_IMAGES.iterdir())
    assert stored == sorted(p.name for p in images)  # seven of the eight, nothing else travels
    licences = (drv.RECIPE.parent / "LICENSES.md").read_text()
    readme = (drv.RECIPE.parent / "README.md").read_text()
    for emotion, (image, _) in r.styles.items():
        assert image.name in licences
        row = re.search(rf"^\| {emotion} \| `{re.escape(image.name)}` \| (.+) \|$", readme, re.M)
        assert row and len(row.group(1)) > 20, f"README.md needs a row '| {emotion} | `{image.name}` | reason |'"
    assert r.size == 256 and r.batch == 8 and not set(r.photos) & set(r.held_out)


def test_pack_holds_pastiche_and_the_photos_and_fits_what_travels(pack_dir: Path) -> None:
    info = json.loads((pack_dir / "pack.json").read_text())
    assert (pack_dir / "site" / "pastiche" / "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin").is_file()
    assert list((pack_dir / "site").glob("pastiche-*.dist-info/METADATA"))
    held = {Path(k).name for k in info["photos"] if k.startswith("held_out/")}
    assert held == {"astronaut.jpg", "coffee.jpg", "chelsea.jpg", "camera.jpg"}
    train = [k for k in info["photos"] if k.startswith("train/")]
    assert len(train) >= 11 and not held & {Path(k).name for k in train}
    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True).returncode == 0:
        total = drv._tree_bytes() + drv._folder_bytes(pack_dir)
        assert total <= drv.TRAVEL_LIMIT - drv.TRAVEL_MARGIN, f"{total / 2**20:.1f} MiB would travel"


def test_crops_are_a_function_of_seed_and_index_and_vary() -> None:
    from skimage import data

    sources = [np.ascontiguousarray(data.astronaut()), np.dstack([data.camera()] * 3)]
    spec = drv.CropSpec(size=64)
    a, b = drv.make_crop(7, 0, spec, sources), drv.make_crop(7, 0, spec, sources)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    crops = [drv.make_crop(i, 0, spec, sources) for i in range(24)]
    assert min(np.abs(x.astype(int) - y).mean() for i, x in enumerate(crops) for y in crops[i + 1:]) > 1
    assert not np.array_equal(drv.make_crop(7, 1, spec, sources), a)


def test_plan_fits_the_budget_and_prefers_lanes_only_when_they_pay() -> None:
    p = drv.plan_steps({1: 30.0, 2: 24.0}, {1: 10.0, 2: 12.0}, 450, 7, 8, 6000, 16000)
    assert p.lanes == 2 and p.steps == int((450 / 4 - 12) * 24 * 0.9) and p.seconds_estimate <= 450
    p = drv.plan_steps({1: 30.0, 2: 16.0}, {1: 10.0, 2: 12.0}, 450, 7, 8, 6000, 16000)
    assert p.lanes == 1 and p.steps * 8 < 16000 and "BELOW the target" in p.why
    assert drv.plan_steps({1: 500.0}, {1: 5.0}, 450, 7, 8, 6000, 16000).steps == 6000


def test_check_imports_the_training_path_without_tensorflow(pack_dir: Path, tmp_path: Path) -> None:
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTF:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx'):\n"
        "            raise ImportError(f'{name} is not on the GPU machine')\n"
        "sys.meta_path.insert(0, _NoTF())\n")
    done = _sh(["check", "--device", "cpu", "--pack-dir", str(pack_dir)], tmp_path, str(block))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pastiche 1.6" in done.stdout
    # and the GPU machine's links work without this venv's editable install: emostyle_train comes from the site
    assert (tmp_path / "site" / "emostyle_train").resolve() == REPO / "src" / "emostyle_train"


def test_tiny_cpu_run_writes_fp16_checkpoints_that_install_and_load(pack_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _sh(["train", "--device", "cpu", "--pack-dir", str(pack_dir), "--out", str(out), "--work",
                str(tmp_path / "work"), "--emotions", "happy", "--steps", "3", "--size", "32", "--batch", "2",
                "--crops", "24", "--crop-workers", "1", "--budget-s", "300"], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    s = summary["styles"]["happy"]
    assert s["status"] == "trained" and s["steps"] == 3 and s["images_seen"] == 6
    assert s["style_image"] == "candy.jpg" and s["held_out"]["photos"][0] == "astronaut.jpg"
    assert s["release"]["bytes"] < 3.5e6 and np.isfinite(s["held_out"]["ratio_trained_untrained"])
    assert "| happy | candy.jpg | 3 | 6 |" in (out / "summary.md").read_text()
    fp16 = summary["fp16_check"]["happy"]  # studies/gpu_fp16_check/gpu_fp16_check.py on the released network (CPU here)
    assert fp16["64x64 fp16_in_fp32"]["finite"] and fp16["64x64 fp16_in_fp32"]["psnr_db"] > 40
    with tarfile.open(out / "styles-1.tar") as tar:  # angry, disgust, fear, happy; the other three: styles-2
        assert tar.getnames() == ["styles/happy.pth"]
    with tarfile.open(out / "runs.tar") as tar:
        assert {"happy/report.json", "happy/preview.png", "happy/losses.png", "happy/train.log",
                "happy/gpu_fp16_check.json"} <= set(tar.getnames())
    assert not (tmp_path / "work").exists()  # scratch removed

    again = _sh(["train", "--device", "cpu", "--pack-dir", str(pack_dir), "--out", str(out), "--emotions", "happy",
                 "--steps", "1"], tmp_path)
    assert again.returncode == 2 and "never writes over" in again.stderr  # an earlier run's results stay

    weights = tmp_path / "weights"
    assert _sh(["install", str(out), "--weights", str(weights)], tmp_path).returncode == 0
    ckpt = load_style_checkpoint(weights / "styles" / "happy.pth")
    raw = torch.load(weights / "styles" / "happy.pth", weights_only=True)
    assert ckpt.family == "authors" and ckpt.metadata["steps"] == 3 and ckpt.metadata["demo_emotion"] == "happy"
    assert all(v.dtype == torch.float16 for v in raw["state_dict"].values()) and "optimizer_state" not in raw
    assert _sh(["install", str(out), "--weights", str(weights)], tmp_path).returncode == 2  # no overwrite

    from emostyle_export.bundle import demo_styles

    got = {e: (sid, ck, src) for served, sid, ck, src in demo_styles(0, weights) for e in served}
    assert got["happy"][0] == "demo-happy" and got["happy"][2]["family"] == "authors"
    assert got["happy"][2]["metadata"]["weights_dtype"] == "float16"
    assert all(got[e][2]["family"] == "demo" for e in EMOTIONS if e != "happy")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(got["happy"][1].model(x), ckpt.model(x))
