"""Canonical orthonormal bases of intertwiner spaces ``Hom_G(rho_in, rho_out)``."""

from __future__ import annotations

from typing import Optional

import numpy as np
from escnn.group import Representation

from epdo.memo import memoize
from epdo.representations import homomorphisms, matrices_of


def lowdin(gram: np.ndarray) -> np.ndarray:
    """``T = G^(-1/2)`` for a Gram matrix ``G`` ``(K, K)`` of ``K`` linearly independent vectors: ``T V`` is
    orthonormal when ``G = V V^T``.  ``T`` is symmetric and unique (Löwdin's symmetric orthonormalization), so the
    result depends on the input basis alone: no eigenvector sign or order choices."""
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    if eigenvalues.min() <= 1e-10 * max(eigenvalues.max(), 1e-300):
        raise RuntimeError("linearly dependent basis: cannot orthonormalize")
    return (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T


def orthonormalize(basis: np.ndarray, metric_view: Optional[np.ndarray] = None) -> np.ndarray:
    """``T basis`` with ``T = (V V^T)^(-1/2)``, ``V`` = ``metric_view`` (default ``basis``; ``(K, ...)``, a linear image
    of it) flattened per element: orthonormal in the Frobenius product of ``V`` (:func:`lowdin`)."""
    flat = (basis if metric_view is None else metric_view).reshape(len(basis), -1)
    return np.tensordot(lowdin(flat @ flat.T), basis, axes=1)


def canonical_basis(basis: np.ndarray, seed: int = 0) -> np.ndarray:
    """An orthonormal basis of ``span(basis)`` (``(K, ...)``) that depends on the span alone, not on the spanning set.

    A fixed pseudo-random matrix ``R`` projected onto the span (``R P``, ``P`` the orthogonal projector, which is
    basis-independent) and orthonormalized symmetrically: the same parameters mean the same map in every process and
    on every machine, whichever basis the solver returned.
    """
    flat = basis.reshape(len(basis), -1)
    probe = np.random.default_rng(seed).standard_normal((len(basis), flat.shape[1]))
    coefficients = np.linalg.solve(flat @ flat.T, flat @ probe.T).T  # R B^T (B B^T)^-1
    return orthonormalize(np.tensordot(coefficients, basis, axes=1))


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
