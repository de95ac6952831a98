"""Invariant features from permutation fields: the maximum over each field's channels."""

from __future__ import annotations

from typing import Tuple

import torch
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.nn.checks import check_input
from epdo.representations import is_permutation_representation


class GroupMaxPool(EquivariantModule):
    """``out[b, f] = max_c x[b, (f, c)]``: each permutation field (regular, quotient) becomes one invariant (trivial)
    field, as ``escnn.nn.GroupPooling``, in one tensor operation that ``torch.compile`` traces without a graph break.

    Shapes: ``(B, fields * d, H, W)`` in, ``(B, fields, H, W)`` out.
    """

    def __init__(self, in_type: FieldType) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"GroupMaxPool: in_type must be an escnn FieldType, got {type(in_type).__name__}")
        sizes = {rho.size for rho in in_type.representations}
        if len(sizes) != 1 or not all(is_permutation_representation(rho) for rho in set(in_type.representations)):
            raise ValueError(f"GroupMaxPool: expected fields of one permutation representation, got {in_type}")
        gspace = in_type.gspace
        self.in_type = in_type
        self.out_type = FieldType(gspace, [gspace.trivial_repr] * len(in_type))
        self.field_size = sizes.pop()

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("GroupMaxPool", x, self.in_type)
        batch, _, height, width = x.tensor.shape
        out = x.tensor.view(batch, len(self.in_type), self.field_size, height, width).amax(dim=2)
        return GeometricTensor(out, self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return (input_shape[0], len(self.in_type), *input_shape[2:])

    def export(self) -> torch.nn.Module:
        return FieldMax(self.field_size)


class FieldMax(torch.nn.Module):
    """``out[b, f] = max_c x[b, (f, c)]`` over consecutive groups of ``field_size`` channels, on plain tensors ``(B, C,
    H, W)`` (the exported form of :class:`GroupMaxPool`)."""

    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        return x.view(batch, channels // self.field_size, self.field_size, height, width).amax(dim=2)
