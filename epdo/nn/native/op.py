"""The compiled adaptive-PDO kernel as a PyTorch operator, ``torch.ops.epdo.adaptive_pdo``, with a fake (meta)
implementation and its autograd formula: ``torch.compile(fullgraph=True)`` traces through it and ``torch.export``
records it.

The stencils travel as a string, :func:`stencil_key` (exact hexadecimal values), so the operator is self-contained:
each process builds or loads the matching kernel from the key alone (:func:`epdo.nn.native.load`).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Tuple

import torch

from epdo.nn import native

NORM_EPS = 0.01
"""``nu = norm(taps) + NORM_EPS``: keeps the normalized operator bounded and its gradient finite."""


def stencil_key(stencils: torch.Tensor) -> str:
    """``"n,kk:v0,v1,..."``: the stencils ``(n_ops, k*k)`` the kernel applies (coefficient scale included), exactly,
    as float64 hexadecimal literals."""
    values = stencils.detach().to("cpu", torch.float64).contiguous()
    n, kk = values.shape
    return f"{n},{kk}:" + ",".join(float(v).hex() for v in values.reshape(-1).tolist())


@functools.cache
def key_stencils(key: str) -> torch.Tensor:
    """The float64 stencils ``(n_ops, k*k)`` of a :func:`stencil_key` (cached)."""
    shape, values = key.split(":")
    n, kk = (int(v) for v in shape.split(","))
    return torch.tensor([float.fromhex(v) for v in values.split(",")], dtype=torch.float64).reshape(n, kk)


@functools.cache
def _library(key: str, dtype: torch.dtype) -> ctypes.CDLL:
    library = native.load(dtype, key_stencils(key).to(dtype), required=True)
    assert library is not None
    return library


def _dims(
    x: torch.Tensor,
    coefficients: torch.Tensor,
    key: str,
    fields: int,
    dilation: int,
    stride: int,
    *outputs: torch.Tensor,
) -> Tuple[int, ...]:
    """The kernel's 12 dimensions; ``ValueError`` unless ``x`` ``(B, q fields d, H, W)``, ``coefficients`` ``(B,
    fields d n, H_out, W_out)`` (``H_out = ceil(H / stride)``) and every tensor of ``outputs`` (the backward's: norm
    ``(B, fields, H_out, W_out)``, out and its gradient ``(B, C, H_out, W_out)``) fit together (the kernel reads them
    all at these sizes), and ``dilation, stride >= 1``."""
    n, kk = key_stencils(key).shape
    if x.dim() != 4 or coefficients.dim() != 4 or fields < 1 or dilation < 1 or stride < 1:
        raise ValueError(
            f"epdo::adaptive_pdo: expected x and coefficients of shape (B, C, H, W), fields, dilation and stride "
            f">= 1, got {tuple(x.shape)}, {tuple(coefficients.shape)}, fields={fields}, dilation={dilation} and "
            f"stride={stride}"
        )
    batch, channels, height, width = x.shape
    out_height, out_width = _output_size(x, stride)
    d = coefficients.shape[1] // (fields * n)
    expected = (batch, fields * d * n, out_height, out_width)
    if d < 1 or channels % (fields * d) or tuple(coefficients.shape) != expected:
        raise ValueError(
            f"epdo::adaptive_pdo: coefficients of shape {tuple(coefficients.shape)} do not fit x of shape "
            f"{tuple(x.shape)} with {fields} fields of {n} operators at stride {stride}: expected (B, fields * d * "
            f"{n}, ceil(H / stride), ceil(W / stride)) with B, H, W those of x and channels a multiple of fields * d"
        )
    out_shape = (batch, channels, out_height, out_width)
    for tensor, shape in zip(outputs, ((batch, fields, out_height, out_width), out_shape, out_shape)):
        if tensor.shape != shape:
            raise ValueError(
                f"epdo::adaptive_pdo: expected a tensor of shape {tuple(shape)}, got {tuple(tensor.shape)}"
            )
    if any(t.dtype != x.dtype for t in (coefficients, *outputs)):
        raise ValueError(f"epdo::adaptive_pdo: every tensor must be of x's dtype {x.dtype}")
    size = int(round(kk**0.5))
    return (batch, channels // (fields * d), fields, d, n, size, out_height, out_width, dilation, stride, height, width)


def _output_size(x: torch.Tensor, stride: int) -> Tuple[int, int]:
    """``(ceil(H / stride), ceil(W / stride))`` of ``x`` ``(B, C, H, W)``."""
    return -(-x.shape[2] // stride), -(-x.shape[3] // stride)


def _check(status: int, direction: str) -> None:
    if status == -2:
        raise RuntimeError(f"adaptive_pdo: the native {direction} kernel was compiled for other stencil dimensions")
    if status:
        raise MemoryError(f"adaptive_pdo: the native {direction} kernel could not allocate its scratch buffers")


@torch.library.custom_op("epdo::adaptive_pdo", mutates_args=(), device_types="cpu")
def adaptive_pdo_op(
    x: torch.Tensor,
    coefficients: torch.Tensor,
    stencils: str,
    fields: int,
    l1: bool,
    dilation: int = 1,
    stride: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out (B, C, H_out, W_out), nu (B, fields, H_out, W_out))``: the per-pixel PDOs of
    :func:`epdo.nn.functional.adaptive_pdo` centred on every ``stride``-th pixel, zeros around the input (``x`` and
    ``coefficients`` as there, ``H_out = ceil(H / stride)``; ``stencils`` a :func:`stencil_key`, ``l1`` the
    reference's normalization, taps ``dilation`` pixels apart) and the per-pixel norms the backward reuses."""
    x, coefficients = x.contiguous(), coefficients.contiguous()
    dims = _dims(x, coefficients, stencils, fields, dilation, stride)
    out, norm = x.new_empty(x.shape[:2] + dims[6:8]), x.new_empty(dims[0], fields, dims[6], dims[7])
    status = _library(stencils, x.dtype).epdo_adaptive_pdo_forward(
        x.data_ptr(), coefficients.data_ptr(), out.data_ptr(), norm.data_ptr(), (ctypes.c_int64 * 12)(*dims), l1,
        NORM_EPS, native.threads_for(coefficients),
    )  # fmt: skip
    _check(status, "forward")
    return out, norm


