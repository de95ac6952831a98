"""Small matrices applied to every field at every pixel: a linear map, and the ReLU of band-limited fields on samples
of their group (escnn's ``FourierPointwise`` ReLU, fused)."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from escnn.gspaces import GSpace2D
from escnn.nn import FourierPointwise, GeometricTensor

from epdo.nn import native
from epdo.nn.checks import check_input
from epdo.nn.native import field_maps as op


def native_field_maps(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether :func:`epdo.nn.field_linear` and :func:`epdo.nn.fourier_relu` run the compiled kernels for tensors of
    ``device`` and ``dtype``."""
    return native.serves(device, dtype, native.load_field_maps)


def field_linear(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``torch.matmul(matrix, x)``: ``matrix`` ``(e, d)`` applied to each of the ``Q`` columns of each plane of ``x``
    ``(P, d, Q)``, the result ``(P, e, Q)``; no gradient for ``matrix``.

    On float32/float64 CPU tensors it runs the compiled kernel (``torch.ops.epdo.field_linear``), whose output memory
    is reused from step to step; elsewhere, or where no C compiler is available, ``torch.matmul``.
    """
    if x.dim() != 3 or matrix.dim() != 2 or x.shape[1] != matrix.shape[1]:
        raise ValueError(
            f"field_linear: expected x (P, d, Q) and matrix (e, d), got {tuple(x.shape)} and {tuple(matrix.shape)}"
        )
    if matrix.requires_grad:
        raise ValueError("field_linear: matrix is a constant; pass it detached")
    if native_field_maps(x.device, x.dtype):
        return op.field_linear_op(x, matrix)
    return torch.matmul(matrix, x)


def fourier_relu(x: torch.Tensor, sample: torch.Tensor, unsample: torch.Tensor) -> torch.Tensor:
    """``unsample @ relu(sample @ f)`` for every field ``f`` (``d`` channels) at every pixel of ``x``
    ``(B, fields d, H, W)``: ``sample`` ``(S, d)`` evaluates a field at ``S`` group elements, ``unsample`` ``(e, S)``
    takes a function on them to ``e`` coefficients; the result ``(B, fields e, H, W)``.  No gradient for ``sample``
    and ``unsample``.

    On float32/float64 CPU tensors it runs the compiled kernel (``torch.ops.epdo.fourier_relu``: the samples stay in
    registers, and the backward computes them again); elsewhere, or where no C compiler is available, PyTorch's
    matrix products.
    """
    if x.dim() != 4 or sample.dim() != 2 or unsample.dim() != 2 or x.shape[1] % sample.shape[1]:
        raise ValueError(
            f"fourier_relu: expected x (B, fields * d, H, W), sample (S, d) and unsample (e, S), got {tuple(x.shape)},"
            f" {tuple(sample.shape)} and {tuple(unsample.shape)}"
        )
    if sample.requires_grad or unsample.requires_grad:
        raise ValueError("fourier_relu: sample and unsample are constants; pass them detached")
    if native_field_maps(x.device, x.dtype):
        return op.fourier_relu_op(x, sample, unsample)
    batch, channels, height, width = x.shape
    fields = x.reshape(batch, channels // sample.shape[1], sample.shape[1], height * width)
    return torch.matmul(unsample, torch.relu(torch.matmul(sample, fields))).reshape(batch, -1, height, width)


class FourierReLU(FourierPointwise):
    """escnn's ``FourierPointwise(gspace, channels, irreps, *grid_args, function="p_relu", **grid_kwargs)`` (its
    fields, samples ``A`` ``(S, d)``, inverse ``Ainv`` ``(e, S)`` and state), computed by :func:`fourier_relu`:
    ``y = Ainv relu(A f)`` per field and pixel without storing the ``S`` samples.
    Shapes: ``(B, channels d, H, W)`` in, ``(B, channels e, H, W)`` out.
    """

    def __init__(
        self,
        gspace: GSpace2D,
        channels: int,
        irreps: Sequence[Tuple],
        *grid_args,
        normalize: bool = True,
        **grid_kwargs,
    ) -> None:
        irreps = list(irreps)
        super().__init__(gspace, channels, irreps, *grid_args, function="p_relu", normalize=normalize, **grid_kwargs)

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        check_input("FourierReLU", input, self.in_type)
        return GeometricTensor(fourier_relu(input.tensor, self.A, self.Ainv), self.out_type, input.coords)
