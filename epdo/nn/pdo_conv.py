"""Static steerable PDO convolution (PDO-eConv / steerable PDO layer)."""

from __future__ import annotations

from typing import Optional

from escnn.nn import FieldType

from epdo.kernels import PDOBasis, pdo_filter_basis
from epdo.nn.basis_conv import BasisConv
from epdo.nn.geometry import Geometry, layer_geometry


class PDOConv(BasisConv):
    r"""Equivariant linear PDO ``out = sum_a W_a d^a f`` with constant, steerable coefficients ``W``.

    ``W`` spans ``Hom_G(rho_in (x) D, rho_out)`` per field pair (:func:`epdo.kernels.pdo_filter_basis`); the
    derivatives ``d^a`` are discretized by ``kernel_size x kernel_size`` stencils, so the layer is one ``conv2d`` with
    the filter ``sum_a W_a S_a``, with ``R2Conv``'s geometry (:class:`epdo.nn.geometry.Geometry`).  Dilation spreads
    the filter's taps (a PDO on a grid of spacing ``dilation``); the basis stays orthonormal for the filters, so a
    dilated layer starts with the same output variance.  Any field types of a gspace on the plane.

    Shapes: input ``(B, in_type.size, H, W)``, output ``(B, out_type.size, H_out, W_out)``, ``H_out =
    floor((H + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1``.

    Args:
        in_type: input field type.
        out_type: output field type of the same gspace.
        kernel_size: the stencils' width (odd, >= 3), which bounds the derivative orders (3: <= 2); ``None``:
            ``basis.size`` (5).
        padding: pixels of padding on every side; ``None`` (the default, unlike ``R2Conv``'s 0): ``dilation
            (kernel_size - 1) / 2``, the input's size at stride 1.
        stride, dilation, padding_mode, groups: as ``R2Conv``'s.
        bias: add an invariant bias (on the trivial components of the output fields); off by default.
        basis: which PDOs and the metric of their basis (:class:`epdo.kernels.PDOBasis`; default: Gaussian-derivative
            stencils, angular frequencies up to 2, band limit 0.2), on ``kernel_size``'s stencils.

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
        self,
        in_type: FieldType,
        out_type: FieldType,
        kernel_size: Optional[int] = None,
        padding: Optional[int] = None,
        stride: int = 1,
        dilation: int = 1,
        padding_mode: str = "zeros",
        groups: int = 1,
        bias: bool = False,
        *,
        basis: PDOBasis = PDOBasis(),
    ) -> None:
        basis, geometry = layer_geometry("PDOConv", basis, kernel_size, padding, stride, dilation, padding_mode)
        gspace = in_type.gspace if isinstance(in_type, FieldType) else None

        def filters(rho_in, rho_out):
            return pdo_filter_basis(gspace, rho_in, rho_out, basis)

        super().__init__(in_type, out_type, filters, basis.size, bias=bias, groups=groups, geometry=geometry)
        self.basis = basis

    def extra_repr(self) -> str:
        shown = "" if self.geometry == Geometry(self.basis.size) else f", {self.geometry}"
        return f"basis={self.basis}{shown}"
