"""Rotation of images: the paper's resampling (upsample x3, rotate by nearest neighbour, antialiased downsample),
used for the training augmentation and to make the rotated-digits dataset, and a plain bilinear rotation."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def rotate_batch(images: torch.Tensor, angles: torch.Tensor, mode: str = "nearest") -> torch.Tensor:
    """Rotate ``(B, C, H, W)`` images counter-clockwise by ``angles`` (radians, ``(B,)``) about their centres, sampling
    with ``mode`` (``"nearest"`` or ``"bilinear"``), zero outside."""
    cos, sin = torch.cos(angles), torch.sin(angles)
    # grid_sample maps output coordinates to input coordinates: the inverse rotation (image y axis points down)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)  # fmt: skip
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


def rotate_resampled(images: torch.Tensor, angles: torch.Tensor, upsample: int = 3) -> torch.Tensor:
    """Rotate ``(B, C, H, W)`` images by ``angles`` (radians, ``(B,)``) the paper's way: resize to ``upsample`` times
    the size (bilinear), rotate (nearest neighbour), resize back (bilinear, antialiased)."""
    _, _, height, width = images.shape
    big = F.interpolate(images, scale_factor=upsample, mode="bilinear", align_corners=False)
    big = rotate_batch(big, angles.to(images.device))
    return F.interpolate(big, size=(height, width), mode="bilinear", align_corners=False, antialias=True)


def random_rotation(
    images: torch.Tensor, generator: Optional[torch.Generator] = None, upsample: int = 3
) -> torch.Tensor:
    """The training augmentation: :func:`rotate_resampled` by angles uniform in [-180, 180) degrees, drawn from
    ``generator``."""
    angles = (torch.rand(len(images), generator=generator) * 2 - 1) * math.pi
    return rotate_resampled(images, angles, upsample)
