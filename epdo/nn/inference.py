"""Eval-mode inference through a network's exported form: an optimization that never changes what the modules
compute, nor which of them run."""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

import torch
from escnn.nn import R2Conv
from torch.nn.modules import module as torch_module

INFERENCE_CHUNK_BYTES = 16 * 2**20
"""The most bytes of the widest activation of one chunk of images in CPU inference.  Larger tensors come from fresh
pages of memory on every call (glibc maps allocations above 32 MiB anew), whose page faults cost as much as the
arithmetic in wide layers."""

_DERIVED_BUFFERS = {R2Conv: ("filter", "expanded_bias")}
"""Buffers that a module computes from its parameters (escnn's R2Conv: in eval mode, anew by every export); not part
of the state the exported form is keyed on."""


def submodules(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` and every module below it, in pre-order (``module.modules()`` without hashing each module, which
    is slow for escnn's)."""
    yield module
    for child in module._modules.values():
        if child is not None:
            yield from submodules(child)


class ExportedInference:
    """The exported form of a network (``export()``, a plain module on tensors), used in place of its modules
    whenever that changes nothing: every module in eval mode, gradients off, not under ``torch.compile``, and no
    forward hook (of a module or global) that the modules would run.  The form is made again when the module tree
    changes (a submodule replaced, added or removed) or any parameter or buffer does (another tensor, an in-place
    edit, ``load_state_dict``, ``.to()``).

    On the CPU the input is split into chunks of images whose widest activation (``widest`` channels at the input's
    resolution) stays below :data:`INFERENCE_CHUNK_BYTES`.

    Args:
        export: makes the plain form of the network it is given (untraced modules are fine).
        widest: the most channels of any activation of the network.
    """

    def __init__(self, export: Callable[[torch.nn.Module], torch.nn.Module], widest: int) -> None:
        self.export, self.widest = export, widest
        # (key, plain form, every keyed object: alive, so that no id is reused), replaced as one (threads share it)
        self._current: Optional[Tuple[Tuple, torch.nn.Module, List[object]]] = None

    def __call__(self, network: torch.nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The network's output for ``x`` by its exported form, or ``None`` where the modules must run."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return None
        if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
            return None
        modules = list(submodules(network))
        if any(m.training or m._forward_hooks or m._forward_pre_hooks for m in modules):
            return None
        tensors = [t for m in modules for t in _state(m)]
        # another dtype or device is another tensor (another storage): data pointers and versions identify the state
        key = (tuple(map(id, modules)), tuple([t.data_ptr() for t in tensors]), tuple([t._version for t in tensors]))
        current = self._current
        if current is None or current[0] != key:
            current = (key, self.export(network), [*modules, *tensors])
            self._current = current
        plain = current[1]
        if x.device.type != "cpu":
            return plain(x)
        chunk = max(1, INFERENCE_CHUNK_BYTES // (self.widest * x.shape[2] * x.shape[3] * x.element_size()))
        return plain(x) if len(x) <= chunk else torch.cat([plain(part) for part in torch.split(x, chunk)])


def _state(module: torch.nn.Module) -> List[torch.Tensor]:
    """``module``'s own parameters and buffers, but for the buffers it derives from its parameters."""
    tensors = [p for p in module._parameters.values() if p is not None] if module._parameters else []
    if module._buffers:
        derived = _DERIVED_BUFFERS[R2Conv] if isinstance(module, R2Conv) else ()
        tensors += [b for name, b in module._buffers.items() if b is not None and name not in derived]
    return tensors
