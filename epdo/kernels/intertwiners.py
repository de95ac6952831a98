"""Canonical orthonormal bases of intertwiner spaces ``Hom_G(rho_in, rho_out)``."""

from __future__ import annotations

import numpy as np
from escnn.group import Representation

from epdo.kernels.spans import DenseSpan, Rows
from epdo.memo import memoize
from epdo.representations import homomorphisms, matrices_of


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

    ``n_basis`` follows Frobenius reciprocity, e.g. ``dim rho_in`` when ``rho_out`` is regular.
    """
    if rho_in.group != rho_out.group:
        raise ValueError(f"representations of different groups: {rho_in.group} and {rho_out.group}")
    basis = homomorphisms(matrices_of(rho_in), matrices_of(rho_out))
    if len(basis):
        basis = canonical_basis(basis)
    basis.setflags(write=False)
    return basis
