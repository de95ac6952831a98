"""Where the fields of an escnn ``FieldType`` lie among its channels."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from escnn.nn import FieldType


def fields_by_representation(ftype: FieldType) -> Dict[str, List[int]]:
    """The positions of ``ftype``'s fields, grouped by representation name, in order of first appearance."""
    fields: Dict[str, List[int]] = {}
    for position, rho in enumerate(ftype.representations):
        fields.setdefault(rho.name, []).append(position)
    return fields


def channels_of(ftype: FieldType, fields: Sequence[int]) -> torch.Tensor:
    """``(sum of the fields' sizes,)`` long: the channels of ``fields`` (positions in ``ftype``), field by field."""
    sizes = [rho.size for rho in ftype.representations]
    starts = [0]
    for size in sizes:
        starts.append(starts[-1] + size)
    return torch.tensor([c for f in fields for c in range(starts[f], starts[f + 1])], dtype=torch.long)


def field_of_channel(ftype: FieldType) -> torch.Tensor:
    """``(C,)`` long: the position of the field each channel of ``ftype`` belongs to."""
    sizes = torch.tensor([rho.size for rho in ftype.representations])
    return torch.repeat_interleave(torch.arange(len(ftype)), sizes)
