"""escnn representations of finite groups from their matrices, and the spaces of maps between them; SO(2) and O(2)
through their finite subgroups.

* :func:`from_matrices` decomposes a representation given by its matrices into escnn's irreps exactly and
  deterministically (isotypic projectors from characters, one copy of an irrep at a time), without escnn's numerical
  search from random starts.
* :func:`homomorphisms` solves ``W A(g) = B(g) W`` by orbits when either side permutes its basis (regular, quotient
  and trivial fields and direct sums of them), by escnn's irreps otherwise.

Matrices are passed as :data:`Matrices`, ``{g: A(g)}`` over the group's elements.  A representation of SO(2) or O(2)
is passed by its matrices on C_M or D_M (:func:`matrices_on`): when every representation involved has angular
frequencies up to ``F < M``, a vector that C_M fixes in their products has frequency 0, so ``Hom`` over the subgroup
is ``Hom`` over the whole group (:func:`subgroup_order`).
"""

from __future__ import annotations

import hashlib
from typing import Dict, List, Optional

import numpy as np
from escnn.group import Group, GroupElement, Representation, cyclic_group, dihedral_group

from epdo.memo import memoize, serialized

Matrices = Dict[GroupElement, np.ndarray]
"""A representation given by its matrices, ``{g: A(g)}`` over the group's elements."""


@memoize
def matrices_of(rho: Representation) -> Matrices:
    """``{g: rho(g)}`` over the (finite) group's elements (cached; read-only arrays)."""
    matrices = {g: np.array(rho(g), dtype=float) for g in rho.group.elements}
    for m in matrices.values():
        m.setflags(write=False)
    return matrices


def is_continuous(group: Group) -> bool:
    """Whether ``group`` is SO(2) or O(2) (infinite), not a finite group."""
    return group.order() <= 0


def frequency(rho: Representation) -> int:
    """The highest angular frequency among the irreps of ``rho`` (a representation of SO(2), O(2), C_N or D_N)."""
    return max(int(rho.group.irrep(*i).attributes["frequency"]) for i in rho.irreps)


def subgroup_order(*representations: Representation, extra: int = 0) -> Optional[int]:
    """``M = F + 1`` with ``F`` the sum of the representations' frequencies plus ``extra`` (the frequencies of
    another factor, such as the derivatives'): on C_M / D_M, maps between them are exactly the SO(2) / O(2) maps.
    ``None`` for representations of a finite group."""
    if not is_continuous(representations[0].group):
        return None
    return max(2, sum(frequency(rho) for rho in representations) + extra + 1)


@memoize
def finite_subgroup(group: Group, order: int) -> Group:
    """C_order inside SO(2), or D_order inside O(2) (its reflections those of O(2)): element ``k`` (or ``(f, k)``)
    is the rotation by ``2 pi k / order`` (after the reflection ``f``)."""
    return cyclic_group(order) if group.name == "SO(2)" else dihedral_group(order)


def continuous_element(group: Group, element: GroupElement) -> GroupElement:
    """The element of SO(2) or O(2) ``group`` that an element of :func:`finite_subgroup` stands for."""
    order = element.group.rotation_order if hasattr(element.group, "rotation_order") else element.group.order()
    if group.name == "SO(2)":
        return group.element(2 * np.pi * element.value / order, "radians")
    flip, rotation = element.value
    return group.element((flip, 2 * np.pi * rotation / order), "radians")


@memoize
def matrices_on(rho: Representation, order: Optional[int] = None) -> Matrices:
    """``{g: rho(g)}`` over the elements of a finite group (``order`` ``None``), or, for SO(2) / O(2), over those of
    its subgroup C_order / D_order (:func:`finite_subgroup`), keyed by the subgroup's elements (cached; read-only)."""
    if order is None:
        return matrices_of(rho)
    subgroup = finite_subgroup(rho.group, order)
    matrices = {g: np.array(rho(continuous_element(rho.group, g)), dtype=float) for g in subgroup.elements}
    for m in matrices.values():
        m.setflags(write=False)
    return matrices


def is_band_limited_regular(rho: Representation) -> bool:
    """Whether ``rho`` is SO(2)'s or O(2)'s ``spectral_regular_representation`` of its irreps: a band-limited
    regular field, the functions on the group up to a frequency."""
    if not is_continuous(rho.group):
        return False
    irreps = list(dict.fromkeys(rho.irreps))
    return rho == rho.group.spectral_regular_representation(*irreps)


def is_permutation_representation(rho: Representation) -> bool:
    """Whether ``rho`` is a representation of a finite group whose matrices permute the basis (:func:`is_permutation`);
    never for SO(2) or O(2)."""
    return not is_continuous(rho.group) and is_permutation(matrices_of(rho))


