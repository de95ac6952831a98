"""Discrete derivative stencils on a square grid.

Convention (the same as escnn/e2cnn): for a ``size x size`` stencil ``S`` with centre ``c = size // 2``,
the entry ``S[u, v]`` is the weight of the pixel at ``x = v - c`` (column offset, to the right) and
``y = c - u`` (row offset, upward).  A stencil is applied by cross-correlation (``F.conv2d``) and gives
the derivative at the centre pixel:  ``(S * f)(p) = sum_{u,v} S[u, v] f(p + (u - c, v - c)) ~ d^a f(p)``.

Stencils are stacked in the order of :func:`epdo.diffops.multi_indices`: orders ``k = 0..max_order``
and, within an order, ``[d_x^k, d_x^(k-1) d_y, ..., d_y^k]``.  Every discretization gives ``d_x^i d_y^j`` a
positive response to the monomial ``x^i y^j``.

Methods:

* ``"fd"``: central finite differences, separable, exact on every monomial of degree ``<= k + 1``.
* ``"gauss"``: derivatives of ``exp(-(eps r)^2)`` sampled on the grid, separable; ``eps`` the ``scale`` argument,
  by default ``0.99 * 5 / size`` (the Gaussian's width grows with the stencil's: ``sigma ~ 0.71`` pixels on 5x5);
  each order ``k`` is scaled once so that ``d_x^k`` is exact on ``x^k`` (a per-order scale keeps the stack
  steerable).
* ``"gauss-exact"``: Gaussian derivatives made exact on polynomials, separable: the 1-D factor of order ``n`` is the
  combination of the Gaussian's derivatives of orders ``n, n - 2, ...`` (default ``eps``) with
  ``sum_t p_n(t) t^m = n! [m == n]`` for ``m = n, n - 2, ...``, so ``d_x^i d_y^j`` is exact on every polynomial of
  degree ``<= i + j``, as ``"fd"`` is, and smooths as ``"gauss"`` does.  On 5x5 the factors of orders 3 and 4 are the
  central differences (five points leave them no freedom), smoothed across their axis.  Its orders 3 and 4 commute
  with off-grid rotations far better than ``"gauss"``'s (:func:`epdo.diffops.stencil_rotation_error`).
* ``"rbffd"``: polyharmonic-spline (``r^5``) RBF-FD weights with polynomial augmentation of degree 4
  (degree 2 on a 3x3 grid): exact on every polynomial of that degree, not separable.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch

from epdo.diffops.multiindex import check_max_order, multi_indices

GAUSS_EPS = 0.99
"""The default ``eps`` of the 5x5 Gaussian stencils; a ``size x size`` stencil's default is ``GAUSS_EPS * 5 / size``
(:func:`gauss_scale`)."""
PHS_POWER = 5

# Central differences of order 0..4 on the offsets -2..2 (the minimal symmetric support of each order).
_FD_1D = np.array(
    [
        [0.0, 0.0, 1.0, 0.0, 0.0],
        [0.0, -0.5, 0.0, 0.5, 0.0],
        [0.0, 1.0, -2.0, 1.0, 0.0],
        [-0.5, 1.0, 0.0, -1.0, 0.5],
        [1.0, -4.0, 6.0, -4.0, 1.0],
    ]
)


def grid_coordinates(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of every stencil entry, each of shape ``(size, size)``; x to the right, y upward."""
    c = size // 2
    offsets = np.arange(size) - c
    return offsets[None, :].repeat(size, 0).astype(float), -offsets[:, None].repeat(size, 1).astype(float)


def _separable(one_d: Callable[[int, np.ndarray], np.ndarray], max_order: int, size: int) -> np.ndarray:
    """Stack of ``p_i(x) p_j(y)`` for every ``(i, j)``; ``one_d(n, t)`` is the order-n 1-D stencil at t."""
    x, y = grid_coordinates(size)
    return np.stack([one_d(i, x) * one_d(j, y) for i, j in multi_indices(max_order)])


def _check_support(discretization: str, max_order: int, size: int) -> None:
    """Separable stencils exact on polynomials of degree ``k`` need ``k + 1`` points in a row, odd: 3 or 5."""
    if size < 3 or (max_order >= 3 and size < 5):
        needed = 5 if max_order >= 3 else 3
        raise ValueError(f"{discretization} stencils of order {max_order} need size >= {needed}, got {size}")


