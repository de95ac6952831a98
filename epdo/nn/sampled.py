"""A pointwise function on samples of a group: the exported form of escnn's ``FourierPointwise``."""

from __future__ import annotations

import torch
from escnn.nn import FourierPointwise

from epdo.nn.native import field_maps  # noqa: F401 - registers torch.ops.epdo.fourier_relu


class SampledPointwise(torch.nn.Module):
    """``y = Ainv relu(A x)`` per field on plain tensors ``(B, fields * d, H, W)``: the field's Fourier coefficients
    ``x`` (``d``) sampled at ``n`` group elements by ``A`` ``(n, d)``, a ReLU, and the coefficients of the result
    (``Ainv`` ``(d_out, n)``), as escnn's ``FourierPointwise`` with ``function='p_relu'`` computes them; with
    ``native``, by the compiled operator ``torch.ops.epdo.fourier_relu`` (CPU, float32/float64)."""

    def __init__(self, samples: torch.Tensor, coefficients: torch.Tensor, native: bool = False) -> None:
        super().__init__()
        self.register_buffer("samples", samples)
        self.register_buffer("coefficients", coefficients)
        self.native = native

    @classmethod
    def of(cls, module: FourierPointwise, native: bool = False) -> SampledPointwise:
        """The same map as ``module`` (an escnn ``FourierPointwise`` of ReLU)."""
        if module._function not in (torch.nn.functional.relu, torch.nn.functional.relu_):
            raise ValueError("SampledPointwise: only FourierPointwise(function='p_relu') has a plain form here")
        return cls(module.A.detach().clone(), module.Ainv.detach().clone(), native)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            return torch.ops.epdo.fourier_relu(x, self.samples, self.coefficients)
        batch, channels, height, width = x.shape
        d = self.samples.shape[1]
        fields = x.reshape(batch, channels // d, d, height * width)
        sampled = torch.relu(torch.matmul(self.samples, fields))
        out = torch.matmul(self.coefficients, sampled)
        return out.reshape(batch, -1, height, width)
