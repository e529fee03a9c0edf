"""FP16 error of the style network on a CUDA GPU, with PyTorch only.

Standalone: ``python benchmarks/gpu_fp16_check.py --out result.json`` on any
machine with a CUDA build of PyTorch (nothing else of this project, no
scikit-image, no TensorRT). Compares, against fp32 on the same GPU:

- ``fp16_in_fp32``: fp16 weights/activations, InstanceNorm in fp32 (what the
  bundle's FP16 ONNX graph does);
- ``fp16_all``: ``model.half()`` (PyTorch's own IN kernel, fp32 statistics inside);
- ``fp16_naive_in``: fp16 with IN statistics summed in fp16 (what a kernel that
  keeps everything in fp16 does; shows variance overflow).

Both conventions (``imagenet`` and ``0-255``) on a synthetic photo-like image
(or ``--image`` a .npy/.png/.jpg), at 256x256, 256x304 and 1080x1920. Weights are
seeded random, scaled so the output spans 0..255 like a trained model, or
``--checkpoint`` a pytorch/examples state_dict.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, up: int = 0) -> None:
        super().__init__()
        self.up = up
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv2d = nn.Conv2d(cin, cout, k, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = nn.functional.interpolate(x, scale_factor=float(self.up), mode="nearest")
        return self.conv2d(self.pad(x))


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


class Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(c, c, 3), IN(c, affine=True)
        self.conv2, self.in2 = ConvLayer(c, c, 3), IN(c, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class TransformerNet(nn.Module):
    """Johnson et al. (2016), pytorch/examples parameter names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, 32, 9), IN(32, affine=True)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), IN(64, affine=True)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), IN(128, affine=True)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (Res(128) for _ in range(5))
        self.deconv1, self.in4 = ConvLayer(128, 64, 3, up=2), IN(64, affine=True)
        self.deconv2, self.in5 = ConvLayer(64, 32, 3, up=2), IN(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


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


def make_net(convention: str, checkpoint: Path | None, device: torch.device) -> TransformerNet:
    torch.manual_seed(1)  # both copies (fp32, fp16) get the same weights
    net = TransformerNet().eval()
    if checkpoint is not None:
        sd = torch.load(checkpoint, map_location="cpu")
        sd = sd.get("state_dict", sd)
        sd = {k: v for k, v in sd.items() if "running_" not in k}
        net.load_state_dict(sd, strict=False)
        return net.to(device)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, IN):
                m.weight.copy_(1 + 0.3 * torch.randn_like(m.weight))
                m.bias.copy_(0.3 * torch.randn_like(m.bias))
        x = pre(photo_like(128, 128)[None], convention)
        y = net(x)
        if convention == "0-255":  # spread the output over 0..255 like a trained model
            k = 60.0 / y.std()
            net.deconv3.conv2d.weight.mul_(k)
            net.deconv3.conv2d.bias.copy_(128.0 - (y.mean(dim=(0, 2, 3)) - net.deconv3.conv2d.bias) * k)
        else:
            k = 1.0 / y.std()
            net.deconv3.conv2d.weight.mul_(k)
            net.deconv3.conv2d.bias.mul_(k)
    return net.to(device)


def pre(img: torch.Tensor, convention: str) -> torch.Tensor:
    x = img.permute(0, 3, 1, 2).float()
    if convention == "imagenet":
        m = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
        x = (x / 255 - m) / s
    return x


def post(y: torch.Tensor, convention: str) -> torch.Tensor:
    y = y.float()
    if convention == "imagenet":
        m = torch.tensor(MEAN, device=y.device).view(1, 3, 1, 1)
        s = torch.tensor(STD, device=y.device).view(1, 3, 1, 1)
        y = (y * s + m).clamp(0, 1) * 255
    else:
        y = y.clamp(0, 255)
    return y.round().to(torch.uint8)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return 100.0 if mse == 0 else min(100.0, 10 * math.log10(255.0**2 / mse))


def run_variant(net32: TransformerNet, net16: TransformerNet, img: torch.Tensor, convention: str,
                mode: str, device: torch.device) -> dict:
    x = pre(img.to(device), convention)
    with torch.no_grad():
        IN.mode = "native"
        ref = post(net32(x), convention)
        IN.mode = mode
        raw = net16(x.half())
        IN.mode = "native"
        if device.type == "cuda":
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            IN.mode = mode
            for _ in range(3):
                net16(x.half())
            IN.mode = "native"
            torch.cuda.synchronize()
            ms16 = (time.perf_counter() - t0) / 3 * 1e3
        else:
            ms16 = None
    out = post(raw, convention)
    finite = bool(torch.isfinite(raw).all())
    return {"psnr_db": round(psnr(ref, out), 2), "max_abs_diff": int((ref.int() - out.int()).abs().max()),
            "finite": finite, "nonfinite_fraction": float((~torch.isfinite(raw)).float().mean()),
            "fp16_ms": None if ms16 is None else round(ms16, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON result path")
    ap.add_argument("--image", type=Path, help=".npy/.png/.jpg RGB image (default: synthetic photo-like)")
    ap.add_argument("--checkpoint", type=Path, help="pytorch/examples fast_neural_style state_dict (0-255 convention)")
    ap.add_argument("--sizes", default="256x256,256x304,1080x1920", help="HxW list, multiples of 4")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test only)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device visible to PyTorch; use --device cpu for a smoke test.")
    base = load_image(args.image) if args.image else photo_like(512, 512)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    result: dict = {
        "script": "benchmarks/gpu_fp16_check.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if device.type == "cuda" else None,
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "image": str(args.image) if args.image else "synthetic photo-like 512x512 (seed 0)",
        "weights": str(args.checkpoint) if args.checkpoint else "seeded random, output spread over 0..255",
        "runs": [],
    }
    conventions = ["0-255"] if args.checkpoint else ["imagenet", "0-255"]
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
