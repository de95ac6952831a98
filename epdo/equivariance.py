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


def equivariance_errors(
    module: Callable[[GeometricTensor], GeometricTensor],
    x: GeometricTensor,
    elements: Optional[Iterable[GroupElement]] = None,
) -> Dict[GroupElement, float]:
    """``{g: ||module(g.x) - g.module(x)|| / ||g.module(x)||}``; default elements: :func:`grid_elements`.

    Inputs are transformed with escnn's ``GeometricTensor.transform`` (exact on grid elements, interpolated
    otherwise), and so are the outputs, which must be ``GeometricTensor``s of the module's output type.
    """
    if elements is None:
        elements = grid_elements(x.type.gspace)
    with torch.no_grad():
        y = module(x)
        return {e: relative_error(module(x.transform(e)).tensor, y.transform(e).tensor) for e in elements}
