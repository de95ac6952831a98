"""CPU memory that the compiled kernels reuse from step to step instead of asking the C library for it anew."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np
import torch

ALIGNMENT = 64
"""Bytes; as PyTorch's own CPU allocations (whole cache lines for the kernels' vector stores)."""


@dataclass
class _Buffer:
    array: np.ndarray  # the aligned view handed out
    last_used: float = field(default_factory=time.monotonic)
    unused_count: int = -1  # the array's reference count while only the pool holds it (set by the pool)

    def references(self) -> int:
        return sys.getrefcount(self.array)

    @property
    def free(self) -> bool:
        """No tensor storage holds the array (``torch.from_numpy`` keeps a reference to it until the storage is
        freed, whatever views of the tensor were made)."""
        return self.references() == self.unused_count


class BufferPool:
    """Hands out CPU tensors whose memory is kept when their last user drops them, and hands it out again for the
    same dtype and size.

    glibc gives large freed blocks back to the OS and takes them again as fresh, zero-filled pages, so a training
    step that allocates its large gradients anew page-faults through them every step; a library must not change its
    users' allocator (``mallopt``), so the kernel keeps its own.  A buffer is in use while any tensor storage made
    from it lives, so a tensor that autograd saved, a gradient the user kept, or a view of either is never handed
    out twice.

    Free buffers are kept up to ``max_free_bytes`` in all (least recently used dropped first); thread-safe.
    """

    def __init__(self, max_free_bytes: int = 256 * 2**20) -> None:
        self.max_free_bytes = max_free_bytes
        self._buffers: List[_Buffer] = []
        self._lock = threading.Lock()

    def empty(self, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialized contiguous CPU tensor of ``shape`` and ``dtype`` (a reused buffer where a free one fits)."""
        numpy_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        count = int(np.prod(shape, dtype=np.int64))
        with self._lock:
            buffer = next(
                (b for b in self._buffers if b.array.dtype == numpy_dtype and b.array.size == count and b.free), None
            )
            if buffer is None:
                buffer = _Buffer(_aligned_empty(count, numpy_dtype))
                buffer.unused_count = buffer.references()  # measured as `free` measures it, no tensor made yet
                self._buffers.append(buffer)
            buffer.last_used = time.monotonic()
            tensor = torch.from_numpy(buffer.array).view(tuple(shape))  # in use from here: the storage refers to it
            self._drop_free_beyond_limit()
        return tensor

    def free_bytes(self) -> int:
        """Bytes held in buffers that no tensor uses."""
        with self._lock:
            return sum(b.array.nbytes for b in self._buffers if b.free)

    def clear(self) -> None:
        """Drop every free buffer (those in use stay until their tensors are gone, then are dropped too)."""
        with self._lock:
            self._buffers.clear()

    def _drop_free_beyond_limit(self) -> None:
        free = sorted((b for b in self._buffers if b.free), key=lambda b: b.last_used, reverse=True)
        kept, dropped = 0, set()
        for buffer in free:
            kept += buffer.array.nbytes
            if kept > self.max_free_bytes:
                dropped.add(id(buffer))
        if dropped:
            self._buffers = [b for b in self._buffers if id(b) not in dropped]


def _aligned_empty(count: int, dtype: np.dtype) -> np.ndarray:
    """``count`` elements whose first one starts on an :data:`ALIGNMENT` boundary (a view into a slightly larger
    array, which it keeps alive)."""
    raw = np.empty(count * dtype.itemsize + ALIGNMENT, dtype=np.uint8)
    offset = -raw.ctypes.data % ALIGNMENT
    return raw[offset : offset + count * dtype.itemsize].view(dtype)
