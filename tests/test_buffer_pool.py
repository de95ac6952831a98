"""The memory pool the compiled kernel's gradients come from: reuse only when nothing uses a buffer."""

import torch

from epdo.diffops import stencils
from epdo.nn import adaptive_pdo
from epdo.nn.native.buffer_pool import ALIGNMENT, BufferPool


def test_a_buffer_is_handed_out_again_only_when_no_tensor_uses_it():
    pool = BufferPool()
    first = pool.empty((2, 3), torch.float32)
    address = first.data_ptr()
    assert address % ALIGNMENT == 0 and first.is_contiguous() and first.shape == (2, 3)
    assert pool.empty((6,), torch.float32).data_ptr() != address  # in use: a fresh buffer
    del first
    again = pool.empty((3, 2), torch.float32)  # the same size, free again
    assert again.data_ptr() == address
    view = again[1:]
    del again
    assert pool.empty((6,), torch.float32).data_ptr() != address  # a view keeps the buffer in use
    del view
    assert pool.empty((6,), torch.float64).data_ptr() != address  # another dtype never shares it
    weights = torch.randn(6, requires_grad=True)
    saved = pool.empty((6,), torch.float32).fill_(2.0)
    assert saved.data_ptr() == address
    loss = (weights * saved).sum()  # autograd keeps `saved` for the gradient of `weights`
    del saved
    assert pool.empty((6,), torch.float32).data_ptr() != address
    loss.backward()
    assert torch.equal(weights.grad, torch.full((6,), 2.0))
    del loss
    assert pool.empty((6,), torch.float32).data_ptr() == address


def test_free_buffers_beyond_the_limit_are_dropped_least_recently_used_first():
    pool = BufferPool(max_free_bytes=100)
    buffers = [pool.empty((10,), torch.float32) for _ in range(3)]  # 40 bytes each
    addresses = [b.data_ptr() for b in buffers]
    del buffers
    assert pool.free_bytes() == 120  # nothing is dropped until the pool is next asked
    kept = pool.empty((1,), torch.float64)
    assert pool.free_bytes() == 80
    in_use = [pool.empty((10,), torch.float32) for _ in range(2)]
    assert sorted(b.data_ptr() for b in in_use) == sorted(addresses[1:])  # the oldest of the three went first
    pool.clear()
    assert pool.free_bytes() == 0 and kept.data_ptr() % ALIGNMENT == 0


def test_kernel_gradients_a_user_keeps_are_never_overwritten():
    s = stencils("fd", 2, 3)
    generator = torch.Generator().manual_seed(0)
    inputs = [
        (torch.randn(2, 8, 6, 5, generator=generator).requires_grad_(),
         torch.randn(2, 4 * 6, 6, 5, generator=generator).requires_grad_())
        for _ in range(2)
    ]  # fmt: skip
    kept = torch.autograd.grad(adaptive_pdo(*inputs[0], s, 2, backend="native").square().sum(), inputs[0])
    copies = [g.clone() for g in kept]
    torch.autograd.grad(adaptive_pdo(*inputs[1], s, 2, backend="native").square().sum(), inputs[1])
    for got, expected in zip(kept, copies):
        assert torch.equal(got, expected)
    # once dropped, the same memory serves the next backward: the kernel's gradients come from the pool
    addresses = {g.data_ptr() for g in kept}
    del kept, got
    again = torch.autograd.grad(adaptive_pdo(*inputs[1], s, 2, backend="native").square().sum(), inputs[1])
    assert {g.data_ptr() for g in again} == addresses