def kronecker(a: Matrices, b: Matrices) -> Matrices:
    """``{g: a(g) (x) b(g)}``: the tensor product, index ``(i, j)`` with ``i`` of ``a`` outer."""
    return {g: np.kron(a[g], b[g]) for g in a}


def contragredient(matrices: Matrices) -> Matrices:
    """``{g: A(g)^-T}``: how the dual space transforms (``A(g)`` itself when ``A`` is orthogonal), read off as
    ``A(g^-1)^T``, since a representation's inverse is its value at the inverse element (no matrix is inverted)."""
    return {g: matrices[~g].T for g in matrices}


def is_permutation(matrices: Matrices) -> bool:
    """Whether every matrix permutes the basis (regular, quotient and trivial fields and direct sums of them, in their
    natural basis)."""
    return all(
        np.allclose(m, np.round(m), atol=1e-8) and np.allclose(np.abs(m).sum(0), 1) and (m > -1e-8).all()
        for m in matrices.values()
    )


@serialized
def from_matrices(group: Group, name: str, matrices: Matrices) -> Representation:
    """The escnn ``Representation`` named ``name`` with ``rho(g) = matrices[g]`` (taken from the group's registry when
    one of that name exists).

    ``rho`` is made orthogonal by its invariant inner product ``M = mean_g rho(g)^T rho(g)``; irrep ``psi``'s isotypic
    component is the range of ``P_psi = (d_psi / (e_psi |G|)) sum_g chi_psi(g) rho(g)`` (``e_psi = dim End(psi)``), and
    its copies are split off one at a time as the images of intertwiners ``W = sum_g rho(g) v e_1^T psi(g)^T``.  No
    random start: the same matrices give the same change of basis.  Checked on the group's generators to 1e-9.
    """
    if name in group.representations:
        return group.representations[name]
    stack = _stack(group, matrices)
    root, root_inv = _orthogonalizer(group, stack)
    ids, basis = _decompose_orthogonal(group, name, root @ stack @ root_inv)
    return _register(
        Representation(
            group,
            name,
            ids,
            root_inv @ basis,
            change_of_basis_inv=basis.T @ root,
            representation=_as_dict(group, stack),
        )
    )


@serialized
def tensor_product(group: Group, name: str, left: Matrices, right: Matrices) -> Representation:
    """:func:`from_matrices` of ``{g: left(g) (x) right(g)}`` (index ``(i, j)``, ``i`` of ``left`` outer), each factor
    made orthogonal before the product (cheaper than orthogonalizing the product); in closed form when ``left`` is
    the regular representation (``regular (x) V`` is ``n`` copies of the regular representation)."""
    if name in group.representations:
        return group.representations[name]
    regular = group.regular_representation
    if all(np.array_equal(left[g], regular(g)) for g in group.generators):
        return _register(_regular_tensor_product(group, name, regular, right))
    roots = []
    factors = []
    for matrices in (left, right):
        stack = _stack(group, matrices)
        root, root_inv = _orthogonalizer(group, stack)
        roots.append((root, root_inv))
        factors.append(root @ stack @ root_inv)
    orthogonal = np.stack([np.kron(a, b) for a, b in zip(*factors)])
    ids, basis = _decompose_orthogonal(group, name, orthogonal)
    (left_root, left_inv), (right_root, right_inv) = roots
    stack = np.stack([np.kron(a, b) for a, b in zip(_stack(group, left), _stack(group, right))])
    return _register(
        Representation(
            group,
            name,
            ids,
            np.kron(left_inv, right_inv) @ basis,
            change_of_basis_inv=basis.T @ np.kron(left_root, right_root),
            representation=_as_dict(group, stack),
        )
    )


