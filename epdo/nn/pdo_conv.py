"""Static steerable PDO convolution (PDO-eConv / steerable PDO layer)."""

from __future__ import annotations

from escnn.nn import FieldType

from epdo.kernels import PDOBasis, pdo_filter_basis
from epdo.nn.basis_conv import BasisConv


class PDOConv(BasisConv):
    r"""Equivariant linear PDO ``out = sum_a W_a d^a f`` with constant, steerable coefficients ``W``.

    ``W`` spans ``Hom_G(rho_in (x) D, rho_out)`` per field pair (:func:`epdo.kernels.pdo_filter_basis`); the
    derivatives ``d^a`` are discretized by ``size x size`` stencils, so the layer is one ``conv2d`` with the filter
    ``sum_a W_a S_a`` (same padding, stride 1).  Any field types of a finite group acting on the plane.

    Shapes: input ``(B, in_type.size, H, W)``, output ``(B, out_type.size, H, W)``.

    Args:
        in_type: input field type.
        out_type: output field type of the same gspace.
        basis: which PDOs and the metric of their basis (:class:`epdo.kernels.PDOBasis`; default: Gaussian-derivative
            stencils, angular frequencies up to 2, band limit 0.2).
        bias: add an invariant bias (on the trivial components of the output fields).

    Example:
        >>> import torch
        >>> from escnn import gspaces, nn
        >>> gs = gspaces.rot2dOnR2(8)
        >>> image, fields = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr] * 4)
        >>> conv = PDOConv(image, fields)
        >>> conv(nn.GeometricTensor(torch.randn(2, 1, 16, 16), image)).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(
        self, in_type: FieldType, out_type: FieldType, *, basis: PDOBasis = PDOBasis(), bias: bool = False
    ) -> None:
        if not isinstance(basis, PDOBasis):
            raise TypeError(f"PDOConv: basis must be an epdo.kernels.PDOBasis, got {type(basis).__name__}")
        gspace = in_type.gspace if isinstance(in_type, FieldType) else None

        def filters(rho_in, rho_out):
            return pdo_filter_basis(gspace, rho_in, rho_out, basis)

        super().__init__(in_type, out_type, filters, basis.size, bias=bias)
        self.basis = basis

    def extra_repr(self) -> str:
        return f"basis={self.basis}"
