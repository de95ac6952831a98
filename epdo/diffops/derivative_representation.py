"""The group representation on the vector of partial derivatives.

For a field ``f`` and an orthogonal ``g`` acting on the plane, ``(g.f)(x) = f(g^-1 x)`` has derivatives
``d(g.f)(0) = D(g) df(0)``, where ``df = [d^a f]_a`` is the derivative vector in the library's order.
Since ``grad (g.f)(x) = g grad f(g^-1 x)``, ``d_x^i d_y^j (g.f) = (g_00 d_x + g_01 d_y)^i (g_10 d_x + g_11 d_y)^j f``:
``D = D_0 + D_1 + ... + D_max_order`` (block diagonal), ``D_k`` the action on homogeneous polynomials
of degree k.  Derivative stencils obey the same law on grid symmetries:  ``S_a(g z) = sum_b D(g)_ab S_b(z)``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import scipy.linalg
from escnn.group import Group, Representation
from escnn.gspaces import GSpace2D

from epdo.diffops.multiindex import check_max_order, multi_indices
from epdo.memo import memoize, serialized
from epdo.representations import (
    Matrices,
    continuous_element,
    contragredient,
    finite_subgroup,
    frequency,
    from_matrices,
    is_continuous,
    matrices_of,
    matrices_on,
    tensor_product,
)


def derivative_matrix(g: np.ndarray, max_order: int = 4) -> np.ndarray:
    """``D(g)`` for a 2x2 matrix ``g`` acting on the plane; shape ``(n_ops, n_ops)``."""
    check_max_order(max_order)
    blocks = []
    for k in range(max_order + 1):
        block = np.zeros((k + 1, k + 1))
        for row, (i, j) in enumerate(multi_indices(k)[-(k + 1) :]):
            # coefficients of the polynomial in (d_x, d_y), indexed by the power of d_y
            poly = np.array([1.0])
            for _ in range(i):
                poly = np.convolve(poly, [g[0, 0], g[0, 1]])
            for _ in range(j):
                poly = np.convolve(poly, [g[1, 0], g[1, 1]])
            block[row] = poly
        blocks.append(block)
    return scipy.linalg.block_diag(*blocks)


def check_max_frequency(max_frequency: Optional[int]) -> None:
    """Raise ``ValueError`` unless ``max_frequency`` is ``None`` (no cutoff) or a non-negative integer."""
    if max_frequency is None:
        return
    if isinstance(max_frequency, bool) or not isinstance(max_frequency, int) or max_frequency < 0:
        raise ValueError(f"max_frequency must be None or a non-negative integer, got {max_frequency!r}")


def rotation_matrix(angle: float) -> np.ndarray:
    """The 2x2 counterclockwise rotation by ``angle`` radians (x right, y up)."""
    return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])


def frequency_projector(max_order: int = 4, max_frequency: Optional[int] = None) -> np.ndarray:
    """``P`` ``(n_ops, n_ops)``: a PDO's coefficient row ``h`` (``sum_a h_a d^a``) becomes ``h P``, the part of it whose
    symbol ``sum_a h_a (i omega)^a`` has angular frequencies ``<= max_frequency`` in the direction of ``omega``.

    Degree-k derivatives carry the angular frequencies ``k, k - 2, ...`` (the Laplacian 0, ``d_x^2 - d_y^2`` 2); ``P``
    projects onto the sum of the frequency ``<= max_frequency`` subspaces of ``D`` along the others, so it commutes
    with every ``D(g)`` (rotations and reflections) and ``h -> h P`` maps equivariant PDOs to equivariant PDOs.
    ``P = mean_t D(R_t) (1 + 2 sum_(m=1..max_frequency) cos(m t))`` over ``4 (max_order + 1)`` equally spaced angles
    (exact: ``D`` has no frequency above ``max_order``).  ``None`` (or ``>= max_order``): the identity.
    """
    check_max_order(max_order)
    check_max_frequency(max_frequency)
    angles = 2 * np.pi * np.arange(4 * (max_order + 1)) / (4 * (max_order + 1))
    cutoff = max_order if max_frequency is None else min(max_frequency, max_order)
    weights = 1 + 2 * sum((np.cos(m * angles) for m in range(1, cutoff + 1)), np.zeros_like(angles))
    return sum(w * derivative_matrix(rotation_matrix(t), max_order) for w, t in zip(weights, angles)) / len(angles)


def check_planar_gspace(gspace: Any, context: str = "") -> None:
    """Raise ``ValueError`` unless ``gspace`` is one of escnn's gspaces on the plane: ``rot2dOnR2(N)`` or
    ``flipRot2dOnR2(N, axis)``, N finite or -1 (SO(2), O(2)); ``context`` (e.g. a module name) prefixes the message."""
    if (
        not isinstance(gspace, GSpace2D)
        or gspace.fibergroup.name not in ("SO(2)", "O(2)")
        and gspace.fibergroup.order() <= 0
    ):
        prefix = f"{context}: " if context else ""
        raise ValueError(
            f"{prefix}expected a gspace of rotations (and reflections) of the plane: escnn's rot2dOnR2(N) or "
            f"flipRot2dOnR2(N, axis), N finite or -1 for SO(2) / O(2); got {gspace!r}"
        )


@memoize
def derivative_matrices(gspace: GSpace2D, max_order: int = 4, order: Optional[int] = None) -> Matrices:
    """``{g: D(g)}`` over the elements of ``gspace.fibergroup`` or, for SO(2) / O(2), of its subgroup of ``order``
    rotations (:func:`epdo.representations.finite_subgroup`), keyed by the subgroup's elements (cached)."""
    check_planar_gspace(gspace)
    check_max_order(max_order)
    group = gspace.fibergroup
    if is_continuous(group):
        if order is None:
            raise ValueError(f"derivative_matrices: {group.name} needs the order of a finite subgroup")
        elements = {g: continuous_element(group, g) for g in finite_subgroup(group, order).elements}
    else:
        elements = {g: g for g in group.elements}
    matrices = {g: derivative_matrix(gspace.basespace_action(h), max_order) for g, h in elements.items()}
    for m in matrices.values():
        m.setflags(write=False)
    return matrices


