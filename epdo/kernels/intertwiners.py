"""Canonical orthonormal bases of intertwiner spaces ``Hom_G(rho_in, rho_out)``."""

from __future__ import annotations

import numpy as np
from escnn.group import Representation

from epdo.kernels.spans import DenseSpan, Rows
from epdo.memo import memoize
from epdo.representations import homomorphisms, matrices_on, subgroup_order


def canonical_basis(basis: np.ndarray, seed: int = 0) -> np.ndarray:
    """An orthonormal basis of ``span(basis)`` (``(K, ...)``, linearly independent) that depends on the span alone, not
    on the spanning set.

    A fixed pseudo-random matrix ``R`` projected onto the span (``R P``, ``P`` the orthogonal projector, which is
    basis-independent) and orthonormalized symmetrically: the same parameters mean the same map in every process and
    on every machine, whichever basis the solver returned.
    """
    rows = Rows.of(DenseSpan(basis.reshape(len(basis), -1, 1, 1))).canonical("cap", seed)
    return rows.dense("cap").reshape(basis.shape)


@memoize
def intertwiner_basis(rho_in: Representation, rho_out: Representation) -> np.ndarray:
    """Orthonormal, canonical (:func:`canonical_basis`) basis of ``Hom_G(rho_in, rho_out)``: ``(n_basis, d_out, d_in)``,
    float64, read-only, cached.

    ``n_basis`` follows Frobenius reciprocity, e.g. ``dim rho_in`` when ``rho_out`` is regular.  For SO(2) / O(2)
    solved on a finite subgroup whose maps are the whole group's (:func:`epdo.representations.subgroup_order`).
    """
    if rho_in.group != rho_out.group:
        raise ValueError(f"representations of different groups: {rho_in.group} and {rho_out.group}")
    order = subgroup_order(rho_in, rho_out)
    basis = homomorphisms(matrices_on(rho_in, order), matrices_on(rho_out, order))
    if len(basis):
        basis = canonical_basis(basis)
    basis.setflags(write=False)
    return basis


@memoize
def isotypic_commutant_basis(rho: Representation) -> np.ndarray:
    """A basis of ``End_G(rho) = Hom_G(rho, rho)`` ``(n_basis, d, d)`` (float64, read-only, cached) whose elements
    each map one irrep of ``rho`` to an equal one: ``Q (E_(i, j) (x) A_k) Q^-1`` for ``rho = Q (sum of irreps) Q^-1``,
    every pair ``(i, j)`` of positions of the same irrep and ``A_k`` an orthogonal basis of the irrep's
    endomorphisms, scaled to unit norm (orthonormal where ``Q`` is orthogonal).  The span is
    :func:`intertwiner_basis`'s; where ``Q`` is sparse (SO(2) and O(2) band-limited regular fields: ``Q = I``), each
    element reads only the channels of one irrep."""
    blocks, start = [], 0
    for name in rho.irreps:
        irrep = rho.group.irrep(*name)
        blocks.append((name, slice(start, start + irrep.size), irrep.endomorphism_basis()))
        start += irrep.size
    q, q_inverse = rho.change_of_basis, rho.change_of_basis_inv
    elements = []
    for name, rows, endomorphisms in blocks:
        for other, columns, _ in blocks:
            if other != name:
                continue
            for endomorphism in endomorphisms:
                element = np.zeros((rho.size, rho.size))
                element[rows, columns] = endomorphism
                element = q @ element @ q_inverse
                elements.append(element / np.linalg.norm(element))
    basis = np.array(elements).reshape(len(elements), rho.size, rho.size)
    basis.setflags(write=False)
    return basis
