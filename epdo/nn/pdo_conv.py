"""Static steerable PDO convolution (PDO-eConv / steerable PDO layer)."""

from __future__ import annotations

from typing import Optional

from escnn.nn import FieldType

from epdo.diffops import check_discretization, check_max_frequency, check_max_order
from epdo.kernels import DEFAULT_BANDWIDTH, check_bandwidth, pdo_filter_basis
from epdo.nn.basis_conv import BasisConv


class PDOConv(BasisConv):
    r"""Equivariant linear PDO ``out = sum_a W_a d^a f`` with constant, steerable coefficients.

    ``W`` spans ``Hom_G(rho_in (x) D, rho_out)`` per field pair (:func:`epdo.kernels.pdo_filter_basis`); the
    derivatives ``d^a`` are discretized by ``size x size`` stencils, so the layer is one ``conv2d`` with the
    filter ``sum_a W_a S_a`` (same padding, stride 1).  Basis filters have mean squared norm 1 (see ``bandwidth``).

    Shapes: input ``(B, in_type.size, H, W)``, output ``(B, out_type.size, H, W)``.

    Args:
        in_type: input field type (any representations of a finite group on the plane).
        out_type: output field type of the same gspace.
        discretization: ``"fd"``, ``"gauss"`` or ``"rbffd"``.
        max_order: highest derivative order (0..4).
        bias: add an invariant bias (on the trivial components of the output fields).
        size: stencil width.
        bandwidth: ``None``: an orthonormal basis (white-noise filters at initialization); a number ``b`` (cycles per
            pixel): orthonormal for a metric that penalizes frequency ``omega`` by ``exp(|omega|^2 / (2 b^2))``, so
            that random filters are band-limited like escnn's (:func:`epdo.kernels.smooth_orthonormalize`).  Same
            span and parameters; only the initialization and the optimization geometry differ.
        gain: parametrization gain: the same initial filter, ``gain`` times faster learning under Adam
            (:class:`epdo.nn.basis_expansion.BlockBasisExpansion`).
        max_frequency: ``None`` (all PDOs up to ``max_order``) or the highest angular frequency of the PDOs' symbols
            (:func:`epdo.diffops.frequency_projector`): ``2`` keeps 11 of the 15 operator dimensions, escnn's 5x5
            filter space (rings of angular frequency 0-2).
    """

    def __init__(
        self,
        in_type: FieldType,
        out_type: FieldType,
        discretization: str = "fd",
        max_order: int = 4,
        bias: bool = False,
        size: int = 5,
        bandwidth: Optional[float] = DEFAULT_BANDWIDTH,
        gain: float = 1.0,
        max_frequency: Optional[int] = None,
    ) -> None:
        check_discretization(discretization)
        check_max_order(max_order)
        check_bandwidth(bandwidth)
        check_max_frequency(max_frequency)
        gspace = in_type.gspace if isinstance(in_type, FieldType) else None

        def basis(rho_in, rho_out):
            return pdo_filter_basis(gspace, rho_in, rho_out, discretization, max_order, size, bandwidth, max_frequency)

        super().__init__(in_type, out_type, basis, size, bias=bias, gain=gain)
        self.discretization, self.max_order, self.bandwidth = discretization, max_order, bandwidth
        self.max_frequency = max_frequency

    def extra_repr(self) -> str:
        return (
            f"discretization={self.discretization!r}, max_order={self.max_order}, size={self.size}, "
            f"bandwidth={self.bandwidth}, max_frequency={self.max_frequency}"
        )
