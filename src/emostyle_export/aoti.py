"""AOTInductor packages of a bundle's style networks, built from the bundle alone.

The weights come from each style's FP32 ONNX graph (its initializers carry the
TransformerNet's parameters under their PyTorch names, ``net.conv1.conv2d.weight``
and so on; the original checkpoints are not needed). The rebuilt network gets
the bundle's uint8 NHWC contract (:func:`emostyle_export.styles.style_contract`),
is exported by ``torch.export`` with dynamic batch, height and width (H, W
multiples of 4 over the declared range) and compiled by
``torch._inductor.aoti_compile_and_package`` into
``aoti/<device>-<arch>-torch<version>/<style-id>.pt2`` with a JSON sidecar
(:class:`emostyle_rt.bundle.compiled.AotiSidecar`).

Every package is then loaded and run in a child process (a package that
crashes its process must not take the export down) on the real photos the
ONNX parity check uses, and gated against the FP32 ONNX graph in onnxruntime:
at most 1 grey level for fp32, PSNR >= 40 dB for fp16 / bf16, and a finite
network output. The packages are built into a hidden folder that replaces
``aoti/<key>`` only when all passed; the manifest, written last, is the commit
point, so a failed build leaves the bundle as it was.

The classifier gets no package: onnxruntime runs it in 0.7-0.8 ms (CPU or CUDA),
so there is nothing to win.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from emostyle_rt import metrics
from emostyle_rt.backends import aoti as aoti_backend
from emostyle_rt.bundle.compiled import AOTI_DEVICES, AOTI_DIR, AOTI_PRECISIONS, AotiEntry, AotiSidecar, Profile, aoti_key
from emostyle_rt.errors import BackendError, note, sentence
from emostyle_rt.fsutil import (
    fsync_tree,
    make_work_folder,
    pid_alive,
    publish_folder,
    sha256_file,
    work_match,
    write_bytes_atomic,
)
from emostyle_rt.imaging.io import pad_to_multiple
from emostyle_rt.manifest import STYLE_SIZE_MULTIPLE, Manifest, StyleSpec

from . import parity
from .errors import ExportError, ParityError

log = logging.getLogger(__name__)

MIN_PSNR_DB = metrics.MIN_PSNR_DB  # fp16 / bf16 packages against the FP32 ONNX graph
MAX_FP32_DIFF = 1  # grey levels, fp32 packages
PSNR_CAP_DB = metrics.PSNR_CAP_DB  # JSON has no inf
#: Inductor options per device: freezing folds the weights into the package as constants
#: (on CPU also prepacked for oneDNN convolutions).
INDUCTOR_CONFIGS: dict[str, dict[str, Any]] = {"cpu": {"freezing": True}, "cuda": {"freezing": True}}


@dataclass(frozen=True)
class AotiOptions:
    """What ``emostyle-export --aoti`` builds: device, compute precision, shape range, which styles."""

    device: str = "cpu"
    precision: str | None = None  # None: fp16 on CUDA, fp32 on CPU
    max_batch: int = 4
    min_hw: tuple[int, int] = (64, 64)
    opt_hw: tuple[int, int] = (720, 1280)  # the example shape torch.export traces with (clamped into the range)
    max_hw: tuple[int, int] = (1920, 1920)  # either orientation: portrait and landscape 1080x1920
    styles: tuple[str, ...] | None = None  # None: every style of the bundle
    max_autotune: bool = False  # inductor's max-autotune (CUDA: slower build, faster kernels)

    @property
    def chosen_precision(self) -> str:
        return self.precision or ("fp16" if self.device == "cuda" else "fp32")

    def check(self) -> None:
        """Refuse values that cannot work, before any compile."""
        if self.device not in AOTI_DEVICES:
            raise ExportError(f"Unknown AOTInductor device {self.device!r}." + note(list(AOTI_DEVICES), self.device))
        allowed = AOTI_PRECISIONS if self.device == "cuda" else ("fp32", "bf16")  # no fast fp16 convolutions on CPU
        if self.chosen_precision not in allowed:
            raise ExportError(f"Precision {self.chosen_precision!r} is not built for {self.device}."
                              + note(list(allowed), self.chosen_precision))
        lo, hi = self.sides()
        if self.max_batch < 1 or not all(8 <= a <= b for a, b in zip(lo, hi)):
            raise ExportError("The AOTInductor range must have 1 <= max batch and 8 <= min <= max per side."
                              + note("e.g. --min-size 64x64 --max-size 1920x1920 --max-batch 4",
                                     (self.max_batch, self.min_hw, self.max_hw)))

    def sides(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(min, max) height and width, rounded inwards to multiples of the size multiple."""
        m = STYLE_SIZE_MULTIPLE
        lo = tuple(-(-v // m) * m for v in self.min_hw)
        hi = tuple(v // m * m for v in self.max_hw)
        return lo, hi  # type: ignore[return-value]

    def profile(self, input_name: str) -> Profile:
        (h0, w0), (h1, w1) = self.sides()
        oh, ow = (min(max(v, lo), hi) // STYLE_SIZE_MULTIPLE * STYLE_SIZE_MULTIPLE
                  for v, lo, hi in zip(self.opt_hw, (h0, w0), (h1, w1)))
        return Profile(input_name, (1, h0, w0, 3), (1, oh, ow, 3), (self.max_batch, h1, w1, 3))


# ---------------------------------------------------------------- the network from the bundle


def style_net_from_onnx(onnx_path: str | Path) -> Any:
    """The TransformerNet whose weights the style graph ``onnx_path`` holds (eval mode, CPU, fp32).

    Initializers are named after the PyTorch parameters (``net.<param>``); equal
    weights that the exporter shared through ``Identity`` nodes are followed
    back to their initializer. Anything missing, extra or of the wrong shape is
    an :class:`ExportError` naming it (the graph is not this network).
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from .models.transformer import TransformerNet

    graph = onnx.load(str(onnx_path)).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and len(n.input) == 1}
    net = TransformerNet().eval()
    want = net.state_dict()
    state: dict[str, Any] = {}
    missing, wrong = [], []
    for key, param in want.items():
        name = f"net.{key}"
        for _ in range(8):  # Identity(Identity(initializer)) chains are short
            if name in tensors or name not in aliases:
                break
            name = aliases[name]
        if name not in tensors:
            missing.append(key)
        elif tuple(tensors[name].shape) != tuple(param.shape):
            wrong.append(f"{key}: {tuple(tensors[name].shape)}, expected {tuple(param.shape)}")
        else:
            state[key] = torch.from_numpy(np.array(tensors[name], dtype=np.float32))
    if missing or wrong:
        raise ExportError(
            f"Style graph {onnx_path} does not hold a TransformerNet's weights under their PyTorch names"
            + (f"; missing {missing[:6]}{'...' if len(missing) > 6 else ''}" if missing else "")
            + (f"; wrong shape {wrong[:3]}" if wrong else "") + "."
            + note("initializers net.conv1.conv2d.weight ... (graphs written by emostyle-export)",
                   sorted(tensors)[:6]))
    net.load_state_dict(state)
    return net


# ---------------------------------------------------------------- this machine


def build_identity(device: str) -> dict[str, Any]:
    """What a package built here is tied to: the sidecar's identity fields (torch imported)."""
    import torch

    ident: dict[str, Any] = {"torch_version": metadata.version("torch"), "device": device}
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ExportError("--aoti --device cuda needs a CUDA build of torch and a GPU."
                              + note("torch.cuda.is_available() True", f"torch {torch.__version__}, no CUDA device"))
        major, minor = torch.cuda.get_device_capability(0)
        ident |= {"arch": f"sm{major}{minor}", "compute_capability": f"{major}.{minor}",
                  "gpu_name": torch.cuda.get_device_name(0), "cuda_version": torch.version.cuda,
                  "driver_version": _driver_version()}
    else:
        from torch._inductor import cpu_vec_isa

        isa = str(cpu_vec_isa.pick_vec_isa()).strip() or "default"  # e.g. "avx512 avx512_vnni"
        ident |= {"arch": re.sub(r"[^a-z0-9_]", "", isa.split()[0].lower()) or "default", "cpu_isa": isa}
    return ident


def _driver_version() -> str | None:
    from emostyle_rt.cuda import driver_version

    return driver_version()


# ---------------------------------------------------------------- build and gate


def compile_package(net: Any, convention: str, opts: AotiOptions, profile: Profile, out: Path) -> float:
    """torch.export + AOTInductor of the uint8 contract around ``net``; seconds taken. ``out`` is written."""
    import torch

    from .styles import lower_precision, style_contract

    t0 = time.perf_counter()
    device = torch.device(opts.device)
    graph = style_contract(lower_precision(net, opts.chosen_precision), convention).to(device).eval()
    _, oh, ow, _ = profile.opt
    b0, h0, w0, _ = profile.min
    b1, h1, w1, _ = profile.max
    m = STYLE_SIZE_MULTIPLE
    dims: dict[int, Any] = {}
    if h0 != h1:
        dims[1] = m * torch.export.Dim("h_over_4", min=h0 // m, max=h1 // m)
    if w0 != w1:
        dims[2] = m * torch.export.Dim("w_over_4", min=w0 // m, max=w1 // m)
    batch = 1
    if b1 > b0:
        batch = 2  # an example of 1 would specialise the batch to 1
        dims[0] = torch.export.Dim("batch", min=b0, max=b1)
    example = torch.zeros(batch, oh, ow, 3, dtype=torch.uint8, device=device)
    configs = dict(INDUCTOR_CONFIGS[opts.device]) | ({"max_autotune": True} if opts.max_autotune else {})
    try:
        with torch.inference_mode(False), torch.no_grad():
            exported = torch.export.export(graph, (example,), dynamic_shapes=({**dims},) if dims else None)
            torch._inductor.aoti_compile_and_package(exported, package_path=str(out), inductor_configs=configs)
    except Exception as exc:  # torch raises many unrelated types from export and compile
        raise ExportError(f"AOTInductor could not build {out.name}: {type(exc).__name__}: " + sentence(exc)) from exc
    return time.perf_counter() - t0


def gate_inputs(profile: Profile) -> list[tuple[str, np.ndarray]]:
    """The parity check's real photos (astronaut 512x512 and 255x301, noise), fitted into the package's range.

    Each is padded to the size multiple like the runtime does; a side outside the
    range is resized into it; a batch larger than the range's maximum is cut.
    """
    import cv2

    out = []
    for name, batch in parity.style_inputs():
        items = [pad_to_multiple(img, STYLE_SIZE_MULTIPLE) for img in batch[: profile.max[0]]]
        h, w = items[0].shape[:2]
        m = STYLE_SIZE_MULTIPLE
        fh, fw = (min(max(v, lo), hi) // m * m for v, lo, hi in zip((h, w), profile.min[1:3], profile.max[1:3]))
        if (fh, fw) != (h, w):
            items = [cv2.resize(img, (fw, fh), interpolation=cv2.INTER_AREA if fh * fw < h * w else cv2.INTER_LINEAR)
                     for img in items]
            name += f" fitted to {fh}x{fw}"
        out.append((name, np.ascontiguousarray(np.stack(items))))
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return metrics.psnr(a, b, cap=PSNR_CAP_DB)


def gate(package: Path, side: AotiSidecar, onnx_path: Path, net: Any) -> dict[str, Any]:
    """Package (in a child process) vs the FP32 ONNX graph (onnxruntime CPU) on the gate inputs; the figures.

    :class:`ParityError` when the package is off or its network's output is not
    finite; :class:`ExportError` when it crashes or fails in the child.
    """
    import torch

    from emostyle_rt.backends.ort import import_onnxruntime

    from .styles import INPUT_NAME, OUTPUT_NAME, lower_precision, style_contract

    ort = import_onnxruntime()
    inputs = gate_inputs(side.profile)
    try:
        got = aoti_backend.probe(package, side, {f"g{i}": x for i, (_, x) in enumerate(inputs)})
    except BackendError as exc:
        raise ExportError(str(exc)) from exc
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    low = lower_precision(net, side.precision).to(side.device)
    worst, worst_psnr, finite, names = 0.0, PSNR_CAP_DB, True, []
    for i, (name, x) in enumerate(inputs):
        ref = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        out = got[f"g{i}"]
        if out.shape != ref.shape or out.dtype != np.uint8:
            raise ParityError(f"AOTInductor package {package.name} broke the uint8 contract on {name}."
                              + note(f"uint8 {ref.shape}", f"{out.dtype} {out.shape}"))
        worst = max(worst, float(np.abs(out.astype(np.int16) - ref.astype(np.int16)).max()))
        worst_psnr = min(worst_psnr, _psnr(out, ref))
        with torch.inference_mode():  # the network's own output in the package's precision: inf / NaN?
            raw: list[Any] = []
            contract = style_contract(low, side.convention).to(side.device)
            hook = contract.net.register_forward_hook(lambda _m, _i, y: raw.append(y))
            contract(torch.from_numpy(x).to(side.device))
            hook.remove()
            finite = finite and bool(torch.isfinite(raw[0]).all())
        names.append(f"{name} {'x'.join(map(str, x.shape))}")
    fp32 = side.precision == "fp32"
    figures = {"reference": "FP32 ONNX graph, onnxruntime CPU", "inputs": names, "max_abs_diff": worst,
               "psnr_db": round(worst_psnr, 2), "finite": finite,
               "tolerance": f"max abs diff <= {MAX_FP32_DIFF}" if fp32 else f"PSNR >= {MIN_PSNR_DB:g} dB"}
    ok = finite and (worst <= MAX_FP32_DIFF if fp32 else worst_psnr >= MIN_PSNR_DB)
    if not ok:
        raise ParityError(
            f"AOTInductor package {package.name} ({side.precision}) disagrees with the FP32 ONNX graph."
            + note(figures["tolerance"] + ", finite", f"max abs diff {worst:g}, PSNR {worst_psnr:.1f} dB, "
                                                      f"{'finite' if finite else 'inf/NaN'}"))
    return figures


def _clean_partials(folder: Path) -> None:
    """Remove hidden build folders that killed builds left in ``aoti/``."""
    if folder.is_dir():
        for p in folder.iterdir():
            m = work_match(p.name)
            if m and p.is_dir() and not pid_alive(int(m["pid"])):
                shutil.rmtree(p, ignore_errors=True)


def build_packages(root: Path, manifest: Manifest, opts: AotiOptions,
                   step: Callable[..., None] = lambda *a: None) -> Manifest:
    """Build, probe and gate one package per style of ``manifest`` into ``root/aoti/<key>``; the updated manifest.

    All or nothing: ``aoti/<key>`` is replaced only when every package passed
    (packages of styles not rebuilt are carried over); on any failure the
    hidden build folder is removed and the bundle is unchanged.
    """
    opts.check()
    try:
        import torch  # noqa: F401 - fail here, before any work, when the aoti extra is missing
    except ImportError as exc:
        raise ExportError("--aoti needs torch." + note("pip install 'emostyle-rt[aoti]'", exc)) from exc
    unknown = sorted(set(opts.styles or ()) - set(manifest.styles))
    if unknown:
        raise ExportError(f"No styles {unknown} in bundle {root}." + note(sorted(manifest.styles), unknown))
    ident = build_identity(opts.device)
    key = aoti_key(opts.device, ident["arch"], ident["torch_version"])
    folder = root / AOTI_DIR
    _clean_partials(folder)
    created = not folder.exists()
    tmp = make_work_folder(folder, key, parents=True)
    try:
        entries = [_build_one(root, tmp, manifest.styles[sid], opts, ident, key, step)
                   for sid in (opts.styles or manifest.styles)]
        _carry_over(folder / key, tmp, {e.style_id for e in entries}, manifest)
        fsync_tree(tmp)
        publish_folder(tmp, folder / key)  # an old aoti/<key> goes only after the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(folder, ignore_errors=True)  # the bundle as it was: no empty aoti/ either
        raise
    built = {e.style_id for e in entries}
    kept = [e for e in manifest.aoti if e.key != key or e.style_id not in built]
    return replace(manifest, aoti=(*kept, *entries))


def _build_one(root: Path, tmp: Path, spec: StyleSpec, opts: AotiOptions, ident: Mapping[str, Any], key: str,
               step: Callable[..., None]) -> AotiEntry:
    onnx_path = root / spec.onnx
    profile = opts.profile(spec.input_name)
    pkg = tmp / f"{spec.style_id}.pt2"
    step("style %s: AOTInductor package (%s, %s, %s..%s, batch <= %d) from %s", spec.style_id, opts.device,
         opts.chosen_precision, "x".join(map(str, profile.min[1:3])), "x".join(map(str, profile.max[1:3])),
         profile.max[0], spec.onnx)
    net = style_net_from_onnx(onnx_path)
    seconds = compile_package(net, spec.convention, opts, profile, pkg)
    side = AotiSidecar(
        style_id=spec.style_id, package=pkg.name, package_sha256=sha256_file(pkg), package_bytes=pkg.stat().st_size,
        device=opts.device, arch=ident["arch"], torch_version=ident["torch_version"], precision=opts.chosen_precision,
        profile=profile, source_onnx=spec.onnx, source_onnx_sha256=sha256_file(onnx_path), convention=spec.convention,
        multiple=STYLE_SIZE_MULTIPLE, cuda_version=ident.get("cuda_version"),
        driver_version=ident.get("driver_version"), gpu_name=ident.get("gpu_name"),
        compute_capability=ident.get("compute_capability"), cpu_isa=ident.get("cpu_isa"),
        build_seconds=round(seconds, 1), created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    step("style %s: compiled in %.0f s (%.1f MB); probing and checking it in a child process", spec.style_id,
         seconds, side.package_bytes / 1e6)
    figures = gate(pkg, side, onnx_path, net)
    side = replace(side, parity=figures)
    final = root / AOTI_DIR / key / pkg.name  # where the package will be
    aoti_backend.mark_probed(final, side)  # it ran here: no probe on first use
    write_bytes_atomic(tmp / f"{spec.style_id}.pt2.json", (json.dumps(side.to_json(), indent=2, allow_nan=False) + "\n").encode())
    step("style %s ok: max abs diff %g, PSNR %s dB vs the FP32 ONNX graph", spec.style_id, figures["max_abs_diff"],
         figures["psnr_db"])
    rel = final.relative_to(root)
    return AotiEntry(spec.style_id, str(rel), f"{rel}.json", key, opts.device, side.precision, side.package_sha256,
                     figures)


def _carry_over(old: Path, new: Path, rebuilt: set[str], manifest: Manifest) -> None:
    """Copy the packages of styles that were not rebuilt (and still exist in the bundle) into the new folder."""
    if not old.is_dir():
        return
    for side in old.glob("*.pt2.json"):
        sid = side.name.removesuffix(".pt2.json")
        if sid not in rebuilt and sid in manifest.styles and (old / f"{sid}.pt2").is_file():
            shutil.copy2(old / f"{sid}.pt2", new / f"{sid}.pt2")
            shutil.copy2(side, new / side.name)
