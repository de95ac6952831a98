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

from epdo.diffops import check_max_frequency, derivative_representation, frequency_projector, stencils_numpy
from epdo.memo import memoize

DEFAULT_BANDWIDTH = 0.2
"""The band limit (cycles per pixel) of the PDO layers' bases by default (:func:`smooth_orthonormalize`): close to the
spectrum of escnn's 5x5 bases at initialization; measured in benchmarks/RESULTS.md (issue 8)."""


def orthonormalize(basis: np.ndarray, metric_view: np.ndarray = None) -> np.ndarray:
    """Symmetric (Löwdin) orthonormalization: ``T basis`` with ``T = (V V^T)^(-1/2)``, ``V`` = ``metric_view`` (default:
    ``basis``) flattened per element, so that ``T V`` is orthonormal in the Frobenius inner product.

    ``T`` is symmetric and unique, so the result depends only on the input basis (no eigenvector sign or order
    choices).  Bases are orthonormalized because stencil-composed filters are strongly correlated (``d_x^2`` and
    ``d_x^4``), which slows gradient descent on their coefficients; mixing equivariant basis elements keeps them
    equivariant, so the function class is unchanged.
    """
    view = basis if metric_view is None else metric_view
    return np.tensordot(_lowdin_transform(view), basis, axes=1)


