"""An equivariant wide ResNet: pre-activation residual blocks in stages whose first block halves the resolution
(stride 2, a strided 1x1 shortcut), built from the library's layers or escnn's ``R2Conv`` with the same arguments."""

from __future__ import annotations

from typing import Sequence

from escnn import gspaces, nn

from epdo.models.classifier import classifier_head
from epdo.models.skeleton import EquivariantClassifier
from epdo.nn import Conv1x1, FieldBatchNorm, GroupMaxPool, NeuralePDO, PDOConv
from epdo.nn.residual import ResidualBlock

RESNET_LAYERS = ("epdo", "pdo", "escnn")
"""The layers of :func:`wide_resnet`: Neural ePDOs (a static PDO lift), static PDOs, or escnn's ``R2Conv``."""


def _conv(layer: str, in_type: nn.FieldType, out_type: nn.FieldType, stride: int) -> nn.EquivariantModule:
    """A 3x3 layer with padding 1 and ``stride``, called as ``R2Conv`` is."""
    if layer == "escnn":
        return nn.R2Conv(in_type, out_type, 3, padding=1, stride=stride, bias=False)
    lift = in_type.representations[0] == in_type.gspace.trivial_repr
    kind = PDOConv if layer == "pdo" or lift else NeuralePDO
    return kind(in_type, out_type, 3, padding=1, stride=stride, bias=False)


def _block(layer: str, in_type: nn.FieldType, out_type: nn.FieldType, stride: int) -> ResidualBlock:
    """``conv(relu(bn(conv(relu(bn(x)))))) + shortcut(x)``, the first 3x3 layer with ``stride``."""
    branch = nn.SequentialModule(
        FieldBatchNorm(in_type),
        nn.ReLU(in_type),
        _conv(layer, in_type, out_type, stride),
        FieldBatchNorm(out_type),
        nn.ReLU(out_type),
        _conv(layer, out_type, out_type, 1),
    )
    shortcut = None if in_type == out_type and stride == 1 else Conv1x1(in_type, out_type, stride=stride)
    return ResidualBlock(branch, shortcut)


def wide_resnet(
    layer: str = "epdo",
    widths: Sequence[int] = (4, 8, 16),
    blocks: int = 1,
    group_order: int = 8,
    flip: bool = False,
    restrict: bool = False,
    head: int = 64,
    classes: int = 10,
) -> EquivariantClassifier:
    """The network on images ``(B, 1, H, W)``: a 3x3 lift to ``widths[0]`` regular fields of C_N (D_N with ``flip``),
    then one stage of ``blocks`` residual blocks per width, every stage after the first opening with a stride-2 block;
    batch norm, ReLU, group max pooling, the maximum over pixels and a classifier of ``head`` hidden units.

    With ``restrict`` (as escnn's wide ResNet does), the second stage works on a subgroup of order N/2 (D_N -> D_(N/2))
    and the third on reflections alone (D_1; C_1 without ``flip``): escnn's ``RestrictionModule`` before each stage's
    first block.  Quarter turns (and, with ``flip``, reflections) are exact where every stride-2 layer's input has an
    odd side (``H`` = 29: 29 -> 15 -> 8) and no restriction removed them.

    Example:
        >>> import torch
        >>> wide_resnet("epdo", widths=(2, 2, 2), group_order=4).eval()(torch.rand(2, 1, 29, 29)).shape
        torch.Size([2, 10])
    """
    if layer not in RESNET_LAYERS:
        raise ValueError(f"wide_resnet: layer must be one of {RESNET_LAYERS}, got {layer!r}")
    if not widths or blocks < 1:
        raise ValueError(f"wide_resnet: expected at least one width and one block, got {tuple(widths)} and {blocks}")
    if restrict and (len(widths) > 3 or group_order % 2):
        raise ValueError(
            f"wide_resnet: restrict takes at most 3 stages and an even order, got {len(widths)} and {group_order}"
        )
    gspace = gspaces.flipRot2dOnR2(group_order) if flip else gspaces.rot2dOnR2(group_order)
    image = nn.FieldType(gspace, [gspace.trivial_repr])
    current = nn.FieldType(gspace, [gspace.regular_repr] * widths[0])
    modules = [_conv(layer, image, current, 1)]
    for stage, width in enumerate(widths):
        if restrict and stage > 0:
            order = group_order // 2 if stage == 1 else 1
            restriction = nn.RestrictionModule(current, (0, order) if flip else order)
            modules.append(restriction)
            current = restriction.out_type
        ftype = nn.FieldType(current.gspace, [current.gspace.regular_repr] * width)
        for index in range(blocks):
            modules.append(_block(layer, current, ftype, 2 if stage > 0 and index == 0 else 1))
            current = ftype
    modules += [FieldBatchNorm(current), nn.ReLU(current), GroupMaxPool(current)]
    body = nn.SequentialModule(*modules)
    return EquivariantClassifier(body, classifier_head(len(current), head, classes)).train()