@serialized
def derivative_representation(gspace: GSpace2D, max_order: int = 4) -> Representation:
    """escnn ``Representation`` ``D`` of ``gspace.fibergroup`` on the derivative vector (cached)."""
    return _from_derivatives(gspace, max_order, f"derivatives{max_order}@{gspace.name}", dual=False)


@serialized
def coefficient_representation(
    gspace: GSpace2D, max_order: int = 4, field: Optional[Representation] = None
) -> Representation:
    """The contragredient ``D^-T(g) = D(g^-1)^T``: how PDO coefficients ``A`` with ``sum_a A_a d^a f`` invariant
    transform; with ``field`` (a representation ``rho`` of the fields the PDOs act on, channel by channel) the
    coefficients of every channel, ``rho (x) D^-T`` with index ``(c, a)`` (cached).  For SO(2) / O(2) decomposed on
    the subgroup of ``2 F + 1`` rotations, ``F`` the highest frequency of the product."""
    name = f"dual_derivatives{max_order}@{gspace.name}"
    if field is None:
        return _from_derivatives(gspace, max_order, name, dual=True)
    group, product = gspace.fibergroup, f"({field.name})x({name})"
    if not is_continuous(group):
        dual = contragredient(derivative_matrices(gspace, max_order))
        return tensor_product(group, product, matrices_of(field), dual)
    if product in group.representations:
        return group.representations[product]
    order = 2 * (frequency(field) + max_order) + 1
    dual = contragredient(derivative_matrices(gspace, max_order, order))
    finite = tensor_product(finite_subgroup(group, order), product, matrices_on(field, order), dual)
    return _lifted(group, finite)


def _from_derivatives(gspace: GSpace2D, max_order: int, name: str, dual: bool) -> Representation:
    """``D`` (or ``D^-T``) as an escnn representation; for SO(2) / O(2) decomposed on the subgroup of ``2 max_order +
    1`` rotations, whose irreps of frequencies ``<= max_order`` are the whole group's, restricted."""
    group = gspace.fibergroup
    order = 2 * max_order + 1 if is_continuous(group) else None
    matrices = derivative_matrices(gspace, max_order, order)
    matrices = contragredient(matrices) if dual else matrices
    if order is None:
        return from_matrices(group, name, matrices)
    if name in group.representations:
        return group.representations[name]
    return _lifted(group, from_matrices(finite_subgroup(group, order), name, matrices))


def _lifted(group: Group, finite: Representation) -> Representation:
    """The representation of SO(2) / O(2) ``group`` that ``finite`` (of a subgroup whose irreps are the whole
    group's up to its frequencies) restricts, registered under ``finite``'s name."""
    for irrep in finite.irreps:
        group.irrep(*irrep)  # escnn instantiates the irreps of a continuous group on demand
    rho = Representation(
        group, finite.name, list(finite.irreps), finite.change_of_basis, change_of_basis_inv=finite.change_of_basis_inv
    )
    group.representations[finite.name] = rho
    return rho
