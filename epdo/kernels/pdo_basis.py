"""Bases of equivariant linear PDOs between two field representations.

A linear PDO ``Phi[f] = sum_a W_a d^a f`` (``W_a`` of shape ``(d_out, d_in)``) is equivariant iff the
stacked ``W`` intertwines ``rho_in (x) D`` with ``rho_out``, where ``D`` is the derivative representation
(:mod:`epdo.diffops.representation`) and the tensor index is ``(c, a)``, c the input channel and a the
derivative.  Contracting such a ``W`` with the stencils gives a ``size x size`` filter.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
from escnn.group import Representation
from escnn.gspaces import GSpace2D

from epdo.diffops import derivative_representation, stencils_numpy

_INTERTWINERS: Dict[Tuple[str, str, str], np.ndarray] = {}
_FILTERS: Dict[Tuple[str, str, str, str, int, int], np.ndarray] = {}


def intertwiner_basis(rho_in: Representation, rho_out: Representation) -> np.ndarray:
    """Basis of ``Hom_G(rho_in, rho_out)``, shape ``(n_basis, d_out, d_in)``, float64, read-only, cached.

    ``n_basis`` follows Frobenius reciprocity, e.g. ``dim rho_in`` when ``rho_out`` is regular.
    """
    if rho_in.group != rho_out.group:
        raise ValueError(f"representations of different groups: {rho_in.group} and {rho_out.group}")
    key = (rho_in.group.name, rho_in.name, rho_out.name)
    if key not in _INTERTWINERS:
        basis = _homomorphisms(rho_in, rho_out)
        basis.setflags(write=False)
        _INTERTWINERS[key] = basis
    return _INTERTWINERS[key]


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


def pdo_filter_basis(
    gspace: GSpace2D,
    rho_in: Representation,
    rho_out: Representation,
    method: str,
    max_order: int = 4,
    size: int = 5,
) -> np.ndarray:
    """Unit-norm filters of the equivariant PDOs ``rho_in -> rho_out``: ``(n_basis, d_out, d_in, size, size)``.

    ``n_basis = dim Hom_G(rho_in (x) D, rho_out)``: 15 for trivial -> C_N regular, ``15 N`` for regular ->
    regular (max_order 4).  float64, read-only, cached per (gspace, representations, method, order, size).
    """
    key = (gspace.name, rho_in.name, rho_out.name, method, max_order, size)
    if key not in _FILTERS:
        stencil = stencils_numpy(method, max_order, size)
        deriv = derivative_representation(gspace, max_order)
        hom = intertwiner_basis(rho_in.tensor(deriv), rho_out)
        hom = hom.reshape(hom.shape[0], rho_out.size, rho_in.size, deriv.size)
        filters = np.einsum("koca,auv->kocuv", hom, stencil)
        norms = np.linalg.norm(filters.reshape(len(filters), -1), axis=1)
        if np.any(norms < 1e-9):
            raise RuntimeError(f"degenerate PDO basis filter for {rho_in.name} -> {rho_out.name} ({method})")
        filters /= norms.reshape(-1, 1, 1, 1, 1)
        filters.setflags(write=False)
        _FILTERS[key] = filters
    return _FILTERS[key]
