"""Multi-indices of partial derivatives and the library's single ordering convention.

A derivative operator is ``d_x^i d_y^j``; the operators of order ``k = i + j`` are ordered
``[d_x^k, d_x^(k-1) d_y, ..., d_y^k]`` and orders run ``k = 0..max_order``.  With ``max_order = 4``
there are ``1 + 2 + 3 + 4 + 5 = 15`` operators.
"""

from __future__ import annotations

from typing import List, Tuple


def check_max_order(max_order: int) -> None:
    """Raise ``ValueError`` unless ``max_order`` is an integer in ``[0, 4]``."""
    if not isinstance(max_order, int) or isinstance(max_order, bool) or not 0 <= max_order <= 4:
        raise ValueError(f"max_order must be an integer in [0, 4] (5x5 stencils), got {max_order!r}")


def multi_indices(max_order: int = 4) -> List[Tuple[int, int]]:
    """The ``(i, j)`` of every ``d_x^i d_y^j`` with ``i + j <= max_order``, in the library's order."""
    check_max_order(max_order)
    return [(k - j, j) for k in range(max_order + 1) for j in range(k + 1)]


def order_slice(order: int) -> slice:
    """The operators of one ``order`` in the stacking of :func:`multi_indices`: ``d_x^order`` to ``d_y^order``."""
    check_max_order(order)
    return slice(order * (order + 1) // 2, (order + 1) * (order + 2) // 2)


def num_operators(max_order: int = 4) -> int:
    """Number of derivative operators of order ``<= max_order``: ``(m + 1)(m + 2) / 2``."""
    check_max_order(max_order)
    return (max_order + 1) * (max_order + 2) // 2
