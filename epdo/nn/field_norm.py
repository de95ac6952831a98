"""Per-sample normalization of each field (GroupNorm with one group per field)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.nn.checks import check_input, is_permutation_representation


class FieldNorm(EquivariantModule):
    """``y = (f - mean) / sqrt(var + eps) * w + b`` per sample and field; statistics over the field's channels
    and all pixels, ``w``, ``b`` one scalar each per field.

    Equivariant for fields of permutation representations (regular, quotient), whose channel mean and variance
    are invariant.  Shapes: ``(B, C, H, W)`` in and out.
    """

    def __init__(self, in_type: FieldType, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"FieldNorm: in_type must be an escnn FieldType, got {type(in_type).__name__}")
        sizes = {rho.size for rho in in_type.representations}
        if len(sizes) != 1 or not all(is_permutation_representation(rho) for rho in set(in_type.representations)):
            raise ValueError(f"FieldNorm: expected fields of one permutation representation, got {in_type}")
        self.in_type = self.out_type = in_type
        self.eps = eps
        self.field_size = sizes.pop()
        self.weight = torch.nn.Parameter(torch.ones(len(in_type)))
        self.bias = torch.nn.Parameter(torch.zeros(len(in_type)))

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("FieldNorm", x, self.in_type)
        weight = self.weight.repeat_interleave(self.field_size)
        bias = self.bias.repeat_interleave(self.field_size)
        out = F.group_norm(x.tensor, len(self.in_type), weight, bias, self.eps)
        return GeometricTensor(out, self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(input_shape)

    def export(self) -> torch.nn.GroupNorm:
        norm = torch.nn.GroupNorm(len(self.in_type), self.in_type.size, self.eps)
        with torch.no_grad():
            norm.weight.copy_(self.weight.repeat_interleave(self.field_size))
            norm.bias.copy_(self.bias.repeat_interleave(self.field_size))
        return norm.to(self.weight.device, self.weight.dtype)
