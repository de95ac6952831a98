"""Expansion of a weight tensor from per-field-pair equivariant bases."""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
from escnn.group import Representation
from escnn.nn import FieldType

from epdo.nn.field_layout import channels_of, fields_by_representation

BasisFn = Callable[[Representation, Representation], np.ndarray]


class BlockBasisExpansion(torch.nn.Module):
    """``weight[o, i, ...] = sum_k theta[f_o, f_i, k] B_(rho_fi, rho_fo)[k, o', i', ...]`` over field pairs.

    Fields are grouped by their pair of representations; every group has one parameter tensor
    ``(n_out_fields, n_in_fields, n_basis)`` and one basis ``(n_basis, d_out, d_in, *kernel)``
    (a non-persistent buffer: it is rebuilt from the configuration, never stored in a ``state_dict``).

    Args:
        in_type: input fields.
        out_type: output fields.
        basis: ``basis(rho_in, rho_out) -> (n_basis, d_out, d_in, *kernel)`` float64 array.
        gain: the basis is multiplied by ``gain`` and the initial ``theta`` divided by it: the same weight at
            initialization, ``gain`` times larger steps per unit step in ``theta`` (under Adam, whose steps in ``theta``
            do not depend on the gradient's scale, ``gain`` times faster learning of this weight).
    """

    def __init__(self, in_type: FieldType, out_type: FieldType, basis: BasisFn, gain: float = 1.0) -> None:
        super().__init__()
        if not gain > 0:
            raise ValueError(f"gain must be positive, got {gain!r}")
        self.gain = float(gain)
        self.in_size = in_type.size
        self.out_size = out_type.size
        pairs: Dict[Tuple[str, str], Tuple[Representation, Representation]] = {}
        for rho_in in in_type.representations:
            for rho_out in out_type.representations:
                pairs[(rho_in.name, rho_out.name)] = (rho_in, rho_out)
        in_fields = fields_by_representation(in_type)
        out_fields = fields_by_representation(out_type)
        self._blocks: List[Tuple[str, str]] = []  # (attribute suffix, output representation name)
        fan_in: Dict[str, float] = {}
        kernel_shape: Tuple[int, ...] = ()
        for index, ((name_in, name_out), (rho_in, rho_out)) in enumerate(pairs.items()):
            array = basis(rho_in, rho_out)
            kernel_shape = array.shape[3:]
            if array.shape[0] == 0:
                continue
            ins, outs = in_fields[name_in], out_fields[name_out]
            suffix = str(index)
            basis_tensor = torch.tensor(array * self.gain, dtype=torch.get_default_dtype())
            self.register_buffer(f"basis_{suffix}", basis_tensor, persistent=False)
            weights = torch.nn.Parameter(torch.zeros(len(outs), len(ins), array.shape[0]))
            self.register_parameter(f"weights_{suffix}", weights)
            self.register_buffer(f"out_index_{suffix}", channels_of(out_type, outs), persistent=False)
            self.register_buffer(f"in_index_{suffix}", channels_of(in_type, ins), persistent=False)
            fan_in[name_out] = fan_in.get(name_out, 0.0) + len(ins) * array.shape[0] / rho_out.size
            self._blocks.append((suffix, name_out))
        self.kernel_shape = kernel_shape
        self._fan_in = fan_in
        self._dense = len(self._blocks) == 1 and all(len(set(t.representations)) == 1 for t in (in_type, out_type))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """He-style init ``N(0, 1 / (f gain^2))``, ``f = sum over inputs of n_basis * n_in_fields / d_out`` per output
        type (for an orthonormal basis, a weight that keeps a white input's variance)."""
        for suffix, name_out in self._blocks:
            weights = getattr(self, f"weights_{suffix}")
            weights.normal_(0.0, float(np.sqrt(1.0 / self._fan_in[name_out])) / self.gain)

    def forward(self) -> torch.Tensor:
        """The expanded weight, shape ``(out_size, in_size, *kernel)``."""
        blocks = []
        for suffix, _ in self._blocks:
            theta = getattr(self, f"weights_{suffix}")
            basis = getattr(self, f"basis_{suffix}")
            n_out, n_in, _ = theta.shape
            block = torch.einsum("oik,kxy...->oxiy...", theta, basis)
            blocks.append(block.reshape(n_out * basis.shape[1], n_in * basis.shape[2], *self.kernel_shape))
        if self._dense:
            return blocks[0]
        weight = torch.zeros(
            self.out_size,
            self.in_size,
            *self.kernel_shape,
            dtype=blocks[0].dtype if blocks else None,
            device=blocks[0].device if blocks else None,
        )
        for (suffix, _), block in zip(self._blocks, blocks):
            out_index = getattr(self, f"out_index_{suffix}")
            in_index = getattr(self, f"in_index_{suffix}")
            weight[out_index[:, None], in_index[None, :]] = block
        return weight
