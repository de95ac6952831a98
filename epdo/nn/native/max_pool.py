"""The compiled 2x2 max pooling as PyTorch operators, ``torch.ops.epdo.max_pool2x2`` and its backward, with fake
(meta) implementations and the autograd formula: ``torch.compile(fullgraph=True)`` traces through them and
``torch.export`` records them."""

from __future__ import annotations

from typing import Tuple

import torch

from epdo.nn import native


def _library(dtype: torch.dtype):
    library = native.load_max_pool(dtype, required=True)
    assert library is not None
    return library


@torch.library.custom_op("epdo::max_pool2x2", mutates_args=(), device_types="cpu")
def max_pool2x2_op(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out (B, C, H // 2, W // 2), argmax (same shape, uint8))``: ``torch.nn.functional.max_pool2d(x, 2)`` of ``x
    (B, C, H, W)`` bit for bit, and each window's position of its maximum (``2 * row + column``) for the backward."""
    x = x.contiguous()
    batch, channels, height, width = x.shape
    out = x.new_empty(batch, channels, height // 2, width // 2)
    argmax = torch.empty(out.shape, dtype=torch.uint8)
    _library(x.dtype).epdo_max_pool2x2_forward(
        x.data_ptr(), out.data_ptr(), argmax.data_ptr(), batch * channels, height, width, native.threads_for(x)
    )
    return out, argmax


@max_pool2x2_op.register_fake
def _(x: torch.Tensor):
    batch, channels, height, width = x.shape
    out = x.new_empty(batch, channels, height // 2, width // 2)
    return out, torch.empty_like(out, dtype=torch.uint8)


@torch.library.custom_op("epdo::max_pool2x2_backward", mutates_args=(), device_types="cpu")
def max_pool2x2_backward_op(grad_out: torch.Tensor, argmax: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``grad_x (B, C, height, width)``: ``grad_out`` at each window's argmax, zeros elsewhere."""
    grad_out = grad_out.contiguous()
    batch, channels = grad_out.shape[:2]
    grad_x = grad_out.new_empty(batch, channels, height, width)
    _library(grad_out.dtype).epdo_max_pool2x2_backward(
        grad_out.data_ptr(), argmax.contiguous().data_ptr(), grad_x.data_ptr(), batch * channels, height, width,
        native.threads_for(grad_x),
    )  # fmt: skip
    return grad_x


@max_pool2x2_backward_op.register_fake
def _(grad_out: torch.Tensor, argmax: torch.Tensor, height: int, width: int):
    return grad_out.new_empty(*grad_out.shape[:2], height, width)


def _setup_context(ctx, inputs, output) -> None:
    (x,) = inputs
    _, argmax = output
    ctx.mark_non_differentiable(argmax)
    ctx.save_for_backward(argmax)
    ctx.size = x.shape[2:]


def _backward(ctx, grad_out: torch.Tensor, grad_argmax: torch.Tensor):
    (argmax,) = ctx.saved_tensors
    return max_pool2x2_backward_op(grad_out, argmax, *ctx.size)


max_pool2x2_op.register_autograd(_backward, setup_context=_setup_context)
