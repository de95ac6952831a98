"""Derivative operators: multi-indices, stencils and their group representation."""

from epdo.diffops.multiindex import multi_indices, num_operators
from epdo.diffops.representation import coefficient_representation, derivative_matrix, derivative_representation
from epdo.diffops.stencils import METHODS, grid_coordinates, stencils, stencils_numpy

__all__ = [
    "METHODS",
    "coefficient_representation",
    "derivative_matrix",
    "derivative_representation",
    "grid_coordinates",
    "multi_indices",
    "num_operators",
    "stencils",
    "stencils_numpy",
]
