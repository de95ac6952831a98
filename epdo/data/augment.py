"""Training augmentation of the paper: upsample x3, rotate by a random angle (nearest), downsample."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def rotate_batch(images: torch.Tensor, angles: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Rotate ``(B, C, H, W)`` images counter-clockwise by ``angles`` (radians, ``(B,)``) about their centres."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    # grid_sample maps output coordinates to input coordinates: the inverse rotation (image y axis points down)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)  # fmt: skip
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def random_rotation(
    images: torch.Tensor, generator: Optional[torch.Generator] = None, upsample: int = 3
) -> torch.Tensor:
    """Resize to ``upsample`` times the size (bilinear), rotate by a uniform angle in [-180, 180) (nearest),
    resize back (bilinear, antialiased): the reference recipe, on a whole batch at once."""
    batch, _, height, width = images.shape
    angles = (torch.rand(batch, generator=generator) * 2 - 1) * math.pi
    big = F.interpolate(images, scale_factor=upsample, mode="bilinear", align_corners=False)
    big = rotate_batch(big, angles.to(images.device))
    return F.interpolate(big, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
