"""Restriction of D_N fields to C_N, re-expressed as C_N regular / quotient fields."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from escnn.group import Representation
from escnn.nn import EquivariantModule, FieldType, GeometricTensor, RestrictionModule

from epdo.nn.checks import check_input
from epdo.nn.exportable import Exportable
from epdo.representations import is_permutation_representation


class RestrictToRotations(Exportable, EquivariantModule):
    """``flipRot2dOnR2(N)`` fields -> ``rot2dOnR2(N)`` fields, by escnn's ``RestrictionModule`` and a channel
    permutation that splits each restricted permutation field into its rotation orbits.

    A D_N regular field (2N channels) becomes two C_N regular fields; a D_N quotient field becomes the C_N
    regular or quotient fields of its orbits.  Only permutation representations are accepted.
    Shapes: ``(B, C, H, W)`` in and out (the same channels, reordered).
    """

    def __init__(self, in_type: FieldType) -> None:
        super().__init__()
        if not isinstance(in_type, FieldType) or in_type.gspace.flips_order <= 0:
            raise ValueError(f"RestrictToRotations: expected a field type on flipRot2dOnR2(N), got {in_type}")
        self.in_type = in_type
        self.restriction = RestrictionModule(in_type, (None, in_type.gspace.rotations_order))
        gspace = self.restriction.out_type.gspace
        representations: List[Representation] = []
        permutation: List[int] = []
        offset = 0
        for rho in self.restriction.out_type.representations:
            if not is_permutation_representation(rho):
                raise ValueError(f"RestrictToRotations: field representation {rho.name!r} is not a permutation")
            for target, channels in _rotation_orbits(gspace, rho):
                representations.append(target)
                permutation.extend(offset + c for c in channels)
            offset += rho.size
        self.out_type = FieldType(gspace, representations)
        self.register_buffer("permutation", torch.tensor(permutation, dtype=torch.long), persistent=False)

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("RestrictToRotations", x, self.in_type)
        restricted = self.restriction(x)
        return GeometricTensor(restricted.tensor[:, self.permutation], self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return tuple(input_shape)

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        return _ChannelPermutation(self.permutation.clone())


class _ChannelPermutation(torch.nn.Module):
    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("permutation", permutation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.permutation]


def _rotation_orbits(gspace, rho: Representation) -> List[Tuple[Representation, List[int]]]:
    """Orbits of the rotation generator on a C_N permutation representation, each matched to escnn's C_N regular or
    quotient representation: ``[(target, channels)]`` with ``target(r^k) e_0 = e_(k-th channel)``."""
    group = gspace.fibergroup
    n = group.order()
    generator = group.element(1)
    step = np.rint(rho(generator)).astype(int).argmax(axis=0)  # step[c] = channel that r sends c to
    seen = np.zeros(rho.size, dtype=bool)
    orbits = []
    for start in range(rho.size):
        if seen[start]:
            continue
        orbit = [start]
        while step[orbit[-1]] != start:
            orbit.append(int(step[orbit[-1]]))
        seen[orbit] = True
        target = gspace.regular_repr if len(orbit) == n else gspace.quotient_repr(n // len(orbit))
        target_step = np.rint(target(generator)).astype(int).argmax(axis=0)
        channels = [0] * len(orbit)
        position = 0
        for k in range(len(orbit)):
            channels[position] = orbit[k]
            position = int(target_step[position])
        orbits.append((target, channels))
    return orbits