def _fd(max_order: int, size: int) -> np.ndarray:
    _check_support("fd", max_order, size)

    def one_d(n: int, t: np.ndarray) -> np.ndarray:
        inside = np.abs(t) <= 2
        out = np.zeros_like(t)
        out[inside] = _FD_1D[n][(t[inside] + 2).astype(int)]
        return out

    return _separable(one_d, max_order, size)


def gauss_scale(size: int) -> float:
    """The default ``eps`` of ``size x size`` Gaussian stencils, ``0.99 * 5 / size``."""
    return GAUSS_EPS if size == 5 else GAUSS_EPS * 5 / size


def _gauss(max_order: int, size: int, eps: float) -> np.ndarray:

    def one_d(n: int, t: np.ndarray) -> np.ndarray:
        # (-1)^n d^n/dt^n exp(-(eps t)^2) = eps^n H_n(eps t) exp(-(eps t)^2)  (physicists' Hermite H_n)
        hermite = np.polynomial.hermite.hermval(eps * t, [0.0] * n + [1.0])
        return eps**n * hermite * np.exp(-((eps * t) ** 2))

    stack = _separable(one_d, max_order, size)
    x, _ = grid_coordinates(size)
    for k in range(max_order + 1):
        first = k * (k + 1) // 2  # index of d_x^k
        scale = np.sum(stack[first] * x**k) / math.factorial(k)
        stack[first : first + k + 1] /= scale
    return stack


def _gauss_exact(max_order: int, size: int) -> np.ndarray:
    _check_support("gauss-exact", max_order, size)
    eps, offsets = gauss_scale(size), np.arange(size) - size // 2

    def gaussian(n: int, t: np.ndarray) -> np.ndarray:  # (-1)^n d^n/dt^n exp(-(eps t)^2) / eps^n
        return np.polynomial.hermite.hermval(eps * t, [0.0] * n + [1.0]) * np.exp(-((eps * t) ** 2))

    def one_d(n: int, t: np.ndarray) -> np.ndarray:
        # p_n = sum_m c_m gaussian(m), m = n, n - 2, ...: sum_t p_n(t) t^m = n! [m == n]
        powers = range(n % 2, n + 1, 2)
        moments = np.array([[np.sum(gaussian(m, offsets) * offsets**p) for m in powers] for p in powers])
        c = np.linalg.solve(moments, [math.factorial(n) * (p == n) for p in powers])
        return sum(c_m * gaussian(m, t) for c_m, m in zip(c, powers))

    return _separable(one_d, max_order, size)


