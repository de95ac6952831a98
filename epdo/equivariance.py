"""Measuring equivariance: exact grid symmetries, elements off the grid, the error of an equivariant module under them,
and the field types escnn tests its own layers on."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from escnn import gspaces
from escnn.group import GroupElement
from escnn.gspaces import GSpace2D
from escnn.nn import FieldType, GeometricTensor

from epdo.representations import continuous_element, finite_subgroup, is_continuous


def grid_elements(gspace: GSpace2D) -> List[GroupElement]:
    """Elements of the fibre group that map the pixel grid onto itself (90-degree rotations and flips about axes at
    multiples of 45 degrees); of SO(2) / O(2), those among the rotations by multiples of 7.5 degrees."""
    group = gspace.fibergroup
    if is_continuous(group):
        candidates = [continuous_element(group, g) for g in finite_subgroup(group, 48).elements]
    else:
        candidates = list(group.elements)
    out = []
    for element in candidates:
        action = gspace.basespace_action(element)
        if np.allclose(action, np.round(action), atol=1e-9):
            out.append(element)
    return out


def off_grid_elements(gspace: GSpace2D, count: int = 2) -> List[GroupElement]:
    """Up to ``count`` elements that do not map the pixel grid onto itself: of a finite group the first ones not in
    :func:`grid_elements` (45 and 22.5 degrees for C16; reflections about the gspace's axis when it is off the grid);
    of SO(2) / O(2) the rotations by 45 and 22.5 degrees, and for O(2) the reflection about its axis turned by 60
    degrees (off the grid for an axis on it)."""
    group = gspace.fibergroup
    on_grid = grid_elements(gspace)
    if not is_continuous(group):
        return [e for e in group.elements if e not in on_grid][:count]
    if group.name == "SO(2)":
        candidates = [group.element(t, "radians") for t in (np.pi / 4, np.pi / 8)]
    else:
        candidates = [group.element((f, t), "radians") for f, t in ((0, np.pi / 4), (0, np.pi / 8), (1, 2 * np.pi / 3))]
    return [e for e in candidates if e not in on_grid][:count]


def escnn_field_types() -> Dict[str, Tuple[FieldType, FieldType]]:
    """``{name: (in_type, out_type)}``: the field types escnn's own convolution tests build layers on, small: C8 with
    every representation (out: twice), four C8 irrep(1) fields, C8 trivial x3 + regular x2, SO(2) ``bl_irreps(3)``,
    D8 (axes 0 and pi/3) with every representation, O(2) ``bl_irreps(3)`` and ``bl_regular_representation(3)``."""
    c8 = gspaces.rot2dOnR2(8)
    c8_all = [c8.trivial_repr, *(c8.irrep(k) for k in range(1, 5)), c8.regular_repr]
    so2 = gspaces.rot2dOnR2(-1, 7)
    o2 = gspaces.flipRot2dOnR2(-1, 7)
    o2_irreps = [o2.fibergroup.irrep(*i) for i in o2.fibergroup.bl_irreps(3)]
    types = {
        "C8, all representations": (c8_all, c8_all * 2),
        "C8, irrep(1) x4": ([c8.irrep(1)] * 4,) * 2,
        "C8, trivial x3 + regular x2": ([c8.trivial_repr] * 3 + [c8.regular_repr] * 2,) * 2,
        "SO(2), bl_irreps(3)": ([so2.irrep(k) for k in range(4)],) * 2,
        "O(2), bl_irreps(3) + bl_regular(3)": ([*o2_irreps, o2.fibergroup.bl_regular_representation(3)],) * 2,
    }
    spaces = {"C8, all representations": c8, "C8, irrep(1) x4": c8, "C8, trivial x3 + regular x2": c8,
              "SO(2), bl_irreps(3)": so2, "O(2), bl_irreps(3) + bl_regular(3)": o2}  # fmt: skip
    for axis, label in ((0.0, "0"), (np.pi / 3, "pi/3")):
        d8 = gspaces.flipRot2dOnR2(8, axis=axis)
        group = d8.fibergroup
        irreps = [group.irrep(0, 0), group.irrep(1, 0), group.irrep(0, 4), group.irrep(1, 4)]
        name = f"D8, axis {label}, all representations"
        types[name] = ([*irreps, *(group.irrep(1, k) for k in range(1, 4)), d8.regular_repr],) * 2
        spaces[name] = d8
    return {name: (FieldType(spaces[name], a), FieldType(spaces[name], b)) for name, (a, b) in types.items()}


def redraw_weights(layer: torch.nn.Module) -> torch.nn.Module:
    """Draw ``layer``'s weights anew as its initialization does (epdo's layers and escnn's ``R2Conv``), to average an
    error over initializations; returns ``layer``."""
    from escnn.nn import R2Conv
    from escnn.nn.init import generalized_he_init

    from epdo.nn.basis_expansion import BlockBasisExpansion

    if isinstance(layer, R2Conv):
        generalized_he_init(layer.weights.data, layer.basisexpansion)
    for module in layer.modules():
        if isinstance(module, BlockBasisExpansion):
            module.reset_parameters()
    return layer


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