def _lowdin_transform(view: np.ndarray) -> np.ndarray:
    """``(V V^T)^(-1/2)`` for ``view`` flattened per element, ``(K, K)``."""
    flat = view.reshape(len(view), -1)
    eigenvalues, eigenvectors = np.linalg.eigh(flat @ flat.T)
    if eigenvalues.min() <= 1e-10 * max(eigenvalues.max(), 1e-300):
        raise RuntimeError("linearly dependent basis: cannot orthonormalize")
    return (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T


def check_bandwidth(bandwidth: Optional[float]) -> None:
    """Raise ``ValueError`` unless ``bandwidth`` is ``None`` or a number in ``(0, 1]`` (cycles per pixel)."""
    if bandwidth is None:
        return
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not 0 < bandwidth <= 1:
        raise ValueError(f"bandwidth must be None or a number in (0, 1] (cycles per pixel), got {bandwidth!r}")


def spectral_view(filters: np.ndarray, bandwidth: float) -> np.ndarray:
    """``filters`` ``(..., u, v)`` as the smoothness metric sees them: their spectra (zero-padded to ``4u x 4v``)
    weighted by ``exp(|omega|^2 / (4 bandwidth^2))``, ``omega`` in cycles per pixel; real and imaginary parts side by
    side, shape ``(..., 4u, 8v)``.

    Frobenius products of views weight the filters' power at ``omega`` by ``exp(|omega|^2 / (2 bandwidth^2))``, so a
    basis orthonormal for them has white-noise combinations whose power spectrum follows
    ``exp(-|omega|^2 / (2 bandwidth^2))`` as closely as the span allows: a Gaussian band limit, like escnn's bases.
    """
    n, m = 4 * filters.shape[-2], 4 * filters.shape[-1]
    squared = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(m)[None, :] ** 2
    spectrum = np.fft.fft2(filters, s=(n, m)) * np.exp(squared / (4 * bandwidth**2))
    return np.concatenate([spectrum.real, spectrum.imag], axis=-1)


def smooth_orthonormalize(basis: np.ndarray, filters: np.ndarray, bandwidth: Optional[float]) -> np.ndarray:
    """Re-basis ``basis`` ``(K, ...)``, whose elements compose ``filters`` ``(K, ..., u, v)`` (a linear image of it).

    ``bandwidth=None``: orthonormal for the filters (:func:`orthonormalize`).  A number: orthonormal for their
    :func:`spectral_view` (a Gaussian band limit of ``bandwidth`` cycles per pixel on white-noise combinations), then
    scaled so that the filters' mean squared norm is 1, as before.  Same span either way.
    """
    if bandwidth is None:
        return orthonormalize(basis, filters)
    transform = _lowdin_transform(spectral_view(filters, bandwidth))
    scale = np.sqrt(len(basis) / np.sum(np.tensordot(transform, filters, axes=1) ** 2))
    return scale * np.tensordot(transform, basis, axes=1)


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


def restrict_frequency(basis: np.ndarray, max_order: int, max_frequency: Optional[int]) -> np.ndarray:
    """A canonical basis (:func:`canonical_basis`) of ``{h P}``, ``h`` in ``span(basis)``: ``basis`` ``(K, ..., n_ops)``
    holds PDO coefficient rows in its last index, ``P`` is :func:`epdo.diffops.frequency_projector`.  Returns
    ``(K', ..., n_ops)``; ``basis`` itself when ``max_frequency`` cuts nothing."""
    if max_frequency is None or max_frequency >= max_order or not len(basis):
        return basis
    projected = (basis @ frequency_projector(max_order, max_frequency)).reshape(len(basis), -1)
    _, singular, rows = np.linalg.svd(projected, full_matrices=False)
    scale = np.linalg.norm(basis.reshape(len(basis), -1), axis=1).max()  # what survives is O(scale), the rest ~1e-16
    rank = int(np.sum(singular > 1e-9 * scale))
    if rank == 0:
        return np.zeros((0, *basis.shape[1:]))
    return canonical_basis(rows[:rank].reshape(rank, *basis.shape[1:]))


@memoize
def pdo_filter_basis(
    gspace: GSpace2D,
    rho_in: Representation,
    rho_out: Representation,
    discretization: str,
    max_order: int = 4,
    size: int = 5,
    bandwidth: Optional[float] = None,
    max_frequency: Optional[int] = None,
) -> np.ndarray:
    """Filters of the equivariant PDOs ``rho_in -> rho_out``: ``(n_basis, d_out, d_in, size, size)``.

    ``n_basis = dim Hom_G(rho_in (x) D, rho_out)``: 15 for trivial -> C_N regular, ``15 N`` for regular ->
    regular (max_order 4); with ``max_frequency`` only the PDOs whose symbols have angular frequencies up to it
    (:func:`epdo.diffops.frequency_projector`; 11 and ``11 N`` at ``max_frequency=2``, escnn's 5x5 count).
    Orthonormal with ``bandwidth=None``; else orthonormal for the band-limiting metric (:func:`smooth_orthonormalize`).
    float64, read-only, cached.
    """
    check_bandwidth(bandwidth)
    check_max_frequency(max_frequency)
    stencil = stencils_numpy(discretization, max_order, size)
    deriv = derivative_representation(gspace, max_order)
    hom = intertwiner_basis(rho_in.tensor(deriv), rho_out)
    hom = hom.reshape(hom.shape[0], rho_out.size, rho_in.size, deriv.size)
    hom = restrict_frequency(hom, max_order, max_frequency)
    filters = np.einsum("koca,auv->kocuv", hom, stencil)
    if len(filters):
        filters = smooth_orthonormalize(filters, filters, bandwidth)
    filters.setflags(write=False)
    return filters


@memoize
def pdo_coefficient_basis(
    rho_in: Representation,
    rho_coefficients: Representation,
    discretization: str,
    max_order: int = 4,
    size: int = 5,
    bandwidth: Optional[float] = None,
    max_frequency: Optional[int] = None,
) -> np.ndarray:
    """Basis of ``Hom_G(rho_in, rho_coefficients)`` for a coefficient representation ``rho (x) D^-T`` (index
    ``(c, a)``), orthonormal for the filters the coefficients compose, ``<A, B> = sum A[c,a] B[c,b] <S_a, S_b>``
    (with ``bandwidth``: for their band-limiting metric, :func:`smooth_orthonormalize`).  With ``max_frequency``, only
    the maps whose PDOs have symbols of angular frequencies up to it (:func:`epdo.diffops.frequency_projector`).

    Shape ``(n_basis, d * n_ops, d_in)``; float64, read-only, cached.
    """
    check_bandwidth(bandwidth)
    check_max_frequency(max_frequency)
    stencil = stencils_numpy(discretization, max_order, size)
    n_ops = len(stencil)
    basis = intertwiner_basis(rho_in, rho_coefficients)
    by_operator = basis.reshape(len(basis), -1, n_ops, rho_in.size).swapaxes(2, 3)  # (K, d, d_in, n_ops)
    split = restrict_frequency(by_operator, max_order, max_frequency).swapaxes(2, 3)
    basis = split.reshape(len(split), -1, rho_in.size)
    if len(basis):
        basis = smooth_orthonormalize(basis, np.einsum("kcai,auv->kciuv", split, stencil), bandwidth)
    basis.setflags(write=False)
    return basis
