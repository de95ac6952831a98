"""Equivariant modules on escnn field types."""

from epdo.nn.conv1x1 import Conv1x1
from epdo.nn.pdo_conv import PDOConv

__all__ = ["Conv1x1", "PDOConv"]
