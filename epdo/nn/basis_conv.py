"""Shared machinery of convolutions whose filter is expanded from an equivariant basis."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.kernels import intertwiner_basis
from epdo.nn.basis_expansion import BasisFn, BlockBasisExpansion
from epdo.nn.cached_weight import CachedWeight
from epdo.nn.checks import check_field_types, check_input
from epdo.nn.exportable import Exportable
from epdo.nn.geometry import Geometry, checked_output_size


class BasisConv(Exportable, CachedWeight, EquivariantModule):
    """``conv2d`` with an equivariant filter ``sum_k theta_k B_k`` and invariant bias, on the sampling grid of
    ``geometry`` (:class:`epdo.nn.geometry.Geometry`; ``None``: 'same' padding, stride 1).

    ``basis(rho_in, rho_out)`` gives each field pair's filters ``(n, d_out, d_in, size, size)`` (or ``(n, d_out,
    d_in)`` when ``size`` is 1, which takes no geometry).  ``gain`` (see
    :class:`epdo.nn.basis_expansion.BlockBasisExpansion`) changes how fast the filter learns, not its initial value.
    With ``groups > 1`` the fields of ``in_type`` and ``out_type`` are split into ``groups`` consecutive groups (all
    input groups of the same types) and group ``i`` of the output only sees group ``i`` of the input.

    Shapes: input ``(B, in_type.size, H, W)``, output ``(B, out_type.size, H_out, W_out)``
    (:meth:`epdo.nn.geometry.Geometry.output_size`).
    """

    def __init__(
        self,
        in_type: FieldType,
        out_type: FieldType,
        basis: BasisFn,
        size: int,
        *,
        bias: bool = False,
        groups: int = 1,
        gain: float = 1.0,
        geometry: Optional[Geometry] = None,
        stride: int = 1,
    ) -> None:
        super().__init__()
        name = type(self).__name__  # error messages name the concrete layer (PDOConv, Conv1x1)
        check_field_types(name, in_type, out_type)
        group_in_type = _group_type(name, in_type, out_type, groups)
        self.in_type, self.out_type = in_type, out_type
        self.gspace = in_type.gspace
        self.size, self.groups = size, groups
        self.geometry = geometry if geometry is not None or size == 1 else Geometry(size)
        self.stride = stride if self.geometry is None else self.geometry.stride  # a 1x1 map: every stride-th pixel
        self.filter_expansion = BlockBasisExpansion(group_in_type, out_type, basis, gain)
        self.bias_expansion: Optional[BlockBasisExpansion] = None
        if bias:
            trivial = FieldType(self.gspace, [self.gspace.trivial_repr])
            self.bias_expansion = BlockBasisExpansion(trivial, out_type, intertwiner_basis)
            for parameter in self.bias_expansion.parameters():
                torch.nn.init.zeros_(parameter)

    def filter_and_bias(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(filter (c_out, c_in / groups, size, size), bias (c_out,) or None)``; cached in eval mode without grad."""

        def compute() -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
            weight = self.filter_expansion()
            if weight.dim() == 2:
                weight = weight[:, :, None, None]
            bias = None if self.bias_expansion is None else self.bias_expansion().reshape(-1)
            return weight, bias

        return self.cached(compute)

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input(type(self).__name__, x, self.in_type)
        weight, bias = self.filter_and_bias()
        if self.geometry is None:
            out = _pointwise(x.tensor, weight, bias, self.groups, self.stride)
        else:
            self._output_size(x.tensor.shape)
            g = self.geometry
            inputs, padding = (x.tensor, g.padding) if g.padding_mode == "zeros" else (g.pad(x.tensor), 0)
            out = F.conv2d(inputs, weight, bias, g.stride, padding, g.dilation, self.groups)
        return GeometricTensor(out, self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_type.size:
            expected = f"(B, {self.in_type.size}, H, W)"
            raise ValueError(f"{type(self).__name__}: expected shape {expected}, got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size, *self._output_size(input_shape))

    def _output_size(self, input_shape: Tuple[int, ...]) -> Tuple[int, int]:
        """``(H_out, W_out)`` of an input of ``input_shape``."""
        if self.geometry is None:
            return tuple(-(-n // self.stride) for n in input_shape[-2:])  # type: ignore[return-value]
        return checked_output_size(type(self).__name__, self.geometry, input_shape)

    @torch.no_grad()
    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        """A plain module computing the same map on the input's ``.tensor``: ``torch.nn.Conv2d``, or for 1x1 filters
        :class:`epdo.nn.basis_conv.Pointwise` (a batched matrix product, faster than ``conv2d`` on CPU)."""
        weight, bias = self.filter_and_bias()
        if self.geometry is None:
            return Pointwise(weight[:, :, 0, 0], bias, self.groups, self.stride)
        g = self.geometry
        conv = torch.nn.Conv2d(
            self.in_type.size,
            self.out_type.size,
            self.size,
            stride=g.stride,
            padding=g.padding,
            dilation=g.dilation,
            groups=self.groups,
            bias=bias is not None,
            padding_mode=g.padding_mode,
        ).to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv


class Pointwise(torch.nn.Module):
    """``out(x) = W f(x) + b`` at every pixel, ``W`` ``(C_out, C_in / groups)`` in ``groups`` diagonal blocks, as a
    batched matrix product, at every ``stride``-th pixel; shapes ``(B, C_in, H, W)`` in, ``(B, C_out, ceil(H / stride),
    ceil(W / stride))`` out.  The exported form of a 1x1 :class:`BasisConv`."""

    def __init__(
        self, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, groups: int = 1, stride: int = 1
    ) -> None:
        super().__init__()
        self.groups, self.stride = groups, stride
        self.weight = torch.nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pointwise(x, self.weight, self.bias, self.groups, self.stride)


def _pointwise(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int, stride: int = 1
) -> torch.Tensor:
    """``conv2d`` with a ``1 x 1`` filter and ``stride`` as a batched matrix product (faster than ``conv2d`` on CPU), a
    bias added by the product itself (``baddbmm``) when ``groups`` is 1: ``x (B, C_in, H, W)``, ``weight (C_out, C_in /
    groups, ...)`` (1x1, or without the filter's axes) -> ``(B, C_out, ceil(H / stride), ceil(W / stride))``."""
    if stride > 1:
        x = x[..., ::stride, ::stride]
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    w = weight.reshape(groups, out_channels // groups, channels // groups)
    inputs = x.reshape(batch, groups, channels // groups, height * width)
    if bias is None:
        out = torch.matmul(w, inputs)
    elif groups == 1:  # the weight broadcast over the batch as a view: no copy
        out = torch.baddbmm(bias[:, None], w[0].expand(batch, -1, -1), inputs[:, 0])
    else:
        out = torch.matmul(w, inputs).add_(bias.reshape(groups, -1, 1))
    return out.reshape(batch, out_channels, height, width)


def _group_type(name: str, in_type: FieldType, out_type: FieldType, groups: int) -> FieldType:
    """The field type of one input group; checks that ``groups`` splits both types evenly."""
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive integer, got {groups!r}")
    if len(in_type) % groups or len(out_type) % groups:
        raise ValueError(
            f"{name}: groups={groups} must divide the number of input fields ({len(in_type)}) "
            f"and of output fields ({len(out_type)})"
        )
    per_group = len(in_type) // groups
    reprs = in_type.representations
    first = [rho.name for rho in reprs[:per_group]]
    for i in range(1, groups):
        if [rho.name for rho in reprs[i * per_group : (i + 1) * per_group]] != first:
            raise ValueError(f"{name}: with groups={groups}, every input group must hold the same field types")
    return FieldType(in_type.gspace, list(reprs[:per_group]))
