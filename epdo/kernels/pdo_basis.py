"""Bases of equivariant PDOs: the static filters of :class:`epdo.nn.PDOConv` and the coefficient maps of
:class:`epdo.nn.NeuralePDO`'s generator.

A linear PDO ``Phi[f] = sum_a W_a d^a f`` (``W_a`` of shape ``(d_out, d_in)``) is equivariant iff the stacked ``W``
(index ``(o, (c, a))``, c the input channel, a the derivative) intertwines ``rho_in (x) D`` with ``rho_out``, ``D`` the
derivative representation (:mod:`epdo.diffops.derivative_representation`).  Contracting ``W`` with the stencils gives a
``size x size`` filter.  Which PDOs, and the metric their basis is orthonormal for, is one value: :class:`PDOBasis`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

import numpy as np
import torch
from escnn.group import Representation
from escnn.gspaces import GSpace2D

from epdo.diffops import (
    check_discretization,
    check_max_frequency,
    check_max_order,
    check_scale,
    derivative_matrices,
    frequency_projector,
    stencils,
    stencils_numpy,
)
from epdo.kernels.spans import DenseSpan, OrbitSpan, Rows, lowdin
from epdo.memo import memoize
from epdo.representations import (
    Matrices,
    contragredient,
    homomorphisms,
    is_permutation,
    kronecker,
    matrices_on,
    subgroup_order,
)


@dataclass(frozen=True)
class PDOBasis:
    """Which PDOs a layer is built from, and the metric its parameters are orthonormal in.

    Args:
        discretization: the derivative stencils, ``"gauss"`` (derivatives of a Gaussian), ``"gauss-exact"`` (the
            same, made exact on polynomials), ``"fd"`` (central finite differences) or ``"rbffd"`` (RBF-FD); see
            :func:`epdo.diffops.stencils`.
        max_order: highest derivative order, 0..4 (15 operators at 4).
        max_frequency: highest angular frequency of the PDOs' symbols ``sum_a h_a omega^a``; ``None`` keeps every
            PDO up to ``max_order``.  ``2`` keeps 11 of the 15 operator dimensions: escnn's 5x5 filter space (rings of
            angular frequency 0-2), the same basis sizes as ``escnn.nn.R2Conv``.
        bandwidth: ``None``: the basis is orthonormal for the composed filters (white-noise filters at
            initialization); a number ``b`` in ``[0.1, 1]`` (cycles per pixel): orthonormal for a metric that weights
            frequency ``omega`` by ``exp(|omega|^2 / (2 b^2))``, so random filters start band-limited like escnn's.
            Same span and parameter count either way.
        size: stencil width (odd), at least ``max_order + 1``; a layer's ``kernel_size`` sets it
            (:meth:`of_width`).
        scale: the Gaussian stencils' ``eps`` (derivatives of ``exp(-(eps r)^2)``); ``None``: ``0.99 * 5 / size``
            (:func:`epdo.diffops.gauss_scale`).  Only with ``discretization="gauss"``.

    The default is the library's choice for a fixed parameter budget (benchmarks/RESULTS.md); :meth:`reference` is the
    basis of the public reference implementation.

    Example:
        >>> PDOBasis(discretization="fd").num_operators
        15
    """

    discretization: str = "gauss"
    max_order: int = 4
    max_frequency: Optional[int] = 2
    bandwidth: Optional[float] = 0.2
    size: int = 5
    scale: Optional[float] = None

    def __post_init__(self) -> None:
        check_discretization(self.discretization)
        check_scale(self.discretization, self.scale)
        check_max_order(self.max_order)
        check_max_frequency(self.max_frequency)
        check_bandwidth(self.bandwidth)
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1 or self.size % 2 == 0:
            raise ValueError(f"PDOBasis: size must be an odd positive integer, got {self.size!r}")
        if self.max_order > self.size - 1:
            raise ValueError(
                f"PDOBasis: a {self.size}x{self.size} stencil holds derivatives of order <= {self.size - 1}, got "
                f"max_order={self.max_order}"
            )
        if self.scale is not None:  # refuses a scale whose stencils are degenerate, now rather than at a solve
            stencils_numpy(self.discretization, self.max_order, self.size, self.scale)

    @classmethod
    def reference(cls, discretization: str = "fd", max_order: int = 4, size: int = 5) -> PDOBasis:
        """The reference implementation's basis: every PDO up to ``max_order``, orthonormal for the filters."""
        return cls(discretization, max_order, max_frequency=None, bandwidth=None, size=size)

    def of_width(self, size: int) -> PDOBasis:
        """This basis on ``size x size`` stencils: orders up to ``min(max_order, size - 1)``, what the width holds
        (3: orders <= 2, 6 operators; 5 and wider: the basis's own)."""
        return replace(self, size=size, max_order=min(self.max_order, size - 1))

    @property
    def num_operators(self) -> int:
        """Number of derivative operators, ``(max_order + 1)(max_order + 2) / 2``."""
        return (self.max_order + 1) * (self.max_order + 2) // 2

    def stencils(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The derivative stencils ``(num_operators, size, size)`` (:func:`epdo.diffops.stencils`)."""
        return stencils(self.discretization, self.max_order, self.size, dtype, self.scale)


def check_bandwidth(bandwidth: Optional[float]) -> None:
    """Raise ``ValueError`` unless ``bandwidth`` is ``None`` or a number in ``[0.1, 1]`` (cycles per pixel; below,
    the metric's weights ``exp(|omega|^2 / (2 b^2))`` leave the bases' solve numerically degenerate)."""
    if bandwidth is None:
        return
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not 0.1 <= bandwidth <= 1:
        raise ValueError(f"bandwidth must be None or a number in [0.1, 1] (cycles per pixel), got {bandwidth!r}")


def spectral_view(filters: np.ndarray, bandwidth: float) -> np.ndarray:
    """``filters`` ``(..., u, v)`` as the band-limiting metric sees them: their spectra (zero-padded to ``4u x 4v``)
    weighted by ``exp(|omega|^2 / (4 bandwidth^2))``, ``omega`` in cycles per pixel; real and imaginary parts side by
    side, shape ``(..., 4u, 8v)``.  Frobenius products of views weight power at ``omega`` by
    ``exp(|omega|^2 / (2 bandwidth^2))``."""
    n, m = 4 * filters.shape[-2], 4 * filters.shape[-1]
    squared = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(m)[None, :] ** 2
    spectrum = np.fft.fft2(filters, s=(n, m)) * np.exp(squared / (4 * bandwidth**2))
    return np.concatenate([spectrum.real, spectrum.imag], axis=-1)


def _stencil_gram(basis: PDOBasis, bandwidth: Optional[float]) -> np.ndarray:
    """``<S_a, S_b>`` ``(n_ops, n_ops)`` in the Frobenius product of the stencils (``bandwidth=None``) or of their
    :func:`spectral_view`."""
    stack = stencils_numpy(basis.discretization, basis.max_order, basis.size, basis.scale)
    view = (stack if bandwidth is None else spectral_view(stack, bandwidth)).reshape(len(stack), -1)
    return view @ view.T


def _pdo_rows(rows: Rows, basis: PDOBasis, order: str) -> Rows:
    """Canonical PDO coefficient rows restricted to ``basis.max_frequency`` (``h -> h P``,
    :func:`epdo.diffops.frequency_projector`, for every channel pair's coefficients ``h``; the restricted span
    canonical again, its probe drawn in the flattening ``order``), re-based to be orthonormal for the filters they
    compose in ``basis``'s metric (mean squared norm 1 with a band limit).

    A composed filter ``sum_a h_a S_a`` has the metric ``h M h^T``, ``M`` the stencils' Gram matrix, so nothing is
    composed: every step is a ``K x K`` Gram matrix and a re-base."""
    if basis.max_frequency is not None and basis.max_frequency < basis.max_order:
        projected = rows.project(frequency_projector(basis.max_order, basis.max_frequency))
        values, vectors = np.linalg.eigh(projected.gram())
        kept = values > 1e-9  # the rows are orthonormal: survivors O(1), the rest rounding noise ~1e-16
        if not kept.any():
            return projected.rebased(np.zeros((0, len(projected))))
        rows = projected.rebased((vectors[:, kept] / np.sqrt(values[kept])).T).canonical(order)
    plain = rows.gram(_stencil_gram(basis, None))
    if basis.bandwidth is None:
        return rows.rebased(lowdin(plain))
    transform = lowdin(rows.gram(_stencil_gram(basis, basis.bandwidth)))
    return rows.rebased(np.sqrt(len(rows) / np.trace(transform @ plain @ transform.T)) * transform)


def _span(permutation: Matrices, field: Matrices, operators: Matrices) -> Union[DenseSpan, OrbitSpan]:
    """A spanning set of ``Hom_G(permutation, field (x) operators)``: by orbits when ``field`` permutes its basis too,
    else solved densely (:func:`epdo.representations.homomorphisms`)."""
    if is_permutation(permutation) and is_permutation(field):
        return OrbitSpan.of(permutation, field, operators)
    raw = homomorphisms(permutation, kronecker(field, operators))  # (K, (c, a), p)
    d_field, n = next(iter(field.values())).shape[0], next(iter(operators.values())).shape[0]
    return DenseSpan(raw.reshape(len(raw), d_field, n, next(iter(permutation.values())).shape[0]))


@memoize
def pdo_filter_basis(gspace: GSpace2D, rho_in: Representation, rho_out: Representation, basis: PDOBasis) -> np.ndarray:
    """Filters of the equivariant PDOs ``rho_in -> rho_out``: ``(n_basis, d_out, d_in, size, size)``.

    ``n_basis = dim Hom_G(rho_in (x) D, rho_out)`` (restricted to ``basis.max_frequency``): 15 for trivial -> C_N
    regular and ``15 N`` for regular -> regular with every PDO of order <= 4; 11 and ``11 N`` at ``max_frequency=2``.
    Orthonormal in ``basis``'s metric (mean squared norm 1 with a band limit).  float64, read-only, cached.
    """
    order = subgroup_order(rho_in, rho_out, extra=basis.max_order)
    dual = contragredient(derivative_matrices(gspace, basis.max_order, order))
    # W (rho_in (x) D)(g) = rho_out(g) W  <=>  W^T intertwines rho_out^-T with rho_in^-T (x) D^-T
    span = _span(contragredient(matrices_on(rho_out, order)), contragredient(matrices_on(rho_in, order)), dual)
    stencil = stencils_numpy(basis.discretization, basis.max_order, basis.size, basis.scale)
    if not len(span):
        return _read_only(np.zeros((0, rho_out.size, rho_in.size, basis.size, basis.size)))
    rows = _pdo_rows(Rows.of(span).canonical("pca"), basis, "pca")  # flattened as W: (o, c, a)
    coefficients = rows.dense("pca").reshape(len(rows), rho_out.size, rho_in.size, basis.num_operators)
    return _read_only(np.einsum("koca,auv->kocuv", coefficients, stencil))


@memoize
def pdo_coefficient_basis(
    gspace: GSpace2D, rho_in: Representation, field: Representation, basis: PDOBasis
) -> np.ndarray:
    """Basis of ``Hom_G(rho_in, field (x) D^-T)``, the coefficient representation of ``field``'s PDOs (index
    ``(c, a)``): the maps a Neural ePDO's generator composes its per-pixel PDOs with, restricted to
    ``basis.max_frequency`` and orthonormal in ``basis``'s metric for the filters the coefficients compose
    (``<A, B> = sum A[c, a, i] B[c, b, i] <S_a, S_b>``).

    Shape ``(n_basis, d n_ops, d_in)``; float64, read-only, cached.
    """
    order = subgroup_order(rho_in, field, extra=basis.max_order)
    dual = contragredient(derivative_matrices(gspace, basis.max_order, order))
    span = _span(matrices_on(rho_in, order), matrices_on(field, order), dual)
    if not len(span):
        return _read_only(np.zeros((0, field.size * basis.num_operators, rho_in.size)))
    rows = _pdo_rows(Rows.of(span).canonical("cap"), basis, "cpa")
    return _read_only(rows.dense("cap").reshape(len(rows), -1, rho_in.size))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array
