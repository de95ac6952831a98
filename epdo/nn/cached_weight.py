"""A module whose forward weight is a function of its parameters, cached only while it cannot go stale."""

from __future__ import annotations

import itertools
from typing import Iterable, List, Optional, Tuple

import torch


class CachedWeight:
    """Mixin: ``self.cached(compute)`` returns ``compute()``, reusing the last result in eval mode under ``no_grad``.

    The cache is keyed on the storage address and version counter of every tensor of :meth:`cache_inputs` (every
    parameter and buffer, unless a subclass says otherwise), and it holds
    a reference to those storages, so an optimizer step, ``load_state_dict``, ``.to()`` or any in-place edit
    invalidates it.  In training mode, when gradients are being recorded, or under ``torch.compile`` /
    ``torch.export`` (which trace ``compute`` into the graph), nothing is cached.
    """

    _cache_value: Optional[torch.Tensor] = None
    _cache_key: Optional[Tuple] = None
    _cache_refs: List[torch.Tensor] = []

    def cache_inputs(self) -> Iterable[torch.Tensor]:
        """The tensors the cached value is a function of: every parameter and buffer."""
        module: torch.nn.Module = self  # type: ignore[assignment]
        return itertools.chain(module.parameters(), module.buffers())

    def cached(self, compute) -> torch.Tensor:
        module: torch.nn.Module = self  # type: ignore[assignment]
        if module.training or torch.is_grad_enabled() or torch.compiler.is_compiling():
            self._cache_value = None
            return compute()
        tensors = list(self.cache_inputs())
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self._cache_value is None or key != self._cache_key:
            self._cache_value = compute()
            self._cache_key = key
            self._cache_refs = tensors
        return self._cache_value
