"""Equivariant modules on escnn field types: Neural ePDO and static PDO layers, 1x1 maps, normalization, pooling,
restriction; whole networks exported to plain PyTorch."""

from epdo.kernels import PDOBasis
from epdo.nn.conv1x1 import Conv1x1
from epdo.nn.export import export_network
from epdo.nn.field_dropout import FieldDropout
from epdo.nn.field_maps import FourierReLU, field_linear, fourier_relu
from epdo.nn.field_norm import BATCH_NORMS, FieldBatchNorm, FieldNorm, batch_norms
from epdo.nn.functional import adaptive_pdo
from epdo.nn.geometry import PADDING_MODES, Geometry
from epdo.nn.group_pooling import GroupMaxPool
from epdo.nn.iid_batch_norm import IIDBatchNorm
from epdo.nn.max_pool import FieldMaxPool, max_pool2x2
from epdo.nn.neural_epdo import ExportedNeuralePDO, NeuralePDO
from epdo.nn.pdo_conv import PDOConv
from epdo.nn.residual import ResidualBlock
from epdo.nn.restriction import RestrictToRotations

__all__ = [
    "BATCH_NORMS",
    "Conv1x1",
    "ExportedNeuralePDO",
    "FieldBatchNorm",
    "FieldDropout",
    "FieldMaxPool",
    "FieldNorm",
    "FourierReLU",
    "Geometry",
    "GroupMaxPool",
    "IIDBatchNorm",
    "NeuralePDO",
    "PADDING_MODES",
    "PDOBasis",
    "PDOConv",
    "ResidualBlock",
    "RestrictToRotations",
    "adaptive_pdo",
    "batch_norms",
    "export_network",
    "field_linear",
    "fourier_relu",
    "max_pool2x2",
]
