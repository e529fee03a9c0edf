"""FP16 error of the style network on a CUDA GPU, with PyTorch only.

``python studies/gpu_fp16_check/gpu_fp16_check.py --out result.json`` on any machine with a
CUDA build of PyTorch and this project's ``emostyle_export`` package on the path
(its TransformerNet and style contract; nothing else: no scikit-image, no
TensorRT). Compares, against fp32 on the same GPU:

- ``fp16_in_fp32``: fp16 weights/activations, InstanceNorm in fp32 (what the
  bundle's FP16 ONNX graph and the fp16 AOTInductor packages do);
- ``fp16_all``: ``model.half()`` (PyTorch's own IN kernel, fp32 statistics inside);
- ``fp16_naive_in``: fp16 with IN statistics summed in fp16 (what a kernel that
  keeps everything in fp16 does; shows variance overflow).

Both conventions (``imagenet`` and ``0-255``) on a synthetic photo-like image
(or ``--image`` a .npy/.png/.jpg), at 256x256, 256x304 and 1080x1920. Weights are
seeded random, scaled so the output spans 0..255 like a trained model, or
``--checkpoint`` a style checkpoint of either family (loaded by emostyle_export,
run in its own convention).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from emostyle_export.models.transformer import TransformerNet
from emostyle_export.styles import style_contract
from emostyle_rt import metrics
from torch import nn


class IN(nn.InstanceNorm2d):
    """InstanceNorm whose precision is chosen per run: 'native', 'fp32' or 'naive16'."""

    mode = "native"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if IN.mode == "fp32":
            w, b = self.weight.float(), self.bias.float()
            return nn.functional.instance_norm(x.float(), weight=w, bias=b, eps=self.eps).to(x.dtype)
        if IN.mode == "naive16":
            mean = x.mean(dim=(2, 3), keepdim=True, dtype=x.dtype)
            var = (x * x).mean(dim=(2, 3), keepdim=True, dtype=x.dtype) - mean * mean
            y = (x - mean) / torch.sqrt(var + self.eps)
            return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return super().forward(x)


def switchable(net: nn.Module) -> nn.Module:
    """``net`` with every InstanceNorm2d replaced by an :class:`IN` holding the same parameters."""
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.InstanceNorm2d) and not isinstance(child, IN):
                swap = IN(child.num_features, affine=True)
                swap.load_state_dict(child.state_dict(), strict=False)
                setattr(parent, name, swap)
    return net


def photo_like(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """uint8 HxWx3: smooth gradients, a bright disc (a 'face'), hard edges, stripes and sensor noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = 0.5 + 0.4 * torch.sin(3 * xx + 1) * torch.cos(2 * yy)
    gch = 0.3 + 0.5 * yy
    b = 0.6 - 0.4 * xx
    img = torch.stack([r, gch, b], -1)
    disc = ((xx - 0.55) ** 2 + (yy - 0.4) ** 2) < 0.04
    img[disc] = torch.tensor([0.93, 0.76, 0.65])
    img[(xx > 0.1) & (xx < 0.3) & (yy > 0.6)] = torch.tensor([0.05, 0.05, 0.1])
    img[..., 1] += 0.15 * (torch.sin(xx * w / 3) > 0).float() * (yy < 0.2).float()
    img += 0.03 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def load_image(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path))[..., :3].contiguous()
    import numpy as np
    from PIL import Image  # only for --image png/jpg

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"))).contiguous()


def resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x = img.permute(2, 0, 1)[None].float()
    y = nn.functional.interpolate(x, size=(h, w), mode="area" if h <= img.shape[0] else "bilinear")
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)


