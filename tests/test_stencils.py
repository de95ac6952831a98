import math

import numpy as np
import pytest
import torch
from escnn import gspaces

from epdo.diffops import (
    DISCRETIZATIONS,
    grid_coordinates,
    multi_indices,
    num_operators,
    order_slice,
    stencil_rotation_error,
    stencils,
    stencils_numpy,
)


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
    for k in range(5):
        assert multi_indices(4)[order_slice(k)] == [(k - j, j) for j in range(k + 1)]


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


@pytest.mark.parametrize("max_order, size", [(4, 5), (4, 7), (2, 3)])
def test_gauss_exact_is_exact_on_every_polynomial_of_its_degree(max_order, size):
    stack = stencils_numpy("gauss-exact", max_order, size)
    for index, (i, j) in enumerate(multi_indices(max_order)):
        for p in range(i + j + 1):
            for q in range(i + j + 1 - p):
                expected = truth(p, q, max_order)[index]
                assert response(stack, p, q)[index] == pytest.approx(expected, abs=1e-10), (i, j, p, q)
    assert not np.allclose(stack, stencils_numpy("fd", max_order, size))  # it smooths: not the central differences


def test_gauss_exact_on_5x5_has_the_central_differences_of_orders_3_and_4_along_its_axis():
    """Five points leave a 1-D factor of order 3 or 4 no freedom: summed across its axis (the Gaussian factor sums to
    1), ``d_x^k`` is the central difference of order k."""
    stack, fd = stencils_numpy("gauss-exact"), stencils_numpy("fd")
    for k in (3, 4):
        first = k * (k + 1) // 2  # d_x^k
        np.testing.assert_allclose(stack[first].sum(axis=0), fd[first][2], atol=1e-12)
        assert not np.allclose(stack[first], fd[first])


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
def test_stencils_commute_with_quarter_turns_exactly(discretization):
    assert stencil_rotation_error(discretization, 90.0, max_frequency=None).max() < 1e-12
    assert stencil_rotation_error(discretization, 180.0).max() < 1e-12


def test_rotation_error_shrinks_with_the_fields_smoothness_for_exact_stencils_only():
    """Stencils exact on polynomials of their degree have an error of second order in the pixel size: doubling the
    field's width divides it by about 4.  The Gaussian stencils' 4th-order error does not shrink: it is a bias."""
    for discretization in ("fd", "gauss-exact"):
        rough, smooth = (stencil_rotation_error(discretization, 22.5, width=w) for w in (2.0, 4.0))
        assert (smooth[1:] < rough[1:] / 3).all(), (discretization, rough, smooth)
    rough, smooth = (stencil_rotation_error("gauss", 22.5, width=w) for w in (2.0, 4.0))
    assert smooth[4] > 0.25 and rough[4] > 0.25


@pytest.mark.parametrize("angle", [22.5, 45.0])
def test_gauss_exact_rotates_better_than_gauss_at_orders_3_and_4(angle):
    """Measured at 22.5 degrees (fields of width 2): order 3 0.0074 against 0.073, order 4 0.047 against 0.29; orders
    0-2 within 5% of the Gaussian's, 3.8-60x below the central differences'."""
    exact, gauss, fd = (stencil_rotation_error(d, angle) for d in ("gauss-exact", "gauss", "fd"))
    assert (exact[3:] < gauss[3:] / 5).all(), (exact, gauss)
    assert (exact[1:3] < 1.05 * gauss[1:3]).all() and (exact[1:3] < fd[1:3] / 3).all(), (exact, gauss, fd)


@pytest.mark.parametrize("discretization", ["gauss", "gauss-exact", "rbffd"])
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
    with pytest.raises(ValueError, match="fd, gauss, gauss-exact, rbffd"):
        stencils("spectral")
    with pytest.raises(ValueError, match="max_order"):
        stencils("fd", max_order=5)
    with pytest.raises(ValueError, match="max_order must be an integer in .0, 4. .5x5 stencils., got 5"):
        order_slice(5)
    with pytest.raises(ValueError, match="odd"):
        stencils("fd", size=4)
    with pytest.raises(ValueError, match="size >= 5"):
        stencils("fd", max_order=3, size=3)
    with pytest.raises(ValueError, match="gauss-exact stencils of order 3 need size >= 5, got 3"):
        stencils("gauss-exact", max_order=3, size=3)
    with pytest.raises(ValueError, match="'gauss-exact' stencils take none"):
        stencils("gauss-exact", scale=1.0)


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


def test_rotation_error_refuses_bad_arguments_in_one_line():
    with pytest.raises(ValueError, match="angle must be a finite number of degrees, got 'x'"):
        stencil_rotation_error("fd", "x")
    with pytest.raises(ValueError, match="width must be a positive number of pixels .* got 0"):
        stencil_rotation_error("fd", 22.5, width=0)
    with pytest.raises(ValueError, match="unknown discretization 'spline'"):
        stencil_rotation_error("spline", 22.5)
