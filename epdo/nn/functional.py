"""The spatially adaptive PDO on plain tensors: ``y(x) = sum_a (A_a(x) / nu(x)) (S_a * f)(x)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

COEFFICIENT_SCALE = 0.2
"""The generator's output is multiplied by this before normalization (the reference's ``/ 5``)."""

NORM_EPS = 0.01
"""``nu = ||taps||_1 + NORM_EPS``: keeps the normalized operator bounded and its gradient finite."""


class _NormalizedPixelwiseConv(torch.autograd.Function):
    """``out[b, p, j, c] = (sum_t taps[b, j, c, t] * f[b, p, j, c](. + offset_t)) / nu[b, j]``, zero padding, with
    ``nu[b, j] = sum_(c, t) |taps[b, j, c, t]| + NORM_EPS`` (per pixel).

    A per-pixel depthwise ``k x k`` filter shared across the partitions ``p``, computed as ``k^2`` fused
    multiply-adds of shifted views, the L1 normalization folded in: no ``k^2``-fold copy of the input and no
    temporary of the taps' size exists, forward or backward.  Shapes: ``f (B, q, g*d, H, W)``,
    ``taps (B, g*d, k*k, H, W)``.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, taps: torch.Tensor, fields: int) -> torch.Tensor:  # type: ignore[override]
        batch, parts, channels, height, width = x.shape
        kk = taps.shape[2]
        k = int(round(kk**0.5))
        r = k // 2
        by_field = taps.view(batch, fields, channels // fields, kk, height, width)
        nu = by_field[:, :, :, 0].abs().sum(2)
        for t in range(1, kk):
            nu += by_field[:, :, :, t].abs().sum(2)
        nu += NORM_EPS  # (B, g, H, W)
        padded = F.pad(x.reshape(batch, parts * channels, height, width), (r, r, r, r))
        padded = padded.view(batch, parts, channels, height + 2 * r, width + 2 * r)
        out = padded[..., :height, :width] * taps[:, None, :, 0]
        for t in range(1, kk):
            u, v = divmod(t, k)
            out.addcmul_(padded[..., u : u + height, v : v + width], taps[:, None, :, t])
        out.view(batch, parts, fields, channels // fields, height, width).div_(nu[:, None, :, None])
        ctx.fields = fields
        ctx.save_for_backward(padded, taps, nu, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        padded, taps, nu, out = ctx.saved_tensors
        fields = ctx.fields
        batch, parts, channels, height, width = out.shape
        kk = taps.shape[2]
        k = int(round(kk**0.5))
        r = k // 2
        split = (batch, parts, fields, channels // fields, height, width)
        grad_raw = (grad_out.view(split) / nu[:, None, :, None]).view(out.shape)  # d loss / d (unnormalized out)
        grad_x = grad_taps = None
        if ctx.needs_input_grad[1]:
            grad_nu = (grad_out * out).view(split).sum(dim=(1, 3)).neg_().div_(nu)  # (B, g, H, W)
            grad_taps = torch.empty_like(taps)
            by_field = grad_taps.view(batch, fields, channels // fields, kk, height, width)
            taps_by_field = taps.view(by_field.shape)
            for t in range(kk):
                u, v = divmod(t, k)
                shifted = padded[..., u : u + height, v : v + width]
                torch.mul(grad_raw[:, 0], shifted[:, 0], out=grad_taps[:, :, t])
                for p in range(1, parts):  # sum over partitions without a temporary
                    grad_taps[:, :, t].addcmul_(grad_raw[:, p], shifted[:, p])
                by_field[:, :, :, t].addcmul_(taps_by_field[:, :, :, t].sign(), grad_nu[:, :, None])
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for t in range(kk):
                u, v = divmod(t, k)
                grad_padded[..., u : u + height, v : v + width].addcmul_(grad_raw, taps[:, None, :, t])
            grad_x = grad_padded[..., r : r + height, r : r + width]
        return grad_x, grad_taps, None


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
    taps = taps.reshape(batch, fields * d, k * k, height, width)
    out = _NormalizedPixelwiseConv.apply(x.reshape(batch, q, fields * d, height, width), taps, fields)
    return out.reshape(batch, channels, height, width)
