"""Derivative operators: multi-indices, stencils and their group representation."""

from epdo.diffops.derivative_representation import (
    check_max_frequency,
    check_planar_gspace,
    coefficient_representation,
    derivative_matrices,
    derivative_matrix,
    derivative_representation,
    frequency_projector,
    rotation_matrix,
)
from epdo.diffops.multiindex import check_max_order, multi_indices, num_operators, order_slice
from epdo.diffops.rotation_error import stencil_rotation_error
from epdo.diffops.stencils import (
    DISCRETIZATIONS,
    check_discretization,
    check_scale,
    gauss_scale,
    grid_coordinates,
    stencils,
    stencils_numpy,
)

__all__ = [
    "DISCRETIZATIONS",
    "check_discretization",
    "check_max_frequency",
    "check_max_order",
    "check_planar_gspace",
    "check_scale",
    "coefficient_representation",
    "derivative_matrices",
    "derivative_matrix",
    "derivative_representation",
    "frequency_projector",
    "gauss_scale",
    "grid_coordinates",
    "multi_indices",
    "num_operators",
    "order_slice",
    "rotation_matrix",
    "stencil_rotation_error",
    "stencils",
    "stencils_numpy",
]
