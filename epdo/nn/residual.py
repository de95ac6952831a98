"""A residual block of equivariant modules: ``y = branch(x) + shortcut(x)``."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from escnn.nn import EquivariantModule, GeometricTensor, SequentialModule

from epdo.nn.checks import check_input
from epdo.nn.export import exported_layers
from epdo.nn.exportable import Exportable


class ResidualBlock(Exportable, EquivariantModule):
    """``y = branch(x) + shortcut(x)``, ``shortcut`` the identity where it is ``None``; equivariant where both are.

    Args:
        branch: escnn modules from ``in_type`` to ``out_type`` (a ``SequentialModule``), any stride.
        shortcut: a module with the same input, output type and output size (e.g. a strided
            :class:`epdo.nn.Conv1x1`); ``None`` where ``branch`` keeps the type and the size.

    Shapes: ``(B, in_type.size, H, W)`` in, ``branch``'s output shape out.

    Example:
        >>> import torch
        >>> from escnn import gspaces, nn
        >>> from epdo.nn import Conv1x1, PDOConv
        >>> gs = gspaces.rot2dOnR2(4)
        >>> a, b = nn.FieldType(gs, [gs.regular_repr] * 2), nn.FieldType(gs, [gs.regular_repr] * 3)
        >>> block = ResidualBlock(nn.SequentialModule(nn.ReLU(a), PDOConv(a, b, 3, padding=1, stride=2)),
        ...                       Conv1x1(a, b, stride=2))
        >>> block(nn.GeometricTensor(torch.randn(1, 8, 9, 9), a)).shape
        torch.Size([1, 12, 5, 5])
    """

    def __init__(self, branch: SequentialModule, shortcut: Optional[EquivariantModule] = None) -> None:
        super().__init__()
        self.in_type, self.out_type = branch.in_type, branch.out_type
        if shortcut is None and self.in_type != self.out_type:
            raise ValueError(
                f"ResidualBlock: a branch from {self.in_type} to {self.out_type} needs a shortcut between the types"
            )
        if shortcut is not None and (shortcut.in_type, shortcut.out_type) != (self.in_type, self.out_type):
            raise ValueError("ResidualBlock: the shortcut must map the branch's input type to its output type")
        self.branch, self.shortcut = branch, shortcut

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("ResidualBlock", x, self.in_type)
        y = self.branch(x).tensor
        skip = x.tensor if self.shortcut is None else self.shortcut(x).tensor
        if y.shape != skip.shape:
            raise ValueError(
                f"ResidualBlock: the branch gives {tuple(y.shape)} and the shortcut {tuple(skip.shape)} for an input "
                f"of {tuple(x.tensor.shape)}"
            )
        return GeometricTensor(y + skip, self.out_type)

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        return self.branch.evaluate_output_shape(input_shape)

    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> torch.nn.Module:
        """:class:`epdo.nn.residual.ExportedResidual` of the exported branch (batch norms folded) and shortcut."""
        shortcut = None if self.shortcut is None else exported_layers(self.shortcut, backend, like)
        return ExportedResidual(exported_layers(self.branch, backend, like), shortcut)


class ExportedResidual(torch.nn.Module):
    """``branch(x) + shortcut(x)`` on plain tensors (the identity where ``shortcut`` is ``None``)."""

    def __init__(self, branch: torch.nn.Module, shortcut: Optional[torch.nn.Module]) -> None:
        super().__init__()
        self.branch, self.shortcut = branch, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + (x if self.shortcut is None else self.shortcut(x))