def _regular_tensor_product(group: Group, name: str, regular: Representation, right: Matrices) -> Representation:
    """``regular (x) V`` is ``n`` copies of the regular representation: with ``g_c`` the element that moves a base
    channel ``b`` to channel ``c``, ``Phi = sum_c E_cc (x) V(g_c)^-1`` gives ``Phi (regular (x) V)(h) Phi^-1 =
    regular(h) (x) I_n``, and reordering ``(c, a) -> (a, c)`` makes that ``n`` blocks of escnn's regular
    representation, whose decomposition is known: no numerical decomposition."""
    elements = list(group.elements)
    moves = np.stack([np.asarray(regular(g)).argmax(axis=0) for g in elements])  # regular(g) e_c = e_moves[g, c]
    size, n = moves.shape[1], next(iter(right.values())).shape[0]
    mover = {int(moves[k, 0]): g for k, g in enumerate(elements)}  # channel c -> g_c (base channel 0)
    phi_inv = np.zeros((size * n, size * n))
    phi = np.zeros((size * n, size * n))
    for c in range(size):
        block = slice(c * n, (c + 1) * n)
        phi_inv[block, block] = right[mover[c]]
        phi[block, block] = right[~mover[c]]  # V(g_c)^-1 = V(g_c^-1)
    swap = np.arange(size * n).reshape(size, n).T.reshape(-1)  # (a, c) position -> (c, a) index
    blocks = np.kron(np.eye(n), regular.change_of_basis)
    blocks_inv = np.kron(np.eye(n), regular.change_of_basis_inv)
    change = phi_inv[:, swap] @ blocks  # Phi^-1 Pi^T (I (x) Q)
    change_inv = blocks_inv @ phi[swap, :]
    stack = {g: np.kron(regular(g), right[g]) for g in elements}
    return Representation(group, name, list(regular.irreps) * n, change, change_of_basis_inv=change_inv,
                          representation=stack)  # fmt: skip


def _register(rho: Representation) -> Representation:
    """Enter ``rho`` in its group's registry (escnn's own constructions do the same), where :func:`from_matrices`
    finds it again by name."""
    rho.group.representations[rho.name] = rho
    return rho


def _stack(group: Group, matrices: Matrices) -> np.ndarray:
    return np.stack([np.asarray(matrices[g], dtype=float) for g in group.elements])


def _as_dict(group: Group, stack: np.ndarray) -> Matrices:
    return dict(zip(group.elements, stack))


def _orthogonalizer(group: Group, stack: np.ndarray):
    """``(S, S^-1)`` with ``S rho(g) S^-1`` orthogonal: ``S = M^(1/2)``, ``M = mean_g rho(g)^T rho(g)`` (the identity
    when ``rho`` is orthogonal on the group's generators)."""
    elements = list(group.elements)
    size = stack.shape[1]
    if all(np.allclose(stack[elements.index(g)].T @ stack[elements.index(g)], np.eye(size)) for g in group.generators):
        return np.eye(size), np.eye(size)
    values, vectors = np.linalg.eigh(np.einsum("gij,gik->jk", stack, stack, optimize=True) / len(elements))
    return (vectors * np.sqrt(values)) @ vectors.T, (vectors / np.sqrt(values)) @ vectors.T


def _decompose_orthogonal(group: Group, name: str, orthogonal: np.ndarray):
    """``(irrep ids, Q)``, ``Q`` orthogonal with ``orthogonal[g] Q = Q (+)_i psi_i(g)``."""
    elements = list(group.elements)
    size = orthogonal.shape[1]
    irreps = group.irreps()
    characters = [np.array([np.trace(psi(g)) for g in elements]) for psi in irreps]
    projectors = [
        psi.size / (len(psi.endomorphism_basis()) * len(elements)) * np.tensordot(chi, orthogonal, axes=1)
        for psi, chi in zip(irreps, characters)
    ]
    # the isotypic components, from one eigendecomposition: P_psi are orthogonal projectors onto orthogonal subspaces
    labels, components = np.linalg.eigh(sum((k + 1) * (p + p.T) / 2 for k, p in enumerate(projectors)))
    columns: List[np.ndarray] = []
    ids: List[tuple] = []
    for k, psi in enumerate(irreps):
        component = components[:, np.abs(labels - (k + 1)) < 0.25]
        if not component.shape[1]:
            continue
        moved = (orthogonal.reshape(-1, size) @ component).reshape(len(elements), size, -1)  # rho(g) component
        restricted = np.tensordot(component, moved, axes=([0], [1])).transpose(1, 0, 2)  # (|G|, m d, m d)
        psi_stack = np.stack([psi(g) for g in elements])
        for copy in _copies(restricted, psi_stack):
            columns.append(component @ copy)
            ids.append(psi.id)
    basis = np.concatenate(columns, axis=1) if columns else np.zeros((size, 0))
    if basis.shape[1] != size:
        raise ValueError(f"{name}: the irreps of {group.name} span {basis.shape[1]} of its {size} dimensions")
    for g in group.generators:
        block_diagonal = _direct_sum([group.irrep(*i)(g) for i in ids])
        if not np.allclose(orthogonal[elements.index(g)] @ basis, basis @ block_diagonal, atol=1e-9):
            raise ValueError(f"{name}: the matrices are not a representation of {group.name}")
    return ids, basis


