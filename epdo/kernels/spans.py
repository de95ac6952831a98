"""Spanning sets of intertwiner spaces ``Hom_G(P, Q (x) V)``, kept implicit where they have structure, and bases
computed on them as ``K x K`` matrices.

A basis element is an array ``E[c, a, p]``: ``p`` indexes ``P``, ``c`` indexes ``Q`` and ``a`` indexes ``V`` (the PDO
operators).  :class:`OrbitSpan` is the spanning set that the orbits of a permutation representation ``P`` give when
``Q`` permutes its basis too (regular, quotient and trivial fields): on an orbit ``G b`` a vector ``f`` fixed by the
stabilizer gives ``E[:, :, g b] = (Q (x) V)(g) f``.  Its Gram matrices, products with a probe and the final basis
cost ``O(|G| d_Q n^2)`` per element instead of ``O(|G| d_Q n K)``: the paper's D16 models build in seconds.
:class:`DenseSpan` holds any other spanning set as an array.  :class:`Rows` is a basis ``T @ span``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple, Union

import numpy as np

from epdo.representations import Matrices

AXES = "cap"
"""The axes of a basis element, in the order :class:`OrbitSpan` and :class:`DenseSpan` keep them."""


def lowdin(gram: np.ndarray) -> np.ndarray:
    """``T = G^(-1/2)`` for a Gram matrix ``G`` ``(K, K)`` of ``K`` linearly independent vectors: ``T V`` is
    orthonormal when ``G = V V^T``.  ``T`` is symmetric and unique (Löwdin's symmetric orthonormalization), so the
    result depends on the input basis alone: no eigenvector sign or order choices."""
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    if eigenvalues.min() <= 1e-10 * max(eigenvalues.max(), 1e-300):
        raise RuntimeError("linearly dependent basis: cannot orthonormalize")
    return (eigenvectors / np.sqrt(eigenvalues)) @ eigenvectors.T


def _to_axes(array: np.ndarray, shape: Tuple[int, int, int], order: str) -> np.ndarray:
    """``array`` ``(K, F)`` flattened in ``order`` (a permutation of ``"cap"``) as ``(K, c, a, p)``."""
    sizes = dict(zip(AXES, shape))
    split = array.reshape(len(array), *(sizes[axis] for axis in order))
    return split.transpose(0, *(1 + order.index(axis) for axis in AXES))


def _from_axes(array: np.ndarray, order: str) -> np.ndarray:
    """``(K, c, a, p)`` flattened in ``order``: ``(K, F)``."""
    return array.transpose(0, *(1 + AXES.index(axis) for axis in order)).reshape(
        len(array), int(np.prod(array.shape[1:]))
    )


@dataclass(frozen=True)
class DenseSpan:
    """A spanning set stored as ``raw`` ``(K, c, a, p)``."""

    raw: np.ndarray

    @property
    def shape(self) -> Tuple[int, int, int]:
        return self.raw.shape[1:]

    def __len__(self) -> int:
        return len(self.raw)

    def gram(self, metric: Optional[np.ndarray] = None) -> np.ndarray:
        """``<E_k, E_l>`` with ``metric`` ``(n, n)`` on the operator axis ``a`` (default: the identity)."""
        flat = self.raw.reshape(len(self), -1)
        if metric is None:
            return flat @ flat.T
        weighted = np.einsum("kcap,ab->kcbp", self.raw, metric).reshape(len(self), -1)
        return weighted @ flat.T

    def project(self, matrix: np.ndarray) -> DenseSpan:
        """The span of ``E[c, :, p] @ matrix``."""
        return DenseSpan(np.einsum("kcap,ab->kcbp", self.raw, matrix))

    def probe(self, probe: np.ndarray, order: str) -> np.ndarray:
        """``R E^T`` ``(K', K)`` for ``probe`` rows ``R`` ``(K', F)`` flattened in ``order``."""
        return probe @ _from_axes(self.raw, order).T

    def combine(self, transform: np.ndarray) -> np.ndarray:
        """``T E`` as ``(K', c, a, p)``."""
        return np.tensordot(transform, self.raw, axes=1)


@dataclass(frozen=True)
class OrbitSpan:
    """The spanning set of ``Hom_G(P, Q (x) V)`` from the orbits of ``P`` (``P``, ``Q`` permutation representations):
    orbit ``o`` with base point ``b_o`` and stabilizer ``H_o`` contributes one element per column of ``fixed[o]``
    (vectors of ``Q (x) V`` that ``H_o`` fixes), ``E[:, :, g b_o] = (Q (x) V)(g) f``."""

    moves: np.ndarray  # (|G|, d_P): P(g) e_i = e_moves[g, i]
    q_moves: np.ndarray  # (|G|, d_Q)
    v: np.ndarray  # (|G|, n, n)
    bases: Tuple[int, ...]  # base point of each orbit
    fixed: Tuple[np.ndarray, ...]  # (d_Q n, r_o) per orbit

    @classmethod
    def of(cls, permutation: Matrices, q: Matrices, v: Matrices) -> OrbitSpan:
        elements = list(permutation)
        moves = np.stack([permutation[g].argmax(axis=0) for g in elements])
        q_moves = np.stack([q[g].argmax(axis=0) for g in elements])
        v_stack = np.stack([np.asarray(v[g], dtype=float) for g in elements])
        bases, fixed = [], []
        seen = np.zeros(moves.shape[1], dtype=bool)
        for base in range(moves.shape[1]):
            if seen[base]:
                continue
            seen[moves[:, base]] = True
            stabilizer = np.flatnonzero(moves[:, base] == base)
            if len(stabilizer) == 1:
                vectors = np.eye(q_moves.shape[1] * v_stack.shape[1])  # a free orbit: every vector is fixed
            else:
                average = sum(np.kron(q[elements[h]], v_stack[h]) for h in stabilizer) / len(stabilizer)
                rank = int(round(np.trace(average)))
                vectors = np.linalg.svd(average)[0][:, :rank]
            if vectors.shape[1]:
                bases.append(base)
                fixed.append(vectors)
        return cls(moves, q_moves, v_stack, tuple(bases), tuple(fixed))

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.q_moves.shape[1], self.v.shape[1], self.moves.shape[1])

    def __len__(self) -> int:
        return sum(f.shape[1] for f in self.fixed)

    def _blocks(self) -> List[slice]:
        starts = np.cumsum([0] + [f.shape[1] for f in self.fixed])
        return [slice(a, b) for a, b in zip(starts[:-1], starts[1:])]

    def gram(self, metric: Optional[np.ndarray] = None) -> np.ndarray:
        """Block diagonal over the orbits: ``F_o^T (I (x) sum_g V(g)^T M V(g)) F_o / |H_o|``."""
        m = np.eye(self.v.shape[1]) if metric is None else metric
        averaged = np.einsum("gai,ab,gbj->ij", self.v, m, self.v)
        gram = np.zeros((len(self), len(self)))
        d_q, n = self.shape[:2]
        for base, vectors, block in zip(self.bases, self.fixed, self._blocks()):
            stabilizer = int(np.sum(self.moves[:, base] == base))
            weighted = (vectors.reshape(d_q, n, -1).transpose(0, 2, 1) @ averaged.T).transpose(0, 2, 1)
            gram[block, block] = vectors.T @ weighted.reshape(d_q * n, -1) / stabilizer
        return gram

    def project(self, matrix: np.ndarray) -> OrbitSpan:
        """The span of ``E[c, :, p] @ matrix``, for a ``matrix`` that commutes with every ``V(g)^T``: the fixed vectors
        ``f[c, :] @ matrix``."""
        d_q, n = self.shape[:2]
        fixed = tuple((f.reshape(d_q, n, -1).transpose(0, 2, 1) @ matrix).transpose(0, 2, 1).reshape(d_q * n, -1)
                      for f in self.fixed)  # fmt: skip
        return replace(self, fixed=fixed)

    def _elements_by_column(self, base: int) -> Tuple[np.ndarray, np.ndarray]:
        """For each point ``p`` of ``base``'s orbit one group element ``g`` with ``g b = p``: ``(points, elements)``."""
        points, elements = np.unique(self.moves[:, base], return_index=True)
        return points, elements

    def _apply(self, element: int, vectors: np.ndarray) -> np.ndarray:
        """``(Q (x) V)(g) u`` for ``vectors`` ``(d_Q, n, m)``: ``V(g)`` on ``a``, ``Q(g)`` moves ``c``."""
        out = np.empty_like(vectors)
        out[self.q_moves[element]] = np.einsum("ab,cbm->cam", self.v[element], vectors)
        return out

    def probe(self, probe: np.ndarray, order: str) -> np.ndarray:
        """``R E^T`` ``(K', K)`` for ``probe`` rows ``R`` ``(K', F)`` flattened in ``order``: per orbit,
        ``sum_p (Q (x) V)(g_p)^T R[:, :, :, p]`` against the fixed vectors."""
        d_q, n, _ = self.shape
        split = _to_axes(probe, self.shape, order)  # (K', c, a, p)
        out = np.zeros((len(probe), len(self)))
        for base, vectors, block in zip(self.bases, self.fixed, self._blocks()):
            pulled = np.zeros((d_q, n, len(probe)))
            for point, element in zip(*self._elements_by_column(base)):
                column = split[:, :, :, point].transpose(1, 2, 0)  # (c, a, K')
                # (Q (x) V)(g)^T r: undo the move of c, then V(g)^T on a
                pulled += np.einsum("ba,cbm->cam", self.v[element], column[self.q_moves[element]])
            out[:, block] = pulled.reshape(d_q * n, -1).T @ vectors
        return out

    def combine(self, transform: np.ndarray) -> np.ndarray:
        """``T E`` as ``(K', c, a, p)``."""
        d_q, n, d_p = self.shape
        out = np.zeros((len(transform), d_q, n, d_p))
        for base, vectors, block in zip(self.bases, self.fixed, self._blocks()):
            combined = (vectors @ transform[:, block].T).reshape(d_q, n, -1)  # (c, a, K')
            for point, element in zip(*self._elements_by_column(base)):
                out[:, :, :, point] = self._apply(element, combined).transpose(2, 0, 1)
        return out


@dataclass(frozen=True)
class Rows:
    """A basis ``transform @ span``: ``span`` a spanning set of ``K`` elements, ``transform`` ``(K', K)``."""

    span: Union[DenseSpan, OrbitSpan]
    transform: np.ndarray

    @classmethod
    def of(cls, span: Union[DenseSpan, OrbitSpan]) -> Rows:
        return cls(span, np.eye(len(span)))

    def __len__(self) -> int:
        return len(self.transform)

    def gram(self, metric: Optional[np.ndarray] = None) -> np.ndarray:
        """``T G T^T`` with ``G`` the span's Gram matrix for ``metric`` on the operator axis."""
        return self.transform @ self.span.gram(metric) @ self.transform.T

    def rebased(self, transform: np.ndarray) -> Rows:
        """The rows ``transform @ B``."""
        return Rows(self.span, transform @ self.transform)

    def project(self, matrix: np.ndarray) -> Rows:
        """The rows with every channel pair's operator coefficients ``h`` replaced by ``h @ matrix``."""
        return Rows(self.span.project(matrix), self.transform)

    def canonical(self, order: str, seed: int = 0) -> Rows:
        """An orthonormal basis of the span of these (linearly independent) rows that depends on the span alone: a
        fixed pseudo-random matrix ``R`` (drawn in the flattening ``order``) projected onto the span, ``R P``, then
        orthonormalized symmetrically."""
        size = int(np.prod(self.span.shape))
        probe = np.random.default_rng(seed).standard_normal((len(self), size))
        gram = self.gram()
        products = self.span.probe(probe, order) @ self.transform.T  # R B^T
        coefficients = np.linalg.solve(gram, products.T).T  # R B^T (B B^T)^-1
        return self.rebased(lowdin(coefficients @ gram @ coefficients.T) @ coefficients)

    def dense(self, order: str) -> np.ndarray:
        """The basis ``(K', F)``, flattened in ``order``."""
        return _from_axes(self.span.combine(self.transform), order)
