"""Early, explicit validation of field types and inputs for epdo modules."""

from __future__ import annotations

from typing import Any

from escnn.nn import FieldType, GeometricTensor

from epdo.diffops import check_planar_gspace


def check_field_types(module: str, in_type: Any, out_type: Any) -> None:
    """Both arguments must be field types (``FieldType``) of one planar gspace of a finite group."""
    for name, ftype in (("in_type", in_type), ("out_type", out_type)):
        if not isinstance(ftype, FieldType):
            raise TypeError(f"{module}: {name} must be an escnn FieldType, got {type(ftype).__name__}")
    if in_type.gspace != out_type.gspace:
        raise ValueError(
            f"{module}: in_type and out_type must share one gspace, got {in_type.gspace} and {out_type.gspace}"
        )
    check_planar_gspace(in_type.gspace, module)


def check_positive_int(module: str, name: str, value: Any) -> None:
    """``value`` must be an integer >= 1 (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{module}: {name} must be a positive integer, got {value!r}")


def check_input(module: str, x: Any, in_type: FieldType) -> None:
    """``x`` must be a 4-D ``GeometricTensor`` of exactly ``in_type``."""
    if not isinstance(x, GeometricTensor):
        raise TypeError(
            f"{module}: expected a GeometricTensor of type {in_type}, got {type(x).__name__}; "
            "wrap plain tensors with escnn.nn.GeometricTensor(tensor, in_type)"
        )
    if x.type != in_type:
        raise ValueError(f"{module}: expected input of type {in_type}, got {x.type}")
    if x.tensor.dim() != 4:
        raise ValueError(
            f"{module}: expected a tensor of shape (batch, {in_type.size}, height, width), got {tuple(x.tensor.shape)}"
        )