@adaptive_pdo_op.register_fake
def _(x, coefficients, stencils, fields, l1, dilation=1, stride=1):
    height, width = _output_size(x, stride)
    return x.new_empty(x.shape[0], x.shape[1], height, width), x.new_empty(x.shape[0], fields, height, width)


@torch.library.custom_op("epdo::adaptive_pdo_backward", mutates_args=(), device_types="cpu")
def adaptive_pdo_backward_op(
    x: torch.Tensor,
    coefficients: torch.Tensor,
    norm: torch.Tensor,
    out: torch.Tensor,
    grad_out: torch.Tensor,
    stencils: str,
    fields: int,
    l1: bool,
    dilation: int = 1,
    stride: int = 1,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_coefficients)`` of :func:`adaptive_pdo_op`'s ``out``; the taps are recomposed, never stored.
    The gradients' memory comes from :data:`epdo.nn.native.OUTPUT_BUFFERS` (kept between steps)."""
    x, coefficients, grad_out = x.contiguous(), coefficients.contiguous(), grad_out.contiguous()
    norm, out = norm.contiguous(), out.contiguous()
    dims = _dims(x, coefficients, stencils, fields, dilation, stride, norm, out, grad_out)
    buffers = native.OUTPUT_BUFFERS
    grad_x, grad_coefficients = buffers.empty(x.shape, x.dtype), buffers.empty(coefficients.shape, x.dtype)
    status = _library(stencils, x.dtype).epdo_adaptive_pdo_backward(
        x.data_ptr(), coefficients.data_ptr(), norm.data_ptr(), out.data_ptr(), grad_out.data_ptr(),
        grad_x.data_ptr(), grad_coefficients.data_ptr(), (ctypes.c_int64 * 12)(*dims), l1, NORM_EPS,
        native.threads_for(coefficients),
    )  # fmt: skip
    _check(status, "backward")
    return grad_x, grad_coefficients


@adaptive_pdo_backward_op.register_fake
def _(x, coefficients, norm, out, grad_out, stencils, fields, l1, dilation=1, stride=1):
    return torch.empty_like(x), torch.empty_like(coefficients)


def _setup_context(ctx, inputs, output) -> None:
    x, coefficients, stencils, fields, l1, dilation, stride = inputs
    out, norm = output
    ctx.save_for_backward(x, coefficients, norm, out)
    ctx.stencils, ctx.fields, ctx.l1, ctx.dilation, ctx.stride = stencils, fields, l1, dilation, stride


def _backward(ctx, grad_out: torch.Tensor, grad_norm: torch.Tensor):
    x, coefficients, norm, out = ctx.saved_tensors
    grad_x, grad_coefficients = adaptive_pdo_backward_op(
        x, coefficients, norm, out, grad_out, ctx.stencils, ctx.fields, ctx.l1, ctx.dilation, ctx.stride
    )
    return grad_x, grad_coefficients, None, None, None, None, None


adaptive_pdo_op.register_autograd(_backward, setup_context=_setup_context)
