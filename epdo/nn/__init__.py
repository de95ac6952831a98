"""Equivariant modules on escnn field types."""

from epdo.nn.checks import is_permutation_representation
from epdo.nn.conv1x1 import Conv1x1
from epdo.nn.field_norm import FieldNorm
from epdo.nn.functional import adaptive_pdo
from epdo.nn.neural_epdo import DEFAULT_MIX_GAIN, ExportedNeuralePDO, NeuralePDO
from epdo.nn.pdo_conv import PDOConv
from epdo.nn.restriction import RestrictToRotations

__all__ = [
    "DEFAULT_MIX_GAIN",
    "Conv1x1",
    "ExportedNeuralePDO",
    "FieldNorm",
    "NeuralePDO",
    "PDOConv",
    "RestrictToRotations",
    "adaptive_pdo",
    "is_permutation_representation",
]
