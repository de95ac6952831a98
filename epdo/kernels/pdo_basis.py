"""Bases of equivariant linear PDOs between two field representations.

A linear PDO ``Phi[f] = sum_a W_a d^a f`` (``W_a`` of shape ``(d_out, d_in)``) is equivariant iff the
stacked ``W`` intertwines ``rho_in (x) D`` with ``rho_out``, where ``D`` is the derivative representation
(:mod:`epdo.diffops.representation`) and the tensor index is ``(c, a)``, c the input channel and a the
derivative.  Contracting such a ``W`` with the stencils gives a ``size x size`` filter.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from escnn.group import Representation
from escnn.gspaces import GSpace2D

from epdo.diffops import derivative_representation, multi_indices, stencils_numpy
from epdo.memo import memoize


def orthonormalize(basis: np.ndarray, metric_view: np.ndarray = None) -> np.ndarray:
    """Symmetric (Löwdin) orthonormalization: ``T basis`` with ``T = (V V^T)^(-1/2)``, ``V`` = ``metric_view`` (default:
    ``basis``) flattened per element, so that ``T V`` is orthonormal in the Frobenius inner product.

    ``T`` is symmetric and unique, so the result depends only on the input basis (no eigenvector sign or order
    choices).  Bases are orthonormalized because stencil-composed filters are strongly correlated (``d_x^2`` and
    ``d_x^4``), which slows gradient descent on their coefficients; mixing equivariant basis elements keeps them
    equivariant, so the function class is unchanged.
    """
    view = (basis if metric_view is None else metric_view).reshape(len(basis), -1)
    eigenvalues, eigenvectors = np.linalg.eigh(view @ view.T)
    if eigenvalues.min() <= 1e-10 * max(eigenvalues.max(), 1e-300):
        raise RuntimeError("linearly dependent basis: cannot orthonormalize")
    transform = (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T
    return np.tensordot(transform, basis, axes=1)


def canonical_basis(basis: np.ndarray, seed: int = 0, metric_view: np.ndarray = None) -> np.ndarray:
    """An orthonormal basis of ``span(basis)`` that depends on the span alone, not on the spanning set
    (orthonormal in the Frobenius product of ``metric_view``, a linear image of ``basis``, when given).

    escnn finds some changes of basis numerically (with random starts), and caches Clebsch-Gordan solutions per
    machine, so the raw basis of an intertwiner space can differ between processes or machines; parameters saved in
    one would then mean another map in the other.  Projecting a fixed pseudo-random matrix ``R`` onto the span
    (``R P``, ``P`` the orthogonal projector, which is basis-independent) and orthonormalizing symmetrically gives
    the same basis everywhere.
    """
    view = basis if metric_view is None else metric_view
    flat = view.reshape(len(basis), -1)
    probe = np.random.default_rng(seed).standard_normal((len(basis), flat.shape[1]))
    coefficients = np.linalg.solve(flat @ flat.T, flat @ probe.T).T  # R B^T (B B^T)^-1
    mixed_view = None if metric_view is None else np.tensordot(coefficients, metric_view, axes=1)
    return orthonormalize(np.tensordot(coefficients, basis, axes=1), mixed_view)


def order_graded_basis(hom: np.ndarray, stencil: np.ndarray, max_order: int, order_decay: float) -> np.ndarray:
    """Re-basis PDO coefficients ``hom`` ``(K, X, n_ops, Y)`` (derivatives of order ``<= max_order`` on axis 2) order
    by order: for each order ``k``, a canonical basis (:func:`canonical_basis`) of the order-``k`` part, orthonormal
    for the filters it composes with ``stencil`` ``(n_ops, u, v)``, scaled by ``order_decay ** k``.  Shape
    ``(K', X, n_ops, Y)``, ``K' = K`` for a basis whose span splits by order (the equivariant ones do: ``D`` is block
    diagonal by order).

    With ``order_decay < 1`` higher derivatives start smaller and, under Adam (steps of similar size per parameter),
    also move more slowly: a smoothness prior on the learned operators.
    """
    if isinstance(order_decay, bool) or not isinstance(order_decay, (int, float)) or not order_decay > 0:
        raise ValueError(f"order_decay must be a positive number, got {order_decay!r}")
    order_of_op = np.array([i + j for i, j in multi_indices(max_order)])
    graded = []
    for k in range(max_order + 1):
        part = np.where((order_of_op == k)[None, None, :, None], hom, 0.0)
        composed = np.einsum("kxay,auv->kxyuv", part, stencil).reshape(len(part), -1)
        # the projected elements are linearly dependent: keep an independent combination of them
        eigenvalues, eigenvectors = np.linalg.eigh(composed @ composed.T)
        independent = eigenvectors[:, eigenvalues > 1e-10 * max(eigenvalues.max(), 1e-300)].T
        if len(independent):
            part, composed = np.tensordot(independent, part, axes=1), independent @ composed
            graded.append(order_decay**k * canonical_basis(part, seed=k, metric_view=composed))
    return np.concatenate(graded)


@memoize
def intertwiner_basis(rho_in: Representation, rho_out: Representation) -> np.ndarray:
    """Orthonormal, canonical (:func:`canonical_basis`) basis of ``Hom_G(rho_in, rho_out)``: ``(n_basis, d_out, d_in)``,
    float64, read-only, cached.

    ``n_basis`` follows Frobenius reciprocity, e.g. ``dim rho_in`` when ``rho_out`` is regular.
    """
    if rho_in.group != rho_out.group:
        raise ValueError(f"representations of different groups: {rho_in.group} and {rho_out.group}")
    basis = _homomorphisms(rho_in, rho_out)
    if len(basis):
        basis = canonical_basis(basis)
    basis.setflags(write=False)
    return basis


def _homomorphisms(rho_in: Representation, rho_out: Representation) -> np.ndarray:
    """``Q_out (+)_(matching irreps) End(psi) Q_in^-1``: escnn's irrep endomorphisms in the representations' bases."""
    group = rho_in.group
    in_offsets = np.cumsum([0] + [group.irrep(*i).size for i in rho_in.irreps])
    out_offsets = np.cumsum([0] + [group.irrep(*i).size for i in rho_out.irreps])
    blocks = []
    for i, in_id in enumerate(rho_in.irreps):
        for j, out_id in enumerate(rho_out.irreps):
            if in_id == out_id:
                for endomorphism in group.irrep(*in_id).endomorphism_basis():
                    block = np.zeros((rho_out.size, rho_in.size))
                    block[out_offsets[j] : out_offsets[j + 1], in_offsets[i] : in_offsets[i + 1]] = endomorphism
                    blocks.append(block)
    if not blocks:
        return np.zeros((0, rho_out.size, rho_in.size))
    return rho_out.change_of_basis @ np.stack(blocks) @ rho_in.change_of_basis_inv


@memoize
def pdo_filter_basis(
    gspace: GSpace2D,
    rho_in: Representation,
    rho_out: Representation,
    discretization: str,
    max_order: int = 4,
    size: int = 5,
    order_decay: Optional[float] = None,
) -> np.ndarray:
    """Filters of the equivariant PDOs ``rho_in -> rho_out``: ``(n_basis, d_out, d_in, size, size)``.

    ``n_basis = dim Hom_G(rho_in (x) D, rho_out)``: 15 for trivial -> C_N regular, ``15 N`` for regular ->
    regular (max_order 4).  Orthonormal with ``order_decay=None``; else orthonormal within each derivative order
    and scaled by ``order_decay ** order`` (:func:`order_graded_basis`).  float64, read-only, cached.
    """
    stencil = stencils_numpy(discretization, max_order, size)
    deriv = derivative_representation(gspace, max_order)
    hom = intertwiner_basis(rho_in.tensor(deriv), rho_out)
    hom = hom.reshape(hom.shape[0], rho_out.size, rho_in.size, deriv.size)
    if len(hom) and order_decay is not None:
        hom = order_graded_basis(hom.reshape(len(hom), -1, deriv.size, 1), stencil, max_order, order_decay)
        hom = hom.reshape(len(hom), rho_out.size, rho_in.size, deriv.size)
    filters = np.einsum("koca,auv->kocuv", hom, stencil)
    if len(filters) and order_decay is None:
        filters = orthonormalize(filters)
    filters.setflags(write=False)
    return filters


@memoize
def pdo_coefficient_basis(
    rho_in: Representation,
    rho_coefficients: Representation,
    discretization: str,
    max_order: int = 4,
    size: int = 5,
    order_decay: Optional[float] = None,
) -> np.ndarray:
    """Basis of ``Hom_G(rho_in, rho_coefficients)`` for a coefficient representation ``rho (x) D^-T`` (index
    ``(c, a)``), orthonormal for the filters the coefficients compose: ``<A, B> = sum A[c,a] B[c,b] <S_a, S_b>``
    (with ``order_decay``: per derivative order, scaled by ``order_decay ** order``, :func:`order_graded_basis`).

    Shape ``(n_basis, d * n_ops, d_in)``; float64, read-only, cached.
    """
    stencil = stencils_numpy(discretization, max_order, size)
    n_ops = len(stencil)
    hom = intertwiner_basis(rho_in, rho_coefficients)
    split = hom.reshape(len(hom), -1, n_ops, rho_in.size)
    if not len(hom):
        basis = hom
    elif order_decay is None:
        basis = orthonormalize(hom, np.einsum("kcai,auv->kcuvi", split, stencil))
    else:
        basis = order_graded_basis(split, stencil, max_order, order_decay).reshape(-1, *hom.shape[1:])
    basis.setflags(write=False)
    return basis
