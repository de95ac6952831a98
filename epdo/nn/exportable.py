"""The one export protocol of epdo's modules."""

from __future__ import annotations

from typing import Optional

import torch


class Exportable:
    """Mixin of every epdo module with a plain-PyTorch form: ``export(backend, like)``.

    ``backend`` (:data:`epdo.nn.functional.BACKENDS`) chooses between epdo's compiled operators and PyTorch's
    operations where a module has both; ``like`` is a tensor of the network's dtype and device, for modules without
    parameters of their own that choose by them.  Modules that need neither accept and ignore them.
    """

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        """A plain ``torch.nn.Module`` on the input's ``.tensor`` computing what this module computes in eval mode."""
        raise NotImplementedError(f"{type(self).__name__} has no export()")
