"""The compiled per-field maps as PyTorch operators, ``torch.ops.epdo.field_linear`` and ``torch.ops.epdo.fourier_relu``
(with its backward), with fake (meta) implementations and autograd formulas: ``torch.compile(fullgraph=True)`` traces
through them and ``torch.export`` records them.  Their outputs' memory comes from
:data:`epdo.nn.native.OUTPUT_BUFFERS` (kept between steps)."""

from __future__ import annotations

from typing import Tuple

import torch

from epdo.nn import native


def _library(dtype: torch.dtype):
    library = native.load_field_maps(dtype, required=True)
    assert library is not None
    return library


@torch.library.custom_op("epdo::field_linear", mutates_args=(), device_types="cpu")
def field_linear_op(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``out (P, e, Q)``: ``matrix`` ``(e, d)`` applied to each of the ``Q`` columns of each plane of ``x``
    ``(P, d, Q)``, ``torch.matmul(matrix, x)``.  No gradient for ``matrix``."""
    if x.dim() != 3 or matrix.dim() != 2 or x.shape[1] != matrix.shape[1] or matrix.dtype != x.dtype:
        raise ValueError(
            f"epdo::field_linear: expected x (P, d, Q) and matrix (e, d) of one dtype, got {tuple(x.shape)} "
            f"{x.dtype} and {tuple(matrix.shape)} {matrix.dtype}"
        )
    x, matrix = x.contiguous(), matrix.contiguous()
    (planes, d, pixels), e = x.shape, matrix.shape[0]
    out = native.OUTPUT_BUFFERS.empty((planes, e, pixels), x.dtype)
    _library(x.dtype).epdo_field_linear(
        x.data_ptr(), matrix.data_ptr(), out.data_ptr(), planes, d, e, pixels, native.threads_for(out)
    )
    return out


@field_linear_op.register_fake
def _(x: torch.Tensor, matrix: torch.Tensor):
    return x.new_empty(x.shape[0], matrix.shape[0], x.shape[2])


def _setup_linear_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[1])


def _linear_backward(ctx, grad_out: torch.Tensor):
    (matrix,) = ctx.saved_tensors
    return field_linear_op(grad_out, matrix.T), None


field_linear_op.register_autograd(_linear_backward, setup_context=_setup_linear_context)


def _dims(x: torch.Tensor, sample: torch.Tensor, unsample: torch.Tensor) -> Tuple[int, int, int, int, int]:
    """``(planes, d, S, e, pixels)``; ``ValueError`` unless ``x`` ``(B, fields d, H, W)``, ``sample`` ``(S, d)`` and
    ``unsample`` ``(e, S)`` fit together, all of ``x``'s dtype."""
    if x.dim() != 4 or sample.dim() != 2 or unsample.dim() != 2:
        raise ValueError(
            f"epdo::fourier_relu: expected x (B, C, H, W), sample (S, d) and unsample (e, S), got {tuple(x.shape)}, "
            f"{tuple(sample.shape)} and {tuple(unsample.shape)}"
        )
    (samples, d), e = sample.shape, unsample.shape[0]
    batch, channels, height, width = x.shape
    if channels % d or unsample.shape[1] != samples:
        raise ValueError(
            f"epdo::fourier_relu: x of {channels} channels, sample {tuple(sample.shape)} and unsample "
            f"{tuple(unsample.shape)} do not fit: expected channels a multiple of d and unsample (e, S) with S, d "
            "those of sample (S, d)"
        )
    if sample.dtype != x.dtype or unsample.dtype != x.dtype:
        raise ValueError(f"epdo::fourier_relu: sample and unsample must be of x's dtype {x.dtype}")
    return batch * (channels // d), d, samples, e, height * width


@torch.library.custom_op("epdo::fourier_relu", mutates_args=(), device_types="cpu")
def fourier_relu_op(x: torch.Tensor, sample: torch.Tensor, unsample: torch.Tensor) -> torch.Tensor:
    """``out (B, fields e, H, W)``: ``unsample @ relu(sample @ field)`` at every pixel of every field of ``x``
    ``(B, fields d, H, W)`` (``sample`` ``(S, d)``, ``unsample`` ``(e, S)``)."""
    x, sample, unsample = x.contiguous(), sample.contiguous(), unsample.contiguous()
    planes, d, samples, e, pixels = _dims(x, sample, unsample)
    out = native.OUTPUT_BUFFERS.empty((x.shape[0], x.shape[1] // d * e, *x.shape[2:]), x.dtype)
    _library(x.dtype).epdo_fourier_relu_forward(
        x.data_ptr(), sample.data_ptr(), unsample.data_ptr(), out.data_ptr(), planes, d, samples, e, pixels,
        native.threads_for(x),
    )  # fmt: skip
    return out


@fourier_relu_op.register_fake
def _(x: torch.Tensor, sample: torch.Tensor, unsample: torch.Tensor):
    fields = x.shape[1] // sample.shape[1]
    return x.new_empty(x.shape[0], fields * unsample.shape[0], *x.shape[2:])


@torch.library.custom_op("epdo::fourier_relu_backward", mutates_args=(), device_types="cpu")
def fourier_relu_backward_op(
    x: torch.Tensor, sample: torch.Tensor, unsample: torch.Tensor, grad_out: torch.Tensor
) -> torch.Tensor:
    """``grad_x`` (``x``'s shape) of :func:`fourier_relu_op`'s output; the samples are recomputed, never stored."""
    x, sample, unsample, grad_out = x.contiguous(), sample.contiguous(), unsample.contiguous(), grad_out.contiguous()
    planes, d, samples, e, pixels = _dims(x, sample, unsample)
    if grad_out.shape != (x.shape[0], x.shape[1] // d * e, *x.shape[2:]) or grad_out.dtype != x.dtype:
        raise ValueError(
            f"epdo::fourier_relu_backward: grad_out {tuple(grad_out.shape)} {grad_out.dtype} does not fit x "
            f"{tuple(x.shape)} {x.dtype}"
        )
    grad_x = native.OUTPUT_BUFFERS.empty(x.shape, x.dtype)
    _library(x.dtype).epdo_fourier_relu_backward(
        x.data_ptr(), sample.data_ptr(), unsample.data_ptr(), grad_out.data_ptr(), grad_x.data_ptr(), planes, d,
        samples, e, pixels, native.threads_for(x),
    )  # fmt: skip
    return grad_x


@fourier_relu_backward_op.register_fake
def _(x: torch.Tensor, sample: torch.Tensor, unsample: torch.Tensor, grad_out: torch.Tensor):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_out: torch.Tensor):
    x, sample, unsample = ctx.saved_tensors
    return fourier_relu_backward_op(x, sample, unsample, grad_out), None, None


fourier_relu_op.register_autograd(_backward, setup_context=_setup_context)
