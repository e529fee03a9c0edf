"""The style network of Johnson et al. (2016), as trained by the paper.

16 conv layers: three down (9x9, 3x3 s2, 3x3 s2), five residual blocks of two,
two nearest-x2 upsample convs and a final 9x9 conv. Reflection padding of
kernel//2 everywhere, InstanceNorm(affine) after every conv but the last, no tanh.
Parameter names follow pytorch/examples ``fast_neural_style`` (``conv1.conv2d``,
``in1``, ``res1.conv1.conv2d``, ``deconv1.conv2d``...); ``checkpoints.py`` maps
the authors' layout onto them.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(cin, cout, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.pad(x))


class UpsampleConvLayer(ConvLayer):
    """Nearest x2 upsample, then conv (no checkerboard artefacts of deconvs)."""

    def __init__(self, cin: int, cout: int, kernel: int, upsample: int | None = None) -> None:
        super().__init__(cin, cout, kernel)
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = nn.functional.interpolate(x, scale_factor=float(self.upsample), mode="nearest")
        return super().forward(x)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.in1(self.conv1(x)))
        return x + self.in2(self.conv2(y))


class TransformerNet(nn.Module):
    """Image -> stylised image, same convention in and out (see checkpoints.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, 32, 9), nn.InstanceNorm2d(32, affine=True)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
        self.res1, self.res2, self.res3, self.res4, self.res5 = (ResidualBlock(128) for _ in range(5))
        self.deconv1, self.in4 = UpsampleConvLayer(128, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.deconv2, self.in5 = UpsampleConvLayer(64, 32, 3, 2), nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.in1(self.conv1(x)))
        y = self.relu(self.in2(self.conv2(y)))
        y = self.relu(self.in3(self.conv3(y)))
        y = self.res5(self.res4(self.res3(self.res2(self.res1(y)))))
        y = self.relu(self.in4(self.deconv1(y)))
        y = self.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)
