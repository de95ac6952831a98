"""How far derivative stencils are from commuting with a rotation, order by order, with no interpolation.

A smooth field ``f`` (Gaussian bumps) is sampled exactly at any point, so the stencils ``S`` can be applied to the
rotated field ``g.f = f(g^-1 .)`` on the grid and to ``f`` itself at the rotated points ``g^-1 p``.  Exact derivatives
obey ``d(g.f)(p) = D(g) df(g^-1 p)`` (:mod:`epdo.diffops.derivative_representation`); the stencils' error of order
``k`` is ``|P_k (S(g.f)(p) - D(g) S f(g^-1 p))| / |P_k D(g) S f(g^-1 p)|`` over the pixels ``p`` of a disk, ``P`` the
projection onto the angular frequencies a basis keeps (:func:`frequency_projector`).  Quarter turns give 0 up to
rounding for every discretization; the error at other angles is the stencils' own share of a layer's off-grid error.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from epdo.diffops.derivative_representation import derivative_matrix, frequency_projector, rotation_matrix
from epdo.diffops.multiindex import order_slice
from epdo.diffops.stencils import grid_coordinates, stencils_numpy

# (x, y, weight) of the bumps of the test field, in pixels
_BUMPS = ((-3.0, 1.0, 1.0), (2.0, 2.5, -0.7), (0.5, -2.0, 0.8), (4.0, -1.0, 0.5))


def _smooth_bumps(x: np.ndarray, y: np.ndarray, width: float = 2.0) -> np.ndarray:
    """A smooth test field at the points ``(x, y)`` (any shape): four Gaussian bumps of standard deviation ``width``
    pixels, centred within 4.2 pixels of the origin."""
    return sum(w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * width**2)) for cx, cy, w in _BUMPS)


def stencil_rotation_error(
    discretization: str,
    angle: float,
    max_order: int = 4,
    max_frequency: Optional[int] = 2,
    size: int = 5,
    width: float = 2.0,
) -> np.ndarray:
    """The relative error of each order's stencils under a rotation by ``angle`` degrees, shape ``(max_order + 1,)``.

    Args:
        discretization: the stencils (:func:`epdo.diffops.stencils`).
        angle: the rotation, in degrees (counterclockwise, y up).
        max_order: the highest derivative order.
        max_frequency: the angular frequencies kept (``PDOBasis.max_frequency``; ``None``: all).
        size: the stencils' width.
        width: the test field's smoothness, the bumps' standard deviation in pixels.
    """
    if isinstance(angle, bool) or not isinstance(angle, (int, float)) or not math.isfinite(angle):
        raise ValueError(f"angle must be a finite number of degrees, got {angle!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < math.inf:
        raise ValueError(f"width must be a positive number of pixels (the test field's bumps), got {width!r}")
    stack = stencils_numpy(discretization, max_order, size)
    offset_x, offset_y = grid_coordinates(size)
    rotation = rotation_matrix(np.radians(angle))
    grid = np.arange(-4.0, 5.0)
    px, py = (a.ravel() for a in np.meshgrid(grid, grid))
    inside = px**2 + py**2 <= 16
    px, py = px[inside], py[inside]

    def derivatives(field, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``S field`` at the points ``(x, y)``, shape ``(n_ops, n_points)``."""
        return np.einsum("auv,nuv->an", stack, field(x[:, None, None] + offset_x, y[:, None, None] + offset_y))

    def back(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``g^-1 (x, y)``, stacked on a first axis of 2."""
        return np.einsum("ji,j...->i...", rotation, np.stack([x, y]))

    def field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return _smooth_bumps(x, y, width)

    projector = frequency_projector(max_order, max_frequency).T
    found = projector @ derivatives(lambda x, y: field(*back(x, y)), px, py)  # S(g.f)(p)
    expected = projector @ derivative_matrix(rotation, max_order) @ derivatives(field, *back(px, py))
    return np.array(
        [
            np.linalg.norm(found[s] - expected[s]) / np.linalg.norm(expected[s])
            for s in map(order_slice, range(max_order + 1))
        ]
    )
