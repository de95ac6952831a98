"""Equivariant bases: steerable PDO filters and 1x1 intertwiners, solved in float64 and cached."""

from epdo.kernels.pdo_basis import (
    intertwiner_basis,
    order_graded_basis,
    orthonormalize,
    pdo_coefficient_basis,
    pdo_filter_basis,
)

__all__ = ["intertwiner_basis", "order_graded_basis", "orthonormalize", "pdo_coefficient_basis", "pdo_filter_basis"]
