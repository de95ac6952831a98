"""Invariant features: the maximum over each permutation field's channels, or over samples of each band-limited
regular field of SO(2) / O(2) (a function on the group given by its Fourier coefficients)."""

from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
from escnn.nn import EquivariantModule, FieldType, FourierPointwise, GeometricTensor

from epdo.nn.checks import check_input
from epdo.nn.exportable import Exportable
from epdo.representations import is_continuous, is_permutation_representation


class GroupMaxPool(Exportable, EquivariantModule):
    """``out[b, f] = max_c x[b, (f, c)]``: each permutation field (regular, quotient) becomes one invariant (trivial)
    field, as ``escnn.nn.GroupPooling``, in one tensor operation that ``torch.compile`` traces without a graph break.
    A band-limited regular field of SO(2) / O(2) (``group.spectral_regular_representation``, as escnn's
    ``FourierPointwise`` takes) is a function on the group: its maximum over ``samples`` rotations (and their
    reflections), invariant under those.

    Shapes: ``(B, fields * d, H, W)`` in, ``(B, fields, H, W)`` out.
    """

    def __init__(self, in_type: FieldType, samples: int = 16) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType):
            raise TypeError(f"GroupMaxPool: in_type must be an escnn FieldType, got {type(in_type).__name__}")
        names = {rho.name for rho in in_type.representations}
        sizes = {rho.size for rho in in_type.representations}
        rho = in_type.representations[0]
        gspace = in_type.gspace
        if len(sizes) == 1 and all(is_permutation_representation(r) for r in set(in_type.representations)):
            self.pool: torch.nn.Module = FieldMax(sizes.pop())
        elif len(names) == 1 and is_continuous(gspace.fibergroup):
            irreps = list(dict.fromkeys(rho.irreps))  # the band limit (repeated irreps appear once)
            sampler = FourierPointwise(gspace, 1, irreps, type="regular", N=samples)
            if sampler.rho.name != rho.name:
                raise ValueError(f"GroupMaxPool: {rho.name!r} is not a band-limited regular representation")
            self.pool = SampledMax(sampler.A.clone())
        else:
            raise ValueError(
                "GroupMaxPool: expected fields of one permutation representation, or of one band-limited regular "
                f"representation of SO(2) / O(2), got {in_type}"
            )
        self.in_type = in_type
        self.out_type = FieldType(gspace, [gspace.trivial_repr] * len(in_type))

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("GroupMaxPool", x, self.in_type)
        return GeometricTensor(self.pool(x.tensor), self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return (input_shape[0], len(self.in_type), *input_shape[2:])

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        return copy.deepcopy(self.pool)


class SampledMax(torch.nn.Module):
    """``out[b, f] = max_n (A x_f)_n``: the maximum of each field's function values at the group samples ``A`` ``(n,
    d)``, on plain tensors ``(B, fields * d, H, W)`` (the exported form of :class:`GroupMaxPool` on band-limited
    regular fields)."""

    def __init__(self, samples: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("samples", samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        d = self.samples.shape[1]
        fields = x.reshape(batch, channels // d, d, height * width)
        return torch.matmul(self.samples, fields).amax(dim=2).reshape(batch, -1, height, width)


class FieldMax(torch.nn.Module):
    """``out[b, f] = max_c x[b, (f, c)]`` over consecutive groups of ``field_size`` channels, on plain tensors ``(B, C,
    H, W)`` (the exported form of :class:`GroupMaxPool`)."""

    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        return x.view(batch, channels // self.field_size, self.field_size, height, width).amax(dim=2)
