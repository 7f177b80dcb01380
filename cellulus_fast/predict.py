"""Tiled prediction of offsets with test-time noise: mean offsets and an uncertainty map.

Tiles are cut from the reflect-padded image on the network's pooling grid (tile origins are multiples of
2**depth), so every output pixel sees exactly the input window it would see in a single whole-image pass:
tiled and whole-image predictions agree up to floating-point rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from .models import UNet


@dataclass
class Prediction:
    offsets: np.ndarray       # (D, *spatial) float32 mean offsets over the noise passes
    uncertainty: np.ndarray   # (*spatial) float32: sum over channels of the per-channel std over the passes
    # set by segment() when it measured the object diameter (px of the input image), else None
    object_diameter: Optional[float] = None

    def embeddings(self) -> np.ndarray:
        """(D, *spatial) absolute embeddings: pixel coordinate + mean offset (channel d along axis d)."""
        grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in self.uncertainty.shape], indexing="ij")
        return np.stack(grid) + self.offsets


def _tiles(shape: Tuple[int, ...], tile: Tuple[int, ...]) -> Iterator[Tuple[slice, ...]]:
    """Output-space tiles of `tile` px per axis covering `shape` (each axis >= its tile)."""
    starts = []
    for size, side in zip(shape, tile):
        axis = list(range(0, max(size - side, 0) + 1, side))
        if axis[-1] + side < size:
            axis.append(size - side)
        starts.append(axis)
    for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape)):
        yield tuple(slice(int(c), int(c) + t) for c, t in zip(corner, tile))


def _tile_shape(model: UNet, spatial: Tuple[int, ...], tile_size: int) -> Tuple[int, ...]:
    """Per axis, the smallest output tile on the pooling grid (with a valid input) that covers the axis with
    as few tiles of at most ~``tile_size`` as possible, so that little is computed twice."""
    factor = 2**model.config.depth
    tile = []
    for size in spatial:
        count = -(-size // max(int(tile_size), factor))
        side = -(-(-(-size // count)) // factor) * factor
        while model.valid_size(side + model.context) != side + model.context:
            side += factor
        tile.append(side)
    return tuple(tile)


def _noisy(image: np.ndarray, value: Optional[float], fraction: float, rng: np.random.Generator) -> np.ndarray:
    if value is None:
        return image
    noisy = image.copy()
    noisy[rng.random(image.shape) < fraction] = value  # "salt" as in the public reference
    return noisy


@torch.no_grad()
def predict(model: UNet, image: np.ndarray, *, num_noise_passes: int = 16, noise_fraction: float = 0.01,
            noise_values: Tuple[float, ...] = (0.5, 1.0), tile_size: int = 256, batch_size: int = 4,
            device: Union[str, torch.device, None] = None, seed: int = 0) -> Prediction:
    """Mean offsets and uncertainty of a normalised (C, *spatial) image, any size >= the field of view.

    For each value in ``noise_values`` the image is predicted ``num_noise_passes`` times with a random
    ``noise_fraction`` of its pixels set to that value (the public CELLULUS reference: 16 passes each at 0.5
    and 1.0); ``num_noise_passes=0`` gives one clean pass and a zero uncertainty. ``tile_size`` bounds the
    output tile side (each axis is cut into the fewest tiles of at most about that size, on the pooling
    grid: a 320 px axis is two 160 px tiles, not two overlapping 256 px ones); tiles are batched
    ``batch_size`` at a time.
    """
    if image.ndim != model.dims + 1 or image.shape[0] != model.config.in_channels:
        raise ValueError(f"image must have shape ({model.config.in_channels}, *{model.dims} spatial), got "
                         f"{image.shape}")
    spatial = image.shape[1:]
    if min(spatial) < model.context + 2:
        raise ValueError(f"image {spatial} is smaller than the network's field of view "
                         f"({model.context + 2} px per axis)")
    device = torch.device(device) if device else next(model.parameters()).device
    factor = 2**model.config.depth
    half = model.context // 2
    tile = _tile_shape(model, spatial, tile_size)
    padded_shape = tuple(max(t, -(-s // factor) * factor) for s, t in zip(spatial, tile))
    pad = [(0, 0)] + [(half, half + p - s) for s, p in zip(spatial, padded_shape)]
    passes: List[Optional[float]] = [None] if num_noise_passes == 0 else \
        [v for v in noise_values for _ in range(num_noise_passes)]
    rng = np.random.default_rng(seed)
    tiles = list(_tiles(padded_shape, tile))
    total = np.zeros((model.dims,) + padded_shape, np.float64)
    total_sq = np.zeros_like(total)
    current = np.empty_like(total)
    was_training = model.training
    model.eval()
    try:
        for value in passes:
            source = np.pad(_noisy(image, value, noise_fraction, rng), pad, mode="reflect").astype(np.float32)
            for begin in range(0, len(tiles), batch_size):
                group = tiles[begin:begin + batch_size]
                inputs = [source[(slice(None),) + tuple(slice(s.start, s.stop + model.context) for s in t)]
                          for t in group]
                out = model(torch.from_numpy(np.stack(inputs)).to(device)).double().cpu().numpy()
                for t, o in zip(group, out):
                    current[(slice(None),) + t] = o  # overlapping tiles hold identical values
            total += current
            total_sq += current * current
    finally:
        model.train(was_training)
    crop = (slice(None),) + tuple(slice(0, s) for s in spatial)
    mean = total[crop] / len(passes)
    std = np.sqrt(np.maximum(total_sq[crop] / len(passes) - mean * mean, 0.0))
    return Prediction(offsets=mean.astype(np.float32), uncertainty=std.sum(0).astype(np.float32))
