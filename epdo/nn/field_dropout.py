"""Dropout of whole fields at each pixel."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.nn.checks import check_input
from epdo.nn.exportable import Exportable
from epdo.nn.field_layout import field_of_channel


class FieldDropout(Exportable, EquivariantModule):
    """In training mode, zero each field at each pixel with probability ``p`` (all its channels together) and scale
    the rest by ``1 / (1 - p)``; the identity in eval mode.  As ``escnn.nn.FieldDropout``, in one tensor operation
    that ``torch.compile`` traces without a graph break (fields of several sizes: one mask per field, gathered per
    channel).

    Shapes: ``(B, C, H, W)`` in and out.
    """

    def __init__(self, in_type: FieldType, p: float = 0.1) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"FieldDropout: in_type must be an escnn FieldType, got {type(in_type).__name__}")
        if not 0 <= p < 1:
            raise ValueError(f"FieldDropout: p must be in [0, 1), got {p}")
        self.in_type = self.out_type = in_type
        self.p = p
        sizes = {rho.size for rho in in_type.representations}
        self.field_size = sizes.pop() if len(sizes) == 1 else None
        fields = field_of_channel(in_type) if self.field_size is None else None  # several sizes: a mask per field
        self.register_buffer("fields", fields, persistent=False)

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("FieldDropout", x, self.in_type)
        if not self.training or self.p == 0:
            return x
        batch, channels, height, width = x.tensor.shape
        if self.field_size is None:
            keep = torch.rand(batch, len(self.in_type), height, width, device=x.tensor.device) >= self.p
            out = x.tensor * keep.index_select(1, self.fields).to(x.tensor.dtype) / (1 - self.p)
            return GeometricTensor(out, self.out_type)
        fields = x.tensor.view(batch, len(self.in_type), self.field_size, height, width)
        keep = torch.rand(batch, len(self.in_type), 1, height, width, device=fields.device) >= self.p
        out = fields * keep.to(fields.dtype) / (1 - self.p)
        return GeometricTensor(out.view(batch, channels, height, width), self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(input_shape)

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        return torch.nn.Identity()  # eval mode