def _raw(contract: nn.Module, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 output, the network's raw output before de-normalisation) of the style contract."""
    seen: list[torch.Tensor] = []
    hook = contract.net.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        out = contract(img)
    finally:
        hook.remove()
    return out, seen[0]


def make_net(convention: str, checkpoint: Path | None, device: torch.device) -> TransformerNet:
    torch.manual_seed(1)  # both copies (fp32, fp16) get the same weights
    net = switchable(TransformerNet().eval())
    if checkpoint is not None:
        # the exporter's loader: either family (authors' up1/up2/up3 keys too), every key checked
        from emostyle_export.checkpoints import load_style_checkpoint

        net.load_state_dict(load_style_checkpoint(checkpoint).model.state_dict())
        return net.to(device)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, IN):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
        _, y = _raw(style_contract(net, convention), photo_like(128, 128)[None])
        if convention == "0-255":  # spread the output over 0..255 like a trained model
            k = 60.0 / y.std()
            net.deconv3.conv2d.weight.mul_(k)
            net.deconv3.conv2d.bias.copy_(128.0 - (y.mean(dim=(0, 2, 3)) - net.deconv3.conv2d.bias) * k)
        else:
            k = 1.0 / y.std()
            net.deconv3.conv2d.weight.mul_(k)
            net.deconv3.conv2d.bias.mul_(k)
    return net.to(device)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """The one PSNR (emostyle_rt.metrics), capped at 100 dB (identical outputs) for the JSON report."""
    return metrics.psnr(a, b, cap=metrics.PSNR_CAP_DB)


def run_variant(net32: TransformerNet, net16: TransformerNet, img: torch.Tensor, convention: str,
                mode: str, device: torch.device) -> dict:
    c32, c16 = style_contract(net32, convention).to(device), style_contract(net16, convention).to(device)
    img = img.to(device)
    with torch.no_grad():
        IN.mode = "native"
        ref = c32(img)
        IN.mode = mode
        out, raw = _raw(c16, img)
        ms16 = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(3):
                c16(img)
            torch.cuda.synchronize()
            ms16 = (time.perf_counter() - t0) / 3 * 1e3
        IN.mode = "native"
    finite = bool(torch.isfinite(raw).all())
    return {"psnr_db": round(psnr(ref, out), 2), "max_abs_diff": int((ref.int() - out.int()).abs().max()),
            "finite": finite, "nonfinite_fraction": float((~torch.isfinite(raw)).float().mean()),
            "fp16_ms": None if ms16 is None else round(ms16, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON result path")
    ap.add_argument("--image", type=Path, help=".npy/.png/.jpg RGB image (default: synthetic photo-like)")
    ap.add_argument("--checkpoint", type=Path, help="a style checkpoint of either family (its own convention: "
                    "authors' dicts imagenet, pytorch/examples state_dicts 0-255)")
    ap.add_argument("--sizes", default="256x256,256x304,1080x1920", help="HxW list, multiples of 4")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test only)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device visible to PyTorch; use --device cpu for a smoke test.")
    base = load_image(args.image) if args.image else photo_like(512, 512)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    result: dict = {
        "script": "studies/gpu_fp16_check/gpu_fp16_check.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "image": str(args.image) if args.image else "synthetic photo-like 512x512 (seed 0)",
        "weights": str(args.checkpoint) if args.checkpoint else "seeded random, output spread over 0..255",
        "runs": [],
    }
    if args.checkpoint:
        from emostyle_export.checkpoints import load_style_checkpoint

        conventions = [load_style_checkpoint(args.checkpoint).convention]
    else:
        conventions = ["imagenet", "0-255"]
    for conv in conventions:
        net32 = make_net(conv, args.checkpoint, device)
        net16 = make_net(conv, args.checkpoint, device).half()
        for h, w in sizes:
            img = resize(base, h, w)[None]
            for mode, label in (("fp32", "fp16_in_fp32"), ("native", "fp16_all"), ("naive16", "fp16_naive_in")):
                r = run_variant(net32, net16, img, conv, mode, device)
                r.update(convention=conv, size=f"{h}x{w}", variant=label)
                result["runs"].append(r)
                print(f"{conv:8s} {h}x{w:<5d} {label:14s} psnr {r['psnr_db']:6.2f} dB  max|d| {r['max_abs_diff']:3d}"
                      f"  finite {r['finite']}  fp16 {r['fp16_ms']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
