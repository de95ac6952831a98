"""The spatially adaptive PDO on plain tensors: ``y(x) = sum_a (A_a(x) / nu(x)) (S_a * f)(x)``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

COEFFICIENT_SCALE = 0.2
"""The generator's output is multiplied by this before normalization (the reference's ``/ 5``)."""

NORM_EPS = 0.01
"""``nu = ||taps||_1 + NORM_EPS``: keeps the normalized operator bounded and its gradient finite."""


class _PixelwiseDepthwiseConv(torch.autograd.Function):
    """``out[b, p, j, y, x] = sum_t taps[b, j, t, y, x] * f[b, p, j, (y, x) + offset_t]``, zero padding.

    A per-pixel depthwise ``k x k`` filter shared across the partitions ``p``, computed as ``k^2`` fused
    multiply-adds of shifted views: no ``k^2``-fold copy of the input exists, forward or backward.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch, parts, channels, height, width = x.shape
        k = int(round(taps.shape[2] ** 0.5))
        r = k // 2
        padded = F.pad(x.reshape(batch, parts * channels, height, width), (r, r, r, r))
        padded = padded.view(batch, parts, channels, height + 2 * r, width + 2 * r)
        out = padded[..., :height, :width] * taps[:, None, :, 0]
        for t in range(1, k * k):
            u, v = divmod(t, k)
            out.addcmul_(padded[..., u : u + height, v : v + width], taps[:, None, :, t])
        ctx.save_for_backward(padded, taps)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:  # type: ignore[override]
        padded, taps = ctx.saved_tensors
        k = int(round(taps.shape[2] ** 0.5))
        r = k // 2
        height, width = padded.shape[-2] - 2 * r, padded.shape[-1] - 2 * r
        grad_x = grad_taps = None
        if ctx.needs_input_grad[1]:
            grad_taps = torch.empty_like(taps)
            for t in range(k * k):
                u, v = divmod(t, k)
                shifted = padded[..., u : u + height, v : v + width]
                torch.mul(grad_out[:, 0], shifted[:, 0], out=grad_taps[:, :, t])
                for p in range(1, grad_out.shape[1]):  # sum over partitions without a temporary
                    grad_taps[:, :, t].addcmul_(grad_out[:, p], shifted[:, p])
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for t in range(k * k):
                u, v = divmod(t, k)
                grad_padded[..., u : u + height, v : v + width].addcmul_(grad_out, taps[:, None, :, t])
            grad_x = grad_padded[..., r : r + height, r : r + width]
        return grad_x, grad_taps


def adaptive_pdo(x: torch.Tensor, coefficients: torch.Tensor, stencils: torch.Tensor, fields: int) -> torch.Tensor:
    """Apply per-pixel PDOs whose coefficients are shared across partitions of ``fields`` fields.

    Args:
        x: input ``(B, q * fields * d, H, W)``: q partitions of ``fields`` fields of dimension d.
        coefficients: ``(B, fields * d * n_ops, H, W)``, index ``(field j, channel c, operator a)``; the PDO
            applied to channel ``(p, j, c)`` of every partition p is ``sum_a coefficients[j, c, a] S_a``.
        stencils: ``(n_ops, k, k)`` derivative stencils.
        fields: fields per partition (the layer's ``g``).

    The PDO of channel ``(j, c)`` is composed into per-pixel taps ``K[j, c] = sum_a A[j, c, a] S_a`` (``k x k``);
    each coefficient field ``j`` is divided by ``nu_j = sum_(c, taps) |K[j, c]| + NORM_EPS`` (the reference's L1
    normalization) after scaling by ``COEFFICIENT_SCALE``.  Memory: the taps are ``(B, fields * d, k^2, H, W)``,
    ``k^2 fields / (q fields) = k^2 / q`` times the input, never ``k^2`` times.

    Returns:
        ``(B, q * fields * d, H, W)``.
    """
    batch, channels, height, width = x.shape
    n_ops, k, _ = stencils.shape
    d = coefficients.shape[1] // (fields * n_ops)
    if coefficients.shape[1] != fields * d * n_ops or d == 0 or channels % (fields * d):
        raise ValueError(
            f"adaptive_pdo: coefficients with {coefficients.shape[1]} channels do not fit {fields} fields of "
            f"{n_ops} operators, or input channels {channels} are not a multiple of fields * d"
        )
    q = channels // (fields * d)
    a = coefficients.reshape(batch, fields * d, n_ops, height * width)
    taps = torch.matmul(stencils.reshape(n_ops, k * k).t() * COEFFICIENT_SCALE, a)  # (B, g d, k^2, HW)
    nu = taps.reshape(batch, fields, d * k * k, height * width).abs().sum(dim=2) + NORM_EPS  # (B, g, HW)
    taps = taps.reshape(batch, fields * d, k * k, height, width)
    out = _PixelwiseDepthwiseConv.apply(x.reshape(batch, q, fields * d, height, width), taps)
    # dividing the output by nu equals dividing the taps, on k^2 / q times fewer numbers
    out = out.reshape(batch, q, fields, d, height * width) / nu[:, None, :, None]
    return out.reshape(batch, channels, height, width)