def _phs_derivative(i: int, j: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``d_x^i d_y^j r^m`` at the points ``(x, y)``, with ``m = PHS_POWER`` and ``i + j < m``.

    Terms ``c x^p y^q r^e`` are differentiated symbolically: ``d_x (x^p r^e) = p x^(p-1) r^e + e x^(p+1) r^(e-2)``.
    """
    terms: Dict[Tuple[int, int, int], float] = {(0, 0, PHS_POWER): 1.0}
    for axis in [0] * i + [1] * j:
        new: Dict[Tuple[int, int, int], float] = {}
        for (p, q, e), c in terms.items():
            own = p if axis == 0 else q
            if own:
                key = (p - 1, q, e) if axis == 0 else (p, q - 1, e)
                new[key] = new.get(key, 0.0) + c * own
            key = (p + 1, q, e - 2) if axis == 0 else (p, q + 1, e - 2)
            new[key] = new.get(key, 0.0) + c * e
        terms = new
    r = np.hypot(x, y)
    safe_r = np.where(r > 0, r, 1.0)
    value = sum(c * x**p * y**q * safe_r**e for (p, q, e), c in terms.items())
    # Every term is homogeneous of degree m - i - j > 0, so the derivative vanishes at r = 0.
    return np.where(r > 0, value, 0.0)


def _rbffd(max_order: int, size: int) -> np.ndarray:
    degree = min(4, size - 1)
    if size < 3 or max_order > degree:
        raise ValueError(f"rbffd stencils of order {max_order} need size >= {max_order + 1} (odd), got {size}")
    x, y = (t.ravel() for t in grid_coordinates(size))
    monomials = multi_indices(degree)
    phi = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) ** PHS_POWER
    poly = np.stack([x**p * y**q for p, q in monomials], axis=1)
    n, m = len(x), len(monomials)
    system = np.block([[phi, poly], [poly.T, np.zeros((m, m))]])
    rhs = np.zeros((n + m, len(multi_indices(max_order))))
    for col, (i, j) in enumerate(multi_indices(max_order)):
        rhs[:n, col] = _phs_derivative(i, j, -x, -y)  # L applied to |. - z_j|^m at the centre
        rhs[n + monomials.index((i, j)), col] = math.factorial(i) * math.factorial(j)
    weights = np.linalg.solve(system, rhs)[:n]
    return weights.T.reshape(-1, size, size)


_DISCRETIZATIONS: Dict[str, Callable[..., np.ndarray]] = {
    "fd": _fd,
    "gauss": _gauss,
    "gauss-exact": _gauss_exact,
    "rbffd": _rbffd,
}
DISCRETIZATIONS = tuple(_DISCRETIZATIONS)
"""The names of the stencil methods: ``"fd"``, ``"gauss"``, ``"gauss-exact"``, ``"rbffd"``."""


def check_discretization(discretization: str) -> None:
    """Raise ``ValueError`` unless ``discretization`` names a discretization."""
    if discretization not in _DISCRETIZATIONS:
        raise ValueError(f"unknown discretization {discretization!r}; valid ones are {', '.join(DISCRETIZATIONS)}")


def check_scale(discretization: str, scale: Optional[float]) -> None:
    """Raise ``ValueError`` unless ``scale`` is ``None`` or, for ``"gauss"`` stencils, a positive number."""
    if scale is None:
        return
    if discretization != "gauss":
        raise ValueError(f"scale sets the Gaussian stencils' eps; {discretization!r} stencils take none, got {scale!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise ValueError(f"scale must be a positive number (the Gaussian's eps), got {scale!r}")


@cache
def _stencils_float64(discretization: str, max_order: int, size: int, scale: Optional[float]) -> np.ndarray:
    check_discretization(discretization)
    check_max_order(max_order)
    check_scale(discretization, scale)
    if not isinstance(size, int) or size % 2 == 0:
        raise ValueError(f"stencil size must be an odd integer, got {size!r}")
    if discretization == "gauss":
        stack = _gauss(max_order, size, gauss_scale(size) if scale is None else float(scale))
        values = np.linalg.svd(stack.reshape(len(stack), -1), compute_uv=False)
        if values[-1] < 1e-4 * values[0]:  # the default scales keep > 1e-2
            raise ValueError(
                f"scale={scale} makes the {size}x{size} Gaussian stencils of orders <= {max_order} nearly linearly "
                f"dependent (singular values {values[-1]:.1e} against {values[0]:.1e}); the default is "
                f"{gauss_scale(size):.3g}"
            )
    else:
        stack = _DISCRETIZATIONS[discretization](max_order, size)
    stack.setflags(write=False)
    return stack


def stencils_numpy(discretization: str, max_order: int = 4, size: int = 5, scale: Optional[float] = None) -> np.ndarray:
    """float64 ``(n_ops, size, size)`` stencil stack (read-only, cached); see :func:`stencils`."""
    return _stencils_float64(discretization, max_order, size, scale)


def stencils(
    discretization: str,
    max_order: int = 4,
    size: int = 5,
    dtype: Optional[torch.dtype] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Derivative stencils, shape ``(n_ops, size, size)``, ``n_ops = (max_order + 1)(max_order + 2) / 2``.

    Args:
        discretization: ``"fd"``, ``"gauss"``, ``"gauss-exact"`` or ``"rbffd"``.
        max_order: highest derivative order, 0..4.
        size: odd stencil width.
        dtype: torch dtype of the result (default: ``torch.get_default_dtype()``); computed in float64.
        scale: the Gaussian stencils' ``eps`` (``None``: :func:`gauss_scale` of ``size``); only for ``"gauss"``.
    """
    stack = stencils_numpy(discretization, max_order, size, scale)
    return torch.tensor(stack, dtype=dtype or torch.get_default_dtype())
