"""The spatially adaptive PDO on plain tensors: ``y(x) = sum_a (A_a(x) / nu(x)) (S_a * f)(x)``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from epdo.nn import native
from epdo.nn.geometry import Geometry
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
        nu = (nu / by_field.shape[2]).sqrt()
    return nu + NORM_EPS


def tap_matrix(stencils: torch.Tensor) -> torch.Tensor:
    """``(k^2, n_ops)``: the map from a PDO's coefficients to its taps, ``COEFFICIENT_SCALE sum_a A_a S_a``."""
    return stencils.reshape(len(stencils), -1).t() * COEFFICIENT_SCALE


def compose_taps(coefficients: torch.Tensor, taps: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-pixel taps ``(B, channels, k^2, H, W)`` of coefficients ``(B, channels * n_ops, H, W)`` (index ``(channel,
    operator)``) through :func:`tap_matrix` ``taps`` ``(k^2, n_ops)``."""
    batch, height, width = coefficients.shape[0], coefficients.shape[2], coefficients.shape[3]
    operators = coefficients.reshape(batch, channels, -1, height * width)
    return torch.matmul(taps, operators).reshape(batch, channels, -1, height, width)


def pixelwise_pdo(
    padded: torch.Tensor, taps: torch.Tensor, fields: int, normalization: str, geometry: Geometry
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The definition of the adaptive PDO: ``(out, nu)``, ``out[b, p, j, c](i) = (sum_t taps[b, j, c, t](i) *
    padded[b, p, j, c](tap t of output pixel i)) / nu[b, j](i)``, the taps' positions those of ``geometry``
    (:meth:`epdo.nn.geometry.Geometry.tap_views`), ``nu`` the per-pixel norm of field ``j``'s taps.

    Fused multiply-adds of strided views, the normalization folded in: no ``k^2``-fold copy of the input.  Shapes:
    ``padded (B, q, g*d, H + 2p, W + 2p)`` (already padded), ``taps (B, g*d, k^2, H_out, W_out)``; out ``(B, q, g*d,
    H_out, W_out)``, nu ``(B, g, H_out, W_out)``.  Differentiable by autograd; every loop bound is a Python integer,
    so ``torch.fx`` traces it.
    """
    batch, parts, channels = padded.shape[0], padded.shape[1], padded.shape[2]  # no unpacking: fx traces shapes
    kk, height, width = geometry.kernel_size**2, taps.shape[3], taps.shape[4]
    nu = _tap_norm(taps.view(batch, fields, channels // fields, kk, height, width), normalization, kk)
    views = geometry.tap_views(padded)
    _, view = next(views)
    out = view * taps[:, None, :, 0]
    for t, view in views:
        out.addcmul_(view, taps[:, None, :, t])
    out = out.view(batch, parts, fields, channels // fields, height, width) / nu[:, None, :, None]
    return out.view(batch, parts, channels, height, width), nu


class _NormalizedPixelwiseConv(torch.autograd.Function):
    """:func:`pixelwise_pdo` with a backward that keeps no temporary of the taps' size, written on the same tap
    views.  Shapes as there."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, padded: torch.Tensor, taps: torch.Tensor, fields: int, normalization: str, geometry: Geometry
    ) -> torch.Tensor:
        out, nu = pixelwise_pdo(padded, taps, fields, normalization, geometry)
        ctx.fields, ctx.normalization, ctx.geometry = fields, normalization, geometry
        ctx.save_for_backward(padded, taps, nu, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        padded, taps, nu, out = ctx.saved_tensors
        fields, geometry = ctx.fields, ctx.geometry
        batch, parts, channels, height, width = out.shape
        kk = taps.shape[2]
        split = (batch, parts, fields, channels // fields, height, width)
        grad_raw = (grad_out.reshape(split) / nu[:, None, :, None]).view(out.shape)  # d loss / d (unnormalized out)
        grad_padded = grad_taps = None
        if ctx.needs_input_grad[1]:
            grad_nu = (grad_out.reshape(out.shape) * out).view(split).sum(dim=(1, 3)).neg_().div_(nu)  # (B, g, H, W)
            if ctx.normalization == "rms":  # d nu / d taps = taps / (d (nu - eps))
                grad_nu.div_((nu - NORM_EPS).clamp_min_(1e-30).mul_(channels // fields))
            grad_taps = torch.empty_like(taps)
            by_field = grad_taps.view(batch, fields, channels // fields, kk, height, width)
            taps_by_field = taps.view(by_field.shape)
            for t, shifted in geometry.tap_views(padded):
                grad_taps[:, :, t].copy_(grad_raw[:, 0] * shifted[:, 0])
                for p in range(1, parts):  # sum over partitions without a temporary
                    grad_taps[:, :, t].addcmul_(grad_raw[:, p], shifted[:, p])
                tap = taps_by_field[:, :, :, t]
                by_field[:, :, :, t].addcmul_(tap.sign() if ctx.normalization == "l1" else tap, grad_nu[:, :, None])
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for t, view in geometry.tap_views(grad_padded):
                view.addcmul_(grad_raw, taps[:, None, :, t])
        return grad_padded, grad_taps, None, None, None


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
    padding: Optional[int] = None,
    stride: int = 1,
    dilation: int = 1,
    padding_mode: str = "zeros",
    normalization: str = "rms",
    backend: str = "auto",
    key: Optional[str] = None,
) -> torch.Tensor:
    """Apply per-pixel PDOs whose coefficients are shared across partitions of ``fields`` fields.

    The PDO of channel ``(j, c)`` at output pixel ``i`` is composed into taps ``K[j, c](i) = sum_a A[j, c, a](i)
    S_a`` (``k x k``); each coefficient field ``j`` is scaled by ``COEFFICIENT_SCALE`` and divided by ``nu_j(i) =
    norm(K[j](i)) + NORM_EPS``; tap ``(u, v)`` reads the input where ``torch.nn.Conv2d`` with the same ``padding``,
    ``stride``, ``dilation`` and ``padding_mode`` would (:class:`epdo.nn.geometry.Geometry`; :func:`pixelwise_pdo`
    is the definition).

    Args:
        x: input ``(B, q * fields * d, H, W)``: q partitions of ``fields`` fields of dimension d.
        coefficients: ``(B, fields * d * n_ops, H_out, W_out)``, index ``(field j, channel c, operator a)``, at the
            output pixels; the PDO applied to channel ``(p, j, c)`` of every partition p is ``sum_a coefficients[j,
            c, a] S_a``.
        stencils: ``(n_ops, k, k)`` derivative stencils.
        fields: fields per partition (the layer's ``g``).
        padding, stride, dilation, padding_mode: as ``torch.nn.Conv2d``'s; ``padding=None`` keeps the size at stride
            1 (``dilation (k - 1) / 2``).
        normalization: ``"rms"`` divides field ``j``'s taps by the root mean square of its channels' L2 norms, so
            that a white input keeps its variance on average; ``"l1"`` by their summed absolute values (the
            reference implementation: the output is about ``d^2`` times smaller in variance than the input).
        backend: one of :data:`BACKENDS`; ``"auto"`` uses the compiled kernel on CPU where it is available, the
            stencils need no gradient (it compiles them in: one build per stencil set).
        key: :func:`stencil_key` of ``stencils``, when known (it is needed for the compiled kernel, and it must be
            given under ``torch.compile``, which cannot read the stencils' values).

    Returns:
        ``(B, q * fields * d, H_out, W_out)``.  Memory kept for the backward beyond the inputs: the compiled kernel
        keeps the norms ``(B, fields, H, W)``; the PyTorch path the taps ``(B, fields * d, k^2, H_out, W_out)``.

    Raises:
        ValueError: a geometry argument out of range, or shapes that do not fit together (channels, batch, the
            coefficients' image size against the output's), before anything is computed.
    """
    n_ops, k, _ = stencils.shape
    geometry = Geometry(k, padding, stride, dilation, padding_mode)
    check_shapes(x, coefficients, n_ops, fields, geometry)
    check_normalization(normalization)
    if backend != "pytorch" and key is None:
        key = stencil_key(stencils)
    native_key = key if uses_native(x, stencils, key, backend) else None
    taps = tap_matrix(stencils.to(x.dtype))
    return apply_pdo(x, coefficients.to(x.dtype), taps, fields, normalization, geometry, native_key)


def check_shapes(x: torch.Tensor, coefficients: torch.Tensor, n_ops: int, fields: int, geometry: Geometry) -> None:
    """``ValueError`` unless ``x`` ``(B, q fields d, H, W)`` and ``coefficients`` ``(B, fields d n_ops, H_out,
    W_out)`` fit together under ``geometry``."""
    if x.dim() != 4 or coefficients.dim() != 4:
        raise ValueError(
            f"adaptive_pdo: expected x (B, C, H, W) and coefficients (B, C', H_out, W_out), got shapes "
            f"{tuple(x.shape)} and {tuple(coefficients.shape)}"
        )
    batch, channels, height, width = x.shape
    d = coefficients.shape[1] // (fields * n_ops)
    if coefficients.shape[1] != fields * d * n_ops or d == 0 or channels % (fields * d):
        raise ValueError(
            f"adaptive_pdo: coefficients with {coefficients.shape[1]} channels do not fit {fields} fields of "
            f"{n_ops} operators, or input channels {channels} are not a multiple of fields * d"
        )
    out_size = geometry.output_size(height, width)
    if coefficients.shape[0] != batch or tuple(coefficients.shape[2:]) != out_size:
        raise ValueError(
            f"adaptive_pdo: coefficients of shape {tuple(coefficients.shape)} do not fit an input of shape "
            f"{tuple(x.shape)}: expected batch {batch} and the output's {out_size[0]} x {out_size[1]} pixels"
        )


def apply_pdo(
    x: torch.Tensor,
    coefficients: torch.Tensor,
    taps: Optional[torch.Tensor],
    fields: int,
    normalization: str,
    geometry: Geometry,
    native_key: Optional[str] = None,
    traceable: bool = False,
) -> torch.Tensor:
    """:func:`adaptive_pdo` on arguments already checked: ``taps`` the :func:`tap_matrix` ``(k^2, n_ops)`` (unused,
    and may be ``None``, with ``native_key``); the
    compiled operator of ``native_key`` (a :func:`stencil_key`) where it is given, else PyTorch's operations: with
    ``traceable`` :func:`pixelwise_pdo` itself (which ``torch.fx`` traces into plain torch calls), otherwise with a
    backward that keeps no temporary of the taps' size.  Every size it uses comes from the tensors or is a Python
    integer."""
    if native_key is not None:
        return _native_pdo(x, coefficients, native_key, fields, normalization == "l1", geometry)
    batch, channels = x.shape[0], x.shape[1]
    per_part = coefficients.shape[1] // taps.shape[1]
    composed = compose_taps(coefficients, taps, per_part)
    padded = geometry.pad(x)
    parts = padded.reshape(batch, channels // per_part, per_part, padded.shape[2], padded.shape[3])
    if traceable:
        out = pixelwise_pdo(parts, composed, fields, normalization, geometry)[0]
    else:
        out = _NormalizedPixelwiseConv.apply(parts, composed, fields, normalization, geometry)
    return out.reshape(batch, channels, out.shape[3], out.shape[4])


def _native_pdo(
    x: torch.Tensor, coefficients: torch.Tensor, key: str, fields: int, l1: bool, geometry: Geometry
) -> torch.Tensor:
    """The compiled operator (which centres a PDO on every ``stride``-th pixel of its input, zeros around it, taps
    ``dilation`` apart) on any geometry.  Zero padding of the reach ``e = d r`` is the operator's own.  Otherwise the
    input is padded once, and ``(-e) mod s`` zero rows and columns more in front, so that the output pixels' centres
    ``e + s i`` fall on the operator's ``s (k + i)``; the coefficients are placed there on a zero canvas (the operator
    is zero elsewhere) and the output cut out of its result."""
    s, d, reach = geometry.stride, geometry.dilation, geometry.reach
    if geometry.padding_mode == "zeros" and geometry.padding == reach:
        return torch.ops.epdo.adaptive_pdo(x, coefficients, key, fields, l1, d, s)[0]
    front = -reach % s
    padded = geometry.pad(x)
    if front:
        padded = F.pad(padded, (front, 0, front, 0))
    k = (reach + front) // s
    out_h, out_w = coefficients.shape[2], coefficients.shape[3]
    full_h, full_w = -(-padded.shape[2] // s), -(-padded.shape[3] // s)
    canvas = F.pad(coefficients, (k, full_w - out_w - k, k, full_h - out_h - k))
    out = torch.ops.epdo.adaptive_pdo(padded, canvas, key, fields, l1, d, s)[0]
    return out[..., k : k + out_h, k : k + out_w]
