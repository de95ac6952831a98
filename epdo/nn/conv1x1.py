"""Equivariant 1x1 convolution (a pointwise intertwiner between field types)."""

from __future__ import annotations

from escnn.nn import FieldType

from epdo.kernels import intertwiner_basis
from epdo.nn.basis_conv import BasisConv
from epdo.nn.checks import check_positive_int


class Conv1x1(BasisConv):
    """Pointwise equivariant linear map ``out(x) = W f(x)``, ``W`` in ``Hom_G(rho_in, rho_out)`` per field pair.

    Unlike ``escnn.nn.R2Conv(kernel_size=1)``, the eval-mode filter cache cannot go stale and ``state_dict`` keys do
    not depend on the mode.  Shapes: input ``(B, in_type.size, H, W)``, output ``(B, out_type.size, H, W)`` at stride 1.

    Args:
        in_type: input field type.
        out_type: output field type of the same gspace.
        bias: add an invariant bias.
        groups: split both types into this many groups of fields, mapped independently (as ``conv2d``'s ``groups``).
        stride: the map at every ``stride``-th pixel (``conv2d``'s 1x1 with that stride and no padding): output
            ``(B, out_type.size, ceil(H / stride), ceil(W / stride))``.
        gain: parametrization gain: the same initial map, ``gain`` times faster learning under Adam
            (:class:`epdo.nn.basis_expansion.BlockBasisExpansion`).

    Example:
        >>> from escnn import gspaces, nn
        >>> gs = gspaces.rot2dOnR2(4)
        >>> conv = Conv1x1(nn.FieldType(gs, [gs.regular_repr] * 2), nn.FieldType(gs, [gs.trivial_repr]))
        >>> sum(p.numel() for p in conv.parameters())  # one invariant weight per input channel orbit
        2
    """

    def __init__(
        self,
        in_type: FieldType,
        out_type: FieldType,
        *,
        bias: bool = False,
        groups: int = 1,
        gain: float = 1.0,
        stride: int = 1,
    ) -> None:
        check_positive_int("Conv1x1", "stride", stride)
        super().__init__(in_type, out_type, intertwiner_basis, 1, bias=bias, groups=groups, gain=gain, stride=stride)
