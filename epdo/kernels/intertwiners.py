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
