"""The CELLULUS U-Net: valid convolutions, so every output pixel sees exactly its field of view.

Layout (Wolf, Lalit et al., ICCV 2023, App. A; the public code's funlib U-Net with constant upsampling):
each level is a block of [3x3, 1x1, 1x1, 3x3] valid convolutions, each followed by ReLU; levels are joined
by 2x2 max-pooling on the way down and nearest ("constant") upsampling on the way up, where the skip
connection is centre-cropped and concatenated. Level l has ``num_fmaps * fmap_inc_factor**l`` feature
maps. A head of two 1x1 convolutions (ReLU between, none at the end) maps to D channels: the offset r(i)
of every pixel, channel d along spatial axis d.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Everything that fixes the network's shape (stored in checkpoints)."""

    in_channels: int = 1
    num_fmaps: int = 64
    fmap_inc_factor: int = 3
    depth: int = 1
    dims: int = 2
    head_fmaps: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


class _ConvBlock(nn.Sequential):
    """[3, 1, 1, 3] valid convolutions, ReLU after each: shrinks every axis by 4."""

    def __init__(self, dims: int, in_channels: int, out_channels: int):
        conv = _conv(dims)
        layers: List[nn.Module] = []
        for k, (i, o) in zip((3, 1, 1, 3), ((in_channels, out_channels),) + ((out_channels, out_channels),) * 3):
            layers += [conv(i, o, k), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def _center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    slices = [slice(None), slice(None)]
    for size, target in zip(x.shape[2:], shape):
        start = (size - target) // 2
        slices.append(slice(start, start + target))
    return x[tuple(slices)]


class UNet(nn.Module):
    """CELLULUS U-Net with valid convolutions: output = offsets (B, D, *out_spatial).

    With the paper's settings (``depth=1``, 64 feature maps, x3 per level; ~0.76 M parameters in 2-D)
    every axis shrinks by ``context = 16`` pixels (8 per side: 252 -> 236) and an output pixel depends on
    an input window of ``receptive_field = 18`` pixels per axis (measured by gradients in the tests; the
    paper quotes "a field of view of 16x16"). ``depth=3`` is the supervised variant.
    Inputs must have a valid size (see :meth:`valid_size`); the output size is ``input - context``.
    """

    def __init__(self, in_channels: int = 1, num_fmaps: int = 64, fmap_inc_factor: int = 3, depth: int = 1,
                 dims: int = 2, head_fmaps: int = 64):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims}")
        for name, value, low in (("in_channels", in_channels, 1), ("num_fmaps", num_fmaps, 1),
                                 ("fmap_inc_factor", fmap_inc_factor, 1), ("depth", depth, 0),
                                 ("head_fmaps", head_fmaps, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.config = UNetConfig(in_channels, num_fmaps, fmap_inc_factor, depth, dims, head_fmaps)
        fmaps = [num_fmaps * fmap_inc_factor**level for level in range(depth + 1)]
        self.down = nn.ModuleList([_ConvBlock(dims, in_channels, fmaps[0])] +
                                  [_ConvBlock(dims, fmaps[l - 1], fmaps[l]) for l in range(1, depth + 1)])
        self.up = nn.ModuleList([_ConvBlock(dims, fmaps[l] + fmaps[l + 1], fmaps[l]) for l in range(depth)])
        self.pool = (nn.MaxPool2d if dims == 2 else nn.MaxPool3d)(2)
        conv = _conv(dims)
        self.head = nn.Sequential(conv(fmaps[0], head_fmaps, 1), nn.ReLU(inplace=True), conv(head_fmaps, dims, 1))
        for module in self.modules():  # as the public code's `initialize=True`
            if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    @property
    def dims(self) -> int:
        return self.config.dims

    @property
    def context(self) -> int:
        """Pixels lost per axis (both sides together) by the valid convolutions."""
        return self.valid_size(10_000) - self.output_size(self.valid_size(10_000))

    def output_size(self, size: int) -> int:
        """Output extent along one axis for a valid input extent; raises ValueError for an invalid one."""
        depth = self.config.depth
        for _ in range(depth):
            size -= 4
            if size <= 0 or size % 2:
                raise ValueError("invalid input size for this U-Net (see UNet.valid_size)")
            size //= 2
        size -= 4
        if size <= 0:
            raise ValueError("invalid input size for this U-Net (see UNet.valid_size)")
        for _ in range(depth):
            size = size * 2 - 4
        if size <= 0:
            raise ValueError("invalid input size for this U-Net (see UNet.valid_size)")
        return size

    def valid_size(self, size: int) -> int:
        """The smallest valid input extent >= size."""
        candidate = max(int(size), 1)
        while True:
            try:
                self.output_size(candidate)
                return candidate
            except ValueError:
                candidate += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dims + 2 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input (B, {self.config.in_channels}, *{self.dims} spatial), got "
                             f"{tuple(x.shape)}")
        for size in x.shape[2:]:
            try:
                self.output_size(size)
            except ValueError:
                raise ValueError(f"input extent {size} is not valid for this U-Net; the nearest larger valid "
                                 f"extent is {self.valid_size(size)}") from None
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for level in reversed(range(self.config.depth)):
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            skip = skips.pop()
            x = self.up[level](torch.cat([_center_crop(skip, x.shape[2:]), x], dim=1))
        return self.head(x)
