"""Equivariant bases: steerable PDO filters and 1x1 intertwiners, solved in float64 and cached."""

from epdo.kernels.pdo_basis import (
    DEFAULT_BANDWIDTH,
    check_bandwidth,
    intertwiner_basis,
    orthonormalize,
    pdo_coefficient_basis,
    pdo_filter_basis,
    restrict_frequency,
    smooth_orthonormalize,
    spectral_view,
)

__all__ = [
    "DEFAULT_BANDWIDTH",
    "check_bandwidth",
    "intertwiner_basis",
    "orthonormalize",
    "pdo_coefficient_basis",
    "pdo_filter_basis",
    "restrict_frequency",
    "smooth_orthonormalize",
    "spectral_view",
]
