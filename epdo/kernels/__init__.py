"""Equivariant bases: steerable PDO filters, PDO coefficient maps and 1x1 intertwiners, solved in float64, canonical
(the same parameters mean the same map in every process) and cached."""

from epdo.kernels.intertwiners import canonical_basis, intertwiner_basis, isotypic_commutant_basis
from epdo.kernels.pdo_basis import PDOBasis, pdo_coefficient_basis, pdo_filter_basis

__all__ = [
    "PDOBasis",
    "canonical_basis",
    "intertwiner_basis",
    "isotypic_commutant_basis",
    "pdo_coefficient_basis",
    "pdo_filter_basis",
]
