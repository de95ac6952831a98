"""Per-field normalization of permutation fields: per sample (``FieldNorm``) and per batch (``FieldBatchNorm``)."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.nn.checks import check_input
from epdo.representations import is_permutation, matrices_of


def _field_size(module: str, in_type: FieldType) -> int:
    """The common size of ``in_type``'s fields, which must be permutation representations of one size."""
    if not isinstance(in_type, FieldType):
        raise TypeError(f"{module}: in_type must be an escnn FieldType, got {type(in_type).__name__}")
    sizes = {rho.size for rho in in_type.representations}
    if len(sizes) != 1 or not all(is_permutation(matrices_of(rho)) for rho in set(in_type.representations)):
        raise ValueError(f"{module}: expected fields of one permutation representation, got {in_type}")
    return sizes.pop()


class FieldNorm(EquivariantModule):
    """``y = (f - mean) / sqrt(var + eps) * w + b`` per sample and field; statistics over the field's channels
    and all pixels, ``w``, ``b`` one scalar each per field.

    Equivariant for fields of permutation representations (regular, quotient), whose channel mean and variance
    are invariant.  Shapes: ``(B, C, H, W)`` in and out.
    """

    def __init__(self, in_type: FieldType, eps: float = 1e-5) -> None:
        super().__init__()
        self.field_size = _field_size("FieldNorm", in_type)
        self.in_type = self.out_type = in_type
        self.eps = eps
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


class FieldBatchNorm(EquivariantModule):
    """Batch normalization with one mean, variance, weight and bias per field (statistics over the batch, the
    field's channels and all pixels), as ``escnn.nn.InnerBatchNorm`` for permutation fields; a ``BatchNorm3d`` on
    the view ``(B, fields, d, H, W)``, which ``torch.compile`` traces without a graph break.

    Shapes: ``(B, C, H, W)`` in and out.
    """

    def __init__(self, in_type: FieldType, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.field_size = _field_size("FieldBatchNorm", in_type)
        self.in_type = self.out_type = in_type
        self.batch_norm = torch.nn.BatchNorm3d(len(in_type), eps, momentum)

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("FieldBatchNorm", x, self.in_type)
        batch, channels, height, width = x.tensor.shape
        out = self.batch_norm(x.tensor.view(batch, len(self.in_type), self.field_size, height, width))
        return GeometricTensor(out.view(batch, channels, height, width), self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(input_shape)

    def export(self) -> torch.nn.Module:
        return FieldView(self.batch_norm, self.field_size)


class FieldView(torch.nn.Module):
    """``module`` applied to ``(B, C, H, W)`` viewed as ``(B, C / field_size, field_size, H, W)`` (the exported form of
    :class:`FieldBatchNorm`: a ``BatchNorm3d`` over fields)."""

    def __init__(self, module: torch.nn.Module, field_size: int) -> None:
        super().__init__()
        self.module, self.field_size = module, field_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        return self.module(x.view(batch, channels // self.field_size, self.field_size, height, width)).view(x.shape)
