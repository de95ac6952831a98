"""2x2 max pooling of permutation fields, a compiled kernel on CPU."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.nn import native
from epdo.nn.checks import check_input
from epdo.nn.exportable import Exportable
from epdo.nn.native import max_pool as op
from epdo.representations import is_permutation_representation


def native_max_pool(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`max_pool2x2` runs the compiled kernel for tensors of ``device`` and ``dtype``."""
    return native.serves(device, dtype, native.load_max_pool)


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``torch.nn.functional.max_pool2d(x, 2)`` of ``x (B, C, H, W)``, ``(B, C, H // 2, W // 2)``, bit for bit
    (values and gradient: the first maximum of each window, the last NaN).

    On float32/float64 CPU tensors it runs the compiled kernel (``torch.ops.epdo.max_pool2x2``); elsewhere, or where
    no C compiler is available, PyTorch's.
    """
    if x.dim() != 4 or x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"max_pool2x2: expected a tensor of shape (B, C, H, W) with H, W >= 2, got {tuple(x.shape)}")
    if native_max_pool(x.device, x.dtype):
        return op.max_pool2x2_op(x)[0]
    return F.max_pool2d(x, 2)


class FieldMaxPool(Exportable, EquivariantModule):
    """``out[b, c, i, j] = max(x[b, c, 2i : 2i + 2, 2j : 2j + 2])``: 2x2 max pooling with stride 2 of every channel,
    as ``escnn.nn.PointwiseMaxPool2D(in_type, 2)``, with :func:`max_pool2x2`.

    Equivariant for fields whose group elements permute channels (regular, quotient, trivial), under the grid's
    rotations by multiples of 90 degrees and its reflections when ``H`` and ``W`` are even.
    Shapes: ``(B, C, H, W)`` in, ``(B, C, H // 2, W // 2)`` out.
    """

    def __init__(self, in_type: FieldType) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"FieldMaxPool: in_type must be an escnn FieldType, got {type(in_type).__name__}")
        for rho in set(in_type.representations):
            if not is_permutation_representation(rho):
                raise ValueError(
                    f"FieldMaxPool: representation {rho.name!r} does not permute channels, so a channel-wise maximum "
                    "is not equivariant; pool regular, quotient or trivial fields (escnn.nn.NormMaxPool pools others)"
                )
        self.in_type = self.out_type = in_type

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("FieldMaxPool", x, self.in_type)
        return GeometricTensor(max_pool2x2(x.tensor), self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        batch, channels, height, width = input_shape
        return (batch, channels, height // 2, width // 2)

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        """``torch.nn.MaxPool2d(2)``, or with ``backend`` ``"auto"`` (where the compiled kernel serves tensors like
        ``like``, by default float32 CPU ones) or ``"native"`` a module calling ``torch.ops.epdo.max_pool2x2``."""
        if backend not in ("auto", "native", "pytorch"):
            raise ValueError(f"FieldMaxPool.export: backend must be 'auto', 'native' or 'pytorch', got {backend!r}")
        like = torch.empty(0) if like is None else like
        compiled = native.exported_native(
            backend, like, native.load_max_pool, "FieldMaxPool.export: the compiled kernel"
        )
        return NativeMaxPool2x2() if compiled else torch.nn.MaxPool2d(2)


class NativeMaxPool2x2(torch.nn.Module):
    """``torch.ops.epdo.max_pool2x2``: ``max_pool2d(x, 2)`` of CPU float32/float64 tensors ``(B, C, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.epdo.max_pool2x2(x)[0]