def _copies(restricted: np.ndarray, psi_stack: np.ndarray) -> List[np.ndarray]:
    """Orthonormal ``W_i`` (``(n, d_psi)``) with ``rho(g) W_i = W_i psi(g)`` and orthogonal images that fill the
    isotypic space ``rho`` (``restricted``, ``(|G|, n, n)``, orthogonal matrices) acts on."""
    remaining = np.eye(restricted.shape[1])
    copies = []
    while remaining.shape[1]:
        for v in remaining.T:
            copy = np.matmul(restricted, v).T @ psi_stack[:, :, 0]  # sum_g rho(g) v psi(g)[:, 0]^T
            norm = float(copy[:, 0] @ copy[:, 0])
            if norm > 1e-6:
                break
        else:
            raise ValueError("no copy of the irrep found in its isotypic component")
        copy /= np.sqrt(norm)
        copies.append(copy)
        u, s, _ = np.linalg.svd(remaining - copy @ (copy.T @ remaining), full_matrices=False)
        remaining = u[:, s > 0.5]
    return copies


def _direct_sum(blocks: List[np.ndarray]) -> np.ndarray:
    size = sum(b.shape[0] for b in blocks)
    out = np.zeros((size, size))
    offset = 0
    for b in blocks:
        out[offset : offset + b.shape[0], offset : offset + b.shape[0]] = b
        offset += b.shape[0]
    return out


def homomorphisms(source: Matrices, target: Matrices) -> np.ndarray:
    """A basis of ``Hom_G(A, B) = {W : W A(g) = B(g) W}`` for ``A = source``, ``B = target``, ``(n_basis, d_B, d_A)``
    (not orthonormal: :func:`epdo.kernels.intertwiner_basis` makes it canonical)."""
    if is_permutation(source):
        return _from_permutation(source, target)
    if is_permutation(target):  # W^T intertwines B with the contragredient of A
        return _from_permutation(target, contragredient(source)).transpose(0, 2, 1)
    return _by_irreps(source, target)


def _from_permutation(permutation: Matrices, target: Matrices) -> np.ndarray:
    """``Hom_G(P, A)`` for a permutation representation ``P``: on each orbit ``G b`` the column of the base point ``b``
    is any vector that ``A`` of its stabilizer fixes, and the others follow, ``W e_(g b) = A(g) W e_b``."""
    elements = list(permutation)
    moves = np.stack([permutation[g].argmax(axis=0) for g in elements])  # P(g) e_i = e_moves[g, i]
    stack = np.stack([target[g] for g in elements])
    size_out, size_in = stack.shape[1], moves.shape[1]
    seen = np.zeros(size_in, dtype=bool)
    basis = []
    for base in range(size_in):
        if seen[base]:
            continue
        seen[moves[:, base]] = True
        average = stack[moves[:, base] == base].mean(axis=0)  # a projector onto the stabilizer's fixed vectors
        rank = int(round(np.trace(average)))
        if rank == 0:
            continue
        images = stack if rank == size_out else stack @ np.linalg.svd(average)[0][:, :rank]  # A(g) fixed_k
        block = np.zeros((rank, size_out, size_in))
        block[:, :, moves[:, base]] = images.transpose(2, 1, 0)
        basis.append(block)
    return np.concatenate(basis) if basis else np.zeros((0, size_out, size_in))


def _by_irreps(source: Matrices, target: Matrices) -> np.ndarray:
    """``Q_B (+)_(matching irreps) End(psi) Q_A^-1`` from both decompositions (:func:`from_matrices`)."""
    group = next(iter(source)).group
    a = from_matrices(group, f"hom-source-{_digest(source)}", source)
    b = from_matrices(group, f"hom-target-{_digest(target)}", target)
    a_offsets = np.cumsum([0] + [group.irrep(*i).size for i in a.irreps])
    b_offsets = np.cumsum([0] + [group.irrep(*i).size for i in b.irreps])
    blocks = []
    for i, a_id in enumerate(a.irreps):
        for j, b_id in enumerate(b.irreps):
            if a_id == b_id:
                for endomorphism in group.irrep(*a_id).endomorphism_basis():
                    block = np.zeros((b.size, a.size))
                    block[b_offsets[j] : b_offsets[j + 1], a_offsets[i] : a_offsets[i + 1]] = endomorphism
                    blocks.append(block)
    if not blocks:
        return np.zeros((0, b.size, a.size))
    return b.change_of_basis @ np.stack(blocks) @ a.change_of_basis_inv


def _digest(matrices: Matrices) -> str:
    return hashlib.sha256(np.stack(list(matrices.values())).round(12).tobytes()).hexdigest()[:16]
