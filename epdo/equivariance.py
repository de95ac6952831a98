"""Measuring equivariance: exact grid symmetries and the error of an equivariant module under them."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
from escnn.group import GroupElement
from escnn.gspaces import GSpace2D
from escnn.nn import GeometricTensor


def grid_elements(gspace: GSpace2D) -> List[GroupElement]:
    """Elements of the fibre group that map the pixel grid onto itself (90-degree rotations and axis flips)."""
    out = []
    for element in gspace.fibergroup.elements:
        action = gspace.basespace_action(element)
        if np.allclose(action, np.round(action), atol=1e-9):
            out.append(element)
    return out


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def disk_mask(height: int, width: int, margin: float = 2.0) -> torch.Tensor:
    """``(height, width)`` float mask of the pixels inside the inscribed disk shrunk by ``margin`` pixels."""
    y = torch.arange(height, dtype=torch.float64) - (height - 1) / 2
    x = torch.arange(width, dtype=torch.float64) - (width - 1) / 2
    radius = min(height, width) / 2 - margin
    return ((y[:, None] ** 2 + x[None, :] ** 2) <= radius**2).to(torch.get_default_dtype())


def smooth_field(field_type, batch: int, size: int, sigma: float = 2.0) -> GeometricTensor:
    """Random ``(batch, C, size, size)`` field, Gaussian-smoothed (``sigma`` px) and windowed to a disk: a test input
    whose off-grid rotations interpolation represents well."""
    noise = torch.randn(batch * field_type.size, 1, size + 8 * int(sigma), size + 8 * int(sigma))
    t = torch.arange(-4 * int(sigma), 4 * int(sigma) + 1, dtype=noise.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    smooth = torch.nn.functional.conv2d(noise, kernel.view(1, 1, 1, -1))
    smooth = torch.nn.functional.conv2d(smooth, kernel.view(1, 1, -1, 1))
    smooth = smooth.reshape(batch, field_type.size, size, size) * disk_mask(size, size, margin=1.0)
    return GeometricTensor(smooth, field_type)


def equivariance_errors(
    module: Callable[[GeometricTensor], GeometricTensor],
    x: GeometricTensor,
    elements: Optional[Iterable[GroupElement]] = None,
    margin: Optional[float] = None,
) -> Dict[GroupElement, float]:
    """``{g: ||module(g.x) - g.module(x)|| / ||g.module(x)||}``; default elements: :func:`grid_elements`.

    Inputs are transformed with escnn's ``GeometricTensor.transform`` (exact on grid elements, interpolated
    otherwise), and so are the outputs, which must be geometric tensors (``GeometricTensor``) of the module's output
    type.  With ``margin``, only pixels inside the inscribed disk shrunk by ``margin`` are compared (for off-grid
    angles, whose rotation moves the square's corners out of the grid).
    """
    if elements is None:
        elements = grid_elements(x.type.gspace)
    with torch.no_grad():
        y = module(x)
        mask = 1.0 if margin is None else disk_mask(*y.tensor.shape[-2:], margin=margin)
        return {e: relative_error(module(x.transform(e)).tensor * mask, y.transform(e).tensor * mask) for e in elements}
