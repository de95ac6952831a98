import math

import numpy as np
import pytest
import torch
from escnn import gspaces

from epdo.diffops import DISCRETIZATIONS, grid_coordinates, multi_indices, num_operators, stencils, stencils_numpy


def response(stack: np.ndarray, p: int, q: int) -> np.ndarray:
    """Each stencil applied (at the centre) to the monomial x^p y^q."""
    x, y = grid_coordinates(stack.shape[-1])
    return np.einsum("auv,uv->a", stack, x**p * y**q)


def truth(p: int, q: int, max_order: int = 4) -> np.ndarray:
    """d_x^i d_y^j (x^p y^q) at 0 for every (i, j)."""
    return np.array([math.factorial(p) * math.factorial(q) * (i == p and j == q) for i, j in multi_indices(max_order)])


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
def test_shape_and_order(discretization):
    s = stencils(discretization)
    assert s.shape == (15, 5, 5) and s.dtype == torch.get_default_dtype()
    assert stencils(discretization, max_order=2, size=3).shape == (6, 3, 3)
    assert num_operators(4) == 15 and multi_indices(2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]


def test_fd_exact_on_monomials_up_to_order_plus_one():
    stack = stencils_numpy("fd")
    for index, (i, j) in enumerate(multi_indices(4)):
        k = i + j
        for p in range(6):
            for q in range(6 - p):
                if p + q <= k + 1:
                    assert response(stack, p, q)[index] == pytest.approx(truth(p, q)[index], abs=1e-12), (i, j, p, q)


def test_fd_literal_entries_y_up():
    s = stencils_numpy("fd")
    assert s[1][2].tolist() == [0, -0.5, 0, 0.5, 0]  # d_x along the centre row, x to the right
    assert s[2][:, 2].tolist() == [0, 0.5, 0, -0.5, 0]  # d_y: +1/2 on the row above the centre
    assert s[4][1, 3] == 0.25 and s[4][1, 1] == -0.25  # d_xy at (x, y) = (1, 1) and (-1, 1)


def test_rbffd_exact_on_all_polynomials_of_degree_4():
    stack = stencils_numpy("rbffd")
    for p in range(5):
        for q in range(5 - p):
            np.testing.assert_allclose(response(stack, p, q), truth(p, q), atol=1e-8)


def test_gauss_approximates_derivatives_with_known_error():
    # Gaussian derivatives (sigma ~ 0.71 px) on a 5x5 grid are a smoothed, truncated approximation: the per-order
    # scale makes d_x^k, d_y^k exact on x^k, y^k; mixed derivatives over-respond by up to ~48% (measured: 1.0024 for
    # d_xy, 1.2007 for d_x^2 d_y, 1.2379 for d_x^3 d_y, 1.4829 for d_x^2 d_y^2).
    stack = stencils_numpy("gauss")
    for index, (i, j) in enumerate(multi_indices(4)):
        own = response(stack, i, j)[index] / (math.factorial(i) * math.factorial(j))
        if i == 0 or j == 0:
            assert own == pytest.approx(1.0, abs=1e-12)
        else:
            assert 1.0 < own < 1.49
        # odd-parity monomials are annihilated exactly (the stencil has the parity of x^i y^j)
        for p in range(5):
            for q in range(5 - p):
                if (p + i) % 2 or (q + j) % 2:
                    assert abs(response(stack, p, q)[index]) < 1e-12


@pytest.mark.parametrize("discretization", ["gauss", "rbffd"])
def test_orientation_and_sign_agree_with_fd(discretization):
    fd = stencils_numpy("fd").reshape(15, -1)
    other = stencils_numpy(discretization).reshape(15, -1)
    fd_n = fd / np.linalg.norm(fd, axis=1, keepdims=True)
    other_n = other / np.linalg.norm(other, axis=1, keepdims=True)
    similarity = other_n @ fd_n.T
    assert (np.diag(similarity) > 0.5).all()  # same sign as fd
    # same orientation: d_x^i d_y^j looks more like fd's d_x^i d_y^j than like its mirror d_x^j d_y^i
    index = {ij: a for a, ij in enumerate(multi_indices(4))}
    for (i, j), a in index.items():
        if i != j:
            assert similarity[a, a] > similarity[a, index[(j, i)]] + 0.02


def test_bad_arguments():
    with pytest.raises(ValueError, match="fd, gauss, rbffd"):
        stencils("spectral")
    with pytest.raises(ValueError, match="max_order"):
        stencils("fd", max_order=5)
    with pytest.raises(ValueError, match="odd"):
        stencils("fd", size=4)
    with pytest.raises(ValueError, match="size >= 5"):
        stencils("fd", max_order=3, size=3)


def test_the_gaussian_scale_is_part_of_the_basis():
    """``PDOBasis.scale`` sets the Gaussian's eps; bases are cached per scale (no process-wide knob), the default is
    ``gauss_scale(size)`` exactly, and scales for other stencils are refused."""
    from epdo.diffops import gauss_scale
    from epdo.kernels import PDOBasis, pdo_filter_basis

    gs = gspaces.rot2dOnR2(4)
    rho = gs.regular_repr
    default = pdo_filter_basis(gs, gs.trivial_repr, rho, PDOBasis())
    wider = pdo_filter_basis(gs, gs.trivial_repr, rho, PDOBasis(scale=0.8))
    assert not np.allclose(default, wider)
    np.testing.assert_array_equal(pdo_filter_basis(gs, gs.trivial_repr, rho, PDOBasis(scale=gauss_scale(5))), default)
    assert gauss_scale(5) == 0.99 and gauss_scale(7) == 0.99 * 5 / 7
    assert not torch.equal(PDOBasis(scale=0.8).stencils(), PDOBasis().stencils())
    with pytest.raises(ValueError, match="'fd' stencils take none"):
        PDOBasis("fd", scale=1.0)
    with pytest.raises(ValueError, match="scale must be a positive number"):
        PDOBasis(scale=-1.0)
    with pytest.raises(ValueError, match="scale=1.5 makes the 5x5 Gaussian stencils of orders <= 4 nearly linearly"):
        PDOBasis(scale=1.5)
