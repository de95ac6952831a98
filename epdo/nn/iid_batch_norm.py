"""escnn's ``IIDBatchNorm2d`` as one affine map per channel: the same statistics, parameters, state and export."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from escnn import nn
from escnn.nn import FieldType, GeometricTensor

from epdo.nn.checks import check_input


class IIDBatchNorm(nn.IIDBatchNorm2d):
    """``y = (x - P mean) * w / sqrt(var + eps) + Q b`` per field, as escnn's ``IIDBatchNorm2d`` (whose parameters,
    buffers, ``state_dict`` and ``export()`` it keeps): ``mean`` the field's channel means over batch and pixels,
    ``P`` its projection on the field's invariant part, ``var`` the mean over the field's channels of their unbiased
    variances, ``w`` one scale and ``b`` the invariant part's bias per field (``Q`` its basis); the statistics carry
    no gradient (escnn's choice).

    Computed as ``y = x * scale + shift`` with one ``(C,)`` scale and shift: the channel statistics in two passes
    over ``x`` for all field types together, the output in one ``addcmul``.
    Shapes: ``(B, C, H, W)`` in and out.
    """

    def __init__(
        self,
        in_type: FieldType,
        eps: float = 1e-05,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        if not isinstance(in_type, FieldType):
            raise TypeError(f"IIDBatchNorm: in_type must be an escnn FieldType, got {type(in_type).__name__}")
        super().__init__(in_type, eps, momentum, affine, track_running_stats)
        order: List[int] = []
        for name, _ in self._sizes:
            indices = getattr(self, f"{self._escape_name(name)}_indices")
            order += list(range(*indices)) if self._contiguous[name] else indices.tolist()
        self.register_buffer("_channel_order", torch.tensor(order), persistent=False)
        self.register_buffer("_channel_place", torch.argsort(self._channel_order), persistent=False)

    def forward(self, input: GeometricTensor) -> GeometricTensor:
        check_input("IIDBatchNorm", input, self.in_type)
        x = input.tensor
        if self.training and x.numel() <= x.shape[1]:
            raise ValueError(
                f"IIDBatchNorm: expected more than one value per channel in training mode, got an input of shape "
                f"{tuple(x.shape)}"
            )
        factor = self._update_factor()
        statistics = None
        if self.training or not self.track_running_stats:
            with torch.no_grad():
                statistics = tuple(s[self._channel_order] for s in _channel_statistics(x))
        scales, shifts, start = [], [], 0
        for name, size in self._sizes:
            fields = self._nfields[name]
            stats = None
            if statistics is not None:
                stats = tuple(s[start : start + fields * size].reshape(fields, size) for s in statistics)
            scale, shift = self._affine(name, size, stats, factor)
            scales.append(scale.expand(fields, size).reshape(-1))
            shifts.append(shift.reshape(-1) if shift is not None else x.new_zeros(fields * size))
            start += fields * size
        scale, shift = torch.cat(scales)[self._channel_place], torch.cat(shifts)[self._channel_place]
        y = torch.addcmul(shift.reshape(1, -1, 1, 1), x, scale.reshape(1, -1, 1, 1))
        return GeometricTensor(y, self.out_type, input.coords)

    def _update_factor(self) -> float:
        """Counts the batch in training mode; the running statistics' weight for it (escnn's rule)."""
        if not self.training:
            return 0.0
        self.num_batches_tracked += 1
        return 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum

    def _affine(
        self, name: str, size: int, stats: Optional[Tuple[torch.Tensor, torch.Tensor]], factor: float
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(scale (fields, 1), shift (fields, size) or None)`` of the fields of representation ``name``; ``stats``
        their channel variances and means ``(fields, size)`` (batch statistics, which update the running ones), or
        ``None`` (the running statistics)."""
        key = self._escape_name(name)
        trivial = self._has_trivial[name]
        if stats is None:
            means, variances = self._get_running_stats(name)
        else:
            channel_variances, channel_means = stats
            variances = channel_variances.mean(dim=1, keepdim=True)
            means = channel_means @ getattr(self, f"{key}_avg").T if trivial else None
            if self.track_running_stats and self.training:
                running_means, running_variances = self._get_running_stats(name)
                running_variances.mul_(1 - factor).add_(factor * variances)
                if trivial:
                    running_means.mul_(1 - factor).add_(factor * means)
        scale = torch.rsqrt(variances + self.eps)
        if self.affine:
            scale = getattr(self, f"{key}_weight") * scale
        if not trivial:
            return scale, None
        shift = -means * scale
        if self.affine:
            shift = shift + getattr(self, f"{key}_bias") @ getattr(self, f"{key}_change_of_basis").T
        return scale, shift


def _channel_statistics(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(variances, means)`` ``(C,)`` of ``x`` ``(B, C, H, W)`` over batch and pixels, the variances unbiased: the
    mean, then the centred squares (two passes; a few times faster than ``torch.var_mean`` over these dimensions)."""
    means = x.mean(dim=(0, 2, 3), keepdim=True)
    count = x.numel() // x.shape[1]
    variances = (x - means).square_().sum(dim=(0, 2, 3)) / (count - 1)
    return variances, means.reshape(-1)
