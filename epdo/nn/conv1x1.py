"""Equivariant 1x1 convolution (a pointwise intertwiner between field types)."""

from __future__ import annotations

from typing import Optional

from escnn.nn import FieldType

from epdo.kernels import intertwiner_basis
from epdo.nn.basis_conv import BasisConv
from epdo.nn.basis_expansion import BasisFn


class Conv1x1(BasisConv):
    """Pointwise equivariant linear map ``out(x) = W f(x)``, ``W`` in ``Hom_G(rho_in, rho_out)`` per field pair.

    The basis is escnn's intertwiner space (``escnn.group.homomorphism_space``).  Unlike ``escnn.nn.R2Conv``,
    the eval-mode filter cache cannot go stale and ``state_dict`` keys do not depend on the mode.

    Shapes: input ``(B, in_type.size, H, W)``, output ``(B, out_type.size, H, W)``.

    Args:
        in_type: input field type.
        out_type: output field type of the same gspace.
        bias: add an invariant bias.
        groups: split both types into this many groups of fields, mapped independently (as ``conv2d``'s ``groups``).
        basis: ``basis(rho_in, rho_out) -> (n, d_out, d_in)`` spanning ``Hom_G(rho_in, rho_out)`` (default: escnn's
            intertwiners, orthonormalized); a different basis of the same space changes only the parametrization.
        gain: parametrization gain: the same initial map, ``gain`` times faster learning under Adam
            (:class:`epdo.nn.basis_expansion.BlockBasisExpansion`).
    """

    def __init__(
        self,
        in_type: FieldType,
        out_type: FieldType,
        bias: bool = False,
        groups: int = 1,
        basis: Optional[BasisFn] = None,
        gain: float = 1.0,
    ) -> None:
        super().__init__(in_type, out_type, basis or intertwiner_basis, 1, bias=bias, groups=groups, gain=gain)
