"""The spatially adaptive PDO on plain tensors: ``y(x) = sum_a (A_a(x) / nu(x)) (S_a * f)(x)``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from epdo.nn import native
from epdo.nn.native import op
from epdo.nn.native.op import NORM_EPS

COEFFICIENT_SCALE = 0.2
"""The generator's output is multiplied by this before normalization (the reference's ``/ 5``)."""

NORMALIZATIONS = ("rms", "l1")
"""How each coefficient field's per-pixel taps are normalized (see :func:`adaptive_pdo`)."""


BACKENDS = ("auto", "native", "pytorch")
"""How :func:`adaptive_pdo` is computed: ``"native"`` the fused compiled CPU kernel (:mod:`epdo.nn.native`),
``"pytorch"`` shifted-view tensor operations (any device; the reference the kernel is tested against), ``"auto"``
the kernel for float32/float64 CPU tensors when it is available, PyTorch otherwise."""


def check_normalization(normalization: str) -> None:
    """Raise ``ValueError`` unless ``normalization`` is one of :data:`NORMALIZATIONS`."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def _tap_norm(by_field: torch.Tensor, normalization: str, taps: int) -> torch.Tensor:
    """``nu`` of taps ``(B, g, d, taps, H, W)`` per field and pixel, ``(B, g, H, W)``, without a taps-sized temporary:
    ``"l1"`` the sum of ``|taps|``; ``"rms"`` the root mean square over the field's ``d`` channels of each channel's
    L2 norm; plus ``NORM_EPS``."""
    reduce = torch.abs if normalization == "l1" else torch.square
    nu = reduce(by_field[:, :, :, 0]).sum(2)
    for t in range(1, taps):
        nu += reduce(by_field[:, :, :, t]).sum(2)
    if normalization == "rms":
        nu.div_(by_field.shape[2]).sqrt_()
    return nu.add_(NORM_EPS)


def pixelwise_pdo(
    x: torch.Tensor, taps: torch.Tensor, fields: int, normalization: str, size: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, nu, padded)``: ``out[b, p, j, c] = (sum_t taps[b, j, c, t] * f[b, p, j, c](. + offset_t)) / nu[b, j]``,
    zero padding, ``nu`` the per-pixel norm of field ``j``'s taps, ``padded`` the padded input.

    ``size x size`` fused multiply-adds of shifted views, the normalization folded in: no ``size^2``-fold copy of the
    input.  Shapes: ``x (B, q, g*d, H, W)``, ``taps (B, g*d, size^2, H, W)``; every loop bound is the Python integer
    ``size``, so ``torch.fx`` traces it.
    """
    batch, parts, channels, height, width = x.shape
    kk, r = size * size, size // 2
    nu = _tap_norm(taps.view(batch, fields, channels // fields, kk, height, width), normalization, kk)
    padded = F.pad(x.reshape(batch, parts * channels, height, width), (r, r, r, r))
    padded = padded.view(batch, parts, channels, height + 2 * r, width + 2 * r)
    out = padded[..., :height, :width] * taps[:, None, :, 0]
    for t in range(1, kk):
        u, v = divmod(t, size)
        out.addcmul_(padded[..., u : u + height, v : v + width], taps[:, None, :, t])
    out.view(batch, parts, fields, channels // fields, height, width).div_(nu[:, None, :, None])
    return out, nu, padded


class _NormalizedPixelwiseConv(torch.autograd.Function):
    """:func:`pixelwise_pdo` with its gradients, computed from shifted views too: no temporary of the taps' size
    exists, forward or backward.  Shapes as there."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: torch.Tensor, taps: torch.Tensor, fields: int, normalization: str
    ) -> torch.Tensor:
        out, nu, padded = pixelwise_pdo(x, taps, fields, normalization, int(round(taps.shape[2] ** 0.5)))
        ctx.fields, ctx.normalization = fields, normalization
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
            if ctx.normalization == "rms":  # d nu / d taps = taps / (d (nu - eps))
                grad_nu.div_((nu - NORM_EPS).clamp_min_(1e-30).mul_(channels // fields))
            grad_taps = torch.empty_like(taps)
            by_field = grad_taps.view(batch, fields, channels // fields, kk, height, width)
            taps_by_field = taps.view(by_field.shape)
            for t in range(kk):
                u, v = divmod(t, k)
                shifted = padded[..., u : u + height, v : v + width]
                grad_taps[:, :, t].copy_(grad_raw[:, 0] * shifted[:, 0])
                for p in range(1, parts):  # sum over partitions without a temporary
                    grad_taps[:, :, t].addcmul_(grad_raw[:, p], shifted[:, p])
                tap = taps_by_field[:, :, :, t]
                by_field[:, :, :, t].addcmul_(tap.sign() if ctx.normalization == "l1" else tap, grad_nu[:, :, None])
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for t in range(kk):
                u, v = divmod(t, k)
                grad_padded[..., u : u + height, v : v + width].addcmul_(grad_raw, taps[:, None, :, t])
            grad_x = grad_padded[..., r : r + height, r : r + width]
        return grad_x, grad_taps, None, None


def stencil_key(stencils: torch.Tensor) -> str:
    """The key under which :func:`adaptive_pdo`'s compiled kernel knows ``stencils`` ``(n_ops, k, k)`` (their values,
    coefficient scale included, exactly); a layer computes it once, when it is built."""
    n_ops, k, _ = stencils.shape
    return op.stencil_key(stencils.detach().double().reshape(n_ops, k * k) * COEFFICIENT_SCALE)


def uses_native(x: torch.Tensor, stencils: torch.Tensor, key: str, backend: str) -> bool:
    """Whether ``backend`` (one of :data:`BACKENDS`) runs the compiled kernel for ``x`` (a CPU float32/float64 tensor)
    and ``stencils`` (whose :func:`stencil_key` is ``key``)."""
    if backend not in BACKENDS:
        raise ValueError(f"adaptive_pdo: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "pytorch":
        return False
    if x.device.type != "cpu":
        if backend == "native":
            raise ValueError(f"adaptive_pdo: backend='native' runs on CPU tensors, got a tensor on {x.device}")
        return False
    if stencils.requires_grad and torch.is_grad_enabled():  # compiled in as constants: no gradient, one build each
        if backend == "native":
            raise ValueError(
                "adaptive_pdo: backend='native' compiles the stencils into the kernel and gives them no gradient; "
                "got stencils that require grad (use backend='pytorch' or 'auto', or pass stencils.detach())"
            )
        return False
    if torch.compiler.is_compiling():  # traced: the operator builds its kernel when the graph first runs
        return native.enabled() and x.dtype in native.SCALAR_TYPES
    try:
        return native.load(x.dtype, op.key_stencils(key).to(x.dtype), required=backend == "native") is not None
    except native.NativeBuildError as error:
        raise RuntimeError(f"adaptive_pdo: backend='native' is unavailable: {error}") from error


def adaptive_pdo(
    x: torch.Tensor,
    coefficients: torch.Tensor,
    stencils: torch.Tensor,
    fields: int,
    *,
    normalization: str = "rms",
    backend: str = "auto",
    key: Optional[str] = None,
) -> torch.Tensor:
    """Apply per-pixel PDOs whose coefficients are shared across partitions of ``fields`` fields.

    The PDO of channel ``(j, c)`` is composed into per-pixel taps ``K[j, c] = sum_a A[j, c, a] S_a`` (``k x k``);
    each coefficient field ``j`` is scaled by ``COEFFICIENT_SCALE`` and divided by ``nu_j = norm(K[j]) + NORM_EPS``.

    Args:
        x: input ``(B, q * fields * d, H, W)``: q partitions of ``fields`` fields of dimension d.
        coefficients: ``(B, fields * d * n_ops, H, W)``, index ``(field j, channel c, operator a)``; the PDO
            applied to channel ``(p, j, c)`` of every partition p is ``sum_a coefficients[j, c, a] S_a``.
        stencils: ``(n_ops, k, k)`` derivative stencils.
        fields: fields per partition (the layer's ``g``).
        normalization: ``"rms"`` divides field ``j``'s taps by the root mean square of its channels' L2 norms, so
            that a white input keeps its variance on average; ``"l1"`` by their summed absolute values (the
            reference implementation: the output is about ``d^2`` times smaller in variance than the input).
        backend: one of :data:`BACKENDS`; ``"auto"`` uses the compiled kernel on CPU where it is available and the
            stencils need no gradient (it compiles them in: one build per stencil set).
        key: :func:`stencil_key` of ``stencils``, when known (it is needed for the compiled kernel, and it must be
            given under ``torch.compile``, which cannot read the stencils' values).

    Returns:
        ``(B, q * fields * d, H, W)``.  Memory kept for the backward beyond the inputs: the compiled kernel keeps the
        norms ``(B, fields, H, W)``; the PyTorch path the taps ``(B, fields * d, k^2, H, W)``, ``k^2 / q`` times the
        input.
    """
    batch, channels, height, width = x.shape
    n_ops, k, _ = stencils.shape
    d = coefficients.shape[1] // (fields * n_ops)
    if coefficients.shape[1] != fields * d * n_ops or d == 0 or channels % (fields * d):
        raise ValueError(
            f"adaptive_pdo: coefficients with {coefficients.shape[1]} channels do not fit {fields} fields of "
            f"{n_ops} operators, or input channels {channels} are not a multiple of fields * d"
        )
    check_normalization(normalization)
    if backend != "pytorch" and key is None:
        key = stencil_key(stencils)
    if uses_native(x, stencils, key, backend):
        out, _ = torch.ops.epdo.adaptive_pdo(x, coefficients.to(x.dtype), key, fields, normalization == "l1")
        return out
    q = channels // (fields * d)
    scaled = stencils.reshape(n_ops, k * k).to(x.dtype) * COEFFICIENT_SCALE
    a = coefficients.reshape(batch, fields * d, n_ops, height * width)
    taps = torch.matmul(scaled.t(), a).reshape(batch, fields * d, k * k, height, width)  # (B, g d, k^2, H, W)
    out = _NormalizedPixelwiseConv.apply(x.reshape(batch, q, fields * d, height, width), taps, fields, normalization)
    return out.reshape(batch, channels, height, width)
