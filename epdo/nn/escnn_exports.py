"""Plain-PyTorch forms of escnn modules that have no ``export()``: norm and gated nonlinearities, norm pooling, the
disk mask and ``MultipleModule`` (the same outputs, traceable by ``torch.fx``, no escnn at run time).

escnn's norm and gated modules visit fields grouped by size, smallest first, and so pair the k-th norm bias (or gate)
with the k-th field in that order; the forms here carry each field's own bias and gate channel instead.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch
from escnn import nn

from epdo.nn.field_layout import channels_of, field_of_channel


def _by_size(fields: Sequence[int], ftype: nn.FieldType) -> List[int]:
    """``fields`` (indices into ``ftype``) in escnn's visiting order: by size, then by position."""
    return sorted(fields, key=lambda f: ftype.representations[f].size)


def _field_norms(x: torch.Tensor, fields: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, count, H, W)``: the Euclidean norm of each field of ``x`` ``(B, C, H, W)``, channel c in field
    ``fields[c]``."""
    squares = x.new_zeros(x.shape[0], count, x.shape[2], x.shape[3]).index_add_(1, fields, x * x)
    return squares.sqrt()


class ExportedMask(torch.nn.Module):
    """escnn's ``MaskModule``: the input times its mask ``(1, 1, H, W)`` (zero outside a disk).

    Shapes: ``(B, C, H, W)`` in and out, ``H, W`` those of the mask."""

    def __init__(self, module: nn.MaskModule) -> None:
        super().__init__()
        self.register_buffer("mask", module.mask.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class ExportedNormNonlinearity(torch.nn.Module):
    """escnn's ``NormNonLinearity``: each field times ``f(|v| - b) / |v|`` (0 where ``|v| <= eps``), ``b`` its bias.

    Shapes: ``(B, C, H, W)`` in and out."""

    def __init__(self, module: nn.NormNonLinearity) -> None:
        super().__init__()
        ftype = module.in_type
        self.register_buffer("fields", field_of_channel(ftype))
        bias = torch.zeros(len(ftype))
        if module.log_bias is not None:
            bias[_by_size(range(len(ftype)), ftype)] = torch.exp(module.log_bias.detach()).flatten()
        self.register_buffer("bias", bias.view(1, -1, 1, 1))
        self.function: Callable[[torch.Tensor], torch.Tensor] = module._function
        self.eps = float(module.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = _field_norms(x, self.fields, self.bias.shape[1])
        scale = self.function(norms - self.bias) / torch.clamp(norms, min=self.eps)
        scale = torch.where(norms <= self.eps, torch.zeros_like(scale), scale)
        return x * scale.index_select(1, self.fields)


class ExportedGate(torch.nn.Module):
    """escnn's ``GatedNonLinearity1`` (gates dropped): each gated field times ``sigmoid(gate - bias)`` of its gate.

    Shapes: ``(B, C_in, H, W)`` in (gates and gated fields), ``(B, C_out, H, W)`` out (the gated fields, in order)."""

    def __init__(self, module: nn.GatedNonLinearity1) -> None:
        super().__init__()
        if not module.drop_gates:
            raise TypeError("export: GatedNonLinearity1 with drop_gates=False is not supported; use drop_gates=True")
        ftype = module.in_type
        indices = module.gates_indices
        gate_channels = range(*indices.tolist()) if module._contiguous["gate"] else indices.tolist()
        field_at = field_of_channel(ftype).tolist()
        gate_fields = {field_at[c] for c in gate_channels}
        gated = [f for f in range(len(ftype)) if f not in gate_fields]
        gate_of = dict(zip(_by_size(gated, ftype), zip(gate_channels, module.bias.detach().flatten().tolist())))
        sizes = torch.tensor([ftype.representations[f].size for f in gated])
        self.register_buffer("channels", channels_of(ftype, gated))
        self.register_buffer("gates", torch.tensor([gate_of[f][0] for f in gated]).repeat_interleave(sizes))
        self.register_buffer(
            "bias", torch.tensor([gate_of[f][1] for f in gated]).repeat_interleave(sizes).view(1, -1, 1, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.channels) * torch.sigmoid(x.index_select(1, self.gates) - self.bias)


class ExportedNormPool(torch.nn.Module):
    """escnn's ``NormPool``: the norm of each field.  Shapes: ``(B, C, H, W)`` in, ``(B, fields, H, W)`` out."""

    def __init__(self, module: nn.NormPool) -> None:
        super().__init__()
        self.register_buffer("fields", field_of_channel(module.in_type))
        self.count = len(module.in_type)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _field_norms(x, self.fields, self.count)


class ExportedBranches(torch.nn.Module):
    """escnn's ``MultipleModule``: each branch's plain module on its channels, the outputs concatenated in the
    order of the branches.  Shapes: ``(B, C_in, H, W)`` in, ``(B, C_out, H, W)`` out."""

    def __init__(self, channels: Sequence[torch.Tensor], branches: Sequence[torch.nn.Module]) -> None:
        super().__init__()
        for index, selected in enumerate(channels):
            self.register_buffer(f"channels_{index}", selected)
        self.branches = torch.nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [branch(x.index_select(1, getattr(self, f"channels_{i}"))) for i, branch in enumerate(self.branches)]
        return torch.cat(parts, dim=1)


def branch_channels(module: nn.MultipleModule) -> List[torch.Tensor]:
    """The input channels of each of ``module``'s branches, in order; raises ``TypeError`` for a branch of several
    labels or a reshuffled input."""
    branching = module.branching
    if branching.reshuffle_layer is not None:
        raise TypeError("export: MultipleModule with reshuffle > 0 is not supported; use reshuffle=0")
    channels = []
    for labels in module.merging._labels:
        if len(labels) != 1:
            raise TypeError(f"export: a MultipleModule branch of several labels {labels} is not supported")
        indices = getattr(branching, f"indices_{labels[0]}")
        contiguous = branching._contiguous[labels[0]]
        channels.append(torch.arange(int(indices[0]), int(indices[1])) if contiguous else indices.clone())
    return channels
