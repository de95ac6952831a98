"""Per-field normalization: per sample (``FieldNorm``, any fields of one representation) and per batch
(``FieldBatchNorm``, permutation fields); which modules of a network are batch norms (``batch_norms``)."""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from escnn import nn
from escnn.group import Representation
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.kernels import intertwiner_basis
from epdo.nn.checks import check_input
from epdo.nn.exportable import Exportable
from epdo.representations import is_permutation_representation

BATCH_NORMS = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    nn.IIDBatchNorm1d,
    nn.IIDBatchNorm2d,
    nn.IIDBatchNorm3d,
    nn.GNormBatchNorm,
    nn.NormBatchNorm,
    nn.InducedNormBatchNorm,
)
"""Modules that normalize with batch statistics in training mode and running statistics in eval mode: buffers named
``running_mean`` / ``running_var`` (escnn: ``<representation>_running_var``), ``momentum`` (``None``: a cumulative
average), ``reset_running_stats()``.  escnn's ``InnerBatchNorm`` and :class:`FieldBatchNorm` hold a ``BatchNorm3d``."""


def batch_norms(module: torch.nn.Module) -> List[torch.nn.Module]:
    """Every batch norm (``BATCH_NORMS``: torch's and escnn's) in ``module``, in ``modules()`` order."""
    return [m for m in module.modules() if isinstance(m, BATCH_NORMS)]


def _field_size(module: str, in_type: FieldType) -> int:
    """The common size of ``in_type``'s fields, which must be permutation representations of one size."""
    if not isinstance(in_type, FieldType):
        raise TypeError(f"{module}: in_type must be an escnn FieldType, got {type(in_type).__name__}")
    sizes = {rho.size for rho in in_type.representations}
    if len(sizes) != 1 or not all(is_permutation_representation(rho) for rho in set(in_type.representations)):
        raise ValueError(f"{module}: expected fields of one permutation representation, got {in_type}")
    return sizes.pop()


class FieldNorm(Exportable, EquivariantModule):
    """``y = (f - mean) / sqrt(var + eps) * w + b u`` per sample and field: ``mean`` the average over pixels of the
    field's invariant part, ``var`` the mean square over its channels and pixels after that, ``w``, ``b`` one scalar
    each per field, ``u`` the field's unit invariant vector (no bias for fields without one).

    Equivariant for fields of any one representation (``rho`` orthogonal: the invariant part and the norm are
    invariant).  For permutation representations (regular, quotient) the invariant part is the channels' mean and
    ``b u`` adds ``b`` to every channel: a ``group_norm``.  Shapes: ``(B, C, H, W)`` in and out.
    """

    def __init__(self, in_type: FieldType, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"FieldNorm: in_type must be an escnn FieldType, got {type(in_type).__name__}")
        if len({rho.name for rho in in_type.representations}) != 1:
            raise ValueError(f"FieldNorm: expected fields of one representation, got {in_type}")
        rho = in_type.representations[0]
        self.in_type = self.out_type = in_type
        self.eps, self.field_size = eps, rho.size
        self.weight = torch.nn.Parameter(torch.ones(len(in_type)))
        self.bias = torch.nn.Parameter(torch.zeros(len(in_type)))
        self.norm = None if is_permutation_representation(rho) else InvariantNorm(rho, len(in_type), eps)

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("FieldNorm", x, self.in_type)
        if self.norm is not None:
            return GeometricTensor(self.norm(x.tensor, self.weight, self.bias), self.out_type)
        weight = self.weight.repeat_interleave(self.field_size)
        bias = self.bias.repeat_interleave(self.field_size)
        out = F.group_norm(x.tensor, len(self.in_type), weight, bias, self.eps)
        return GeometricTensor(out, self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(input_shape)

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        if self.norm is not None:
            return _AffineInvariantNorm(
                copy.deepcopy(self.norm), self.weight.detach().clone(), self.bias.detach().clone()
            )
        norm = torch.nn.GroupNorm(len(self.in_type), self.in_type.size, self.eps)
        with torch.no_grad():
            norm.weight.copy_(self.weight.repeat_interleave(self.field_size))
            norm.bias.copy_(self.bias.repeat_interleave(self.field_size))
        return norm.to(self.weight.device, self.weight.dtype)


class InvariantNorm(torch.nn.Module):
    """:class:`FieldNorm`'s computation for ``fields`` fields of a representation ``rho`` that does not permute
    channels, on plain tensors ``(B, fields * d, H, W)`` with the weights and biases ``(fields,)`` given."""

    def __init__(self, rho: Representation, fields: int, eps: float) -> None:
        super().__init__()
        invariant = intertwiner_basis(rho.group.trivial_representation, rho)[:, :, 0]  # (t, d), orthonormal rows
        self.fields, self.d, self.eps = fields, rho.size, eps
        self.register_buffer("invariant", torch.tensor(invariant, dtype=torch.get_default_dtype()))

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        fields = x.reshape(batch, self.fields, self.d, height, width)
        if len(self.invariant):
            mean = fields.mean(dim=(3, 4)) @ self.invariant.t() @ self.invariant  # (B, fields, d)
            fields = fields - mean[..., None, None]
        scale = weight * torch.rsqrt(fields.square().mean(dim=(2, 3, 4)) + self.eps)  # (B, fields)
        out = fields * scale[:, :, None, None, None]
        if len(self.invariant):
            out = out + (bias[:, None] * self.invariant[0])[None, :, :, None, None]
        return out.reshape(batch, channels, height, width)


class _AffineInvariantNorm(torch.nn.Module):
    """The exported form of a :class:`FieldNorm` of non-permutation fields: its norm with fixed weights."""

    def __init__(self, norm: InvariantNorm, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x, self.weight, self.bias)


class FieldBatchNorm(Exportable, EquivariantModule):
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

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
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
