import numpy as np
import pytest
from escnn import gspaces

from epdo.diffops import (
    DISCRETIZATIONS,
    coefficient_representation,
    derivative_matrix,
    derivative_representation,
    grid_coordinates,
    stencils_numpy,
)
from epdo.equivariance import grid_elements

SPACES = [gspaces.rot2dOnR2(4), gspaces.rot2dOnR2(8), gspaces.flipRot2dOnR2(4), gspaces.flipRot2dOnR2(8)]


def stencil_at_gz(stack: np.ndarray, g: np.ndarray) -> np.ndarray:
    """S_a(g z) for every grid point z (g a signed permutation)."""
    c = stack.shape[-1] // 2
    x, y = grid_coordinates(stack.shape[-1])
    gx = np.rint(g[0, 0] * x + g[0, 1] * y).astype(int)
    gy = np.rint(g[1, 0] * x + g[1, 1] * y).astype(int)
    return stack[:, c - gy, c + gx]


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_stencils_transform_by_the_representation(space, discretization):
    stack = stencils_numpy(discretization)
    rep = derivative_representation(space)
    elements = grid_elements(space)
    assert len(elements) == 4 * (2 if space.flips_order > 0 else 1)
    for e in elements:
        expected = np.einsum("ab,buv->auv", rep(e), stack)
        np.testing.assert_allclose(stencil_at_gz(stack, space.basespace_action(e)), expected, atol=1e-10)
    # independently of grid_coordinates: numpy's rot90 of the array turns the image by +90 degrees (y up)
    quarter = [e for e in elements if np.allclose(space.basespace_action(e), [[0, -1], [1, 0]])][0]
    rotated_image = np.rot90(stack, k=1, axes=(1, 2))  # image of S under r: (r.S)(z) = S(r^-1 z)
    np.testing.assert_allclose(rotated_image, np.einsum("ab,buv->auv", rep(~quarter), stack), atol=1e-10)


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_representation_is_a_homomorphism_and_dual(space):
    rep, dual = derivative_representation(space), coefficient_representation(space)
    G = space.fibergroup
    for a in G.elements:
        np.testing.assert_allclose(dual(a), np.linalg.inv(rep(a)).T, atol=1e-9)
        for b in G.elements[:3]:
            np.testing.assert_allclose(rep(a @ b), rep(a) @ rep(b), atol=1e-9)


def test_derivative_matrix_of_a_quarter_turn():
    # r = +90 deg: d_x (f o r^-1) = -d_y f, d_y (f o r^-1) = d_x f
    d = derivative_matrix(np.array([[0.0, -1.0], [1.0, 0.0]]), max_order=1)
    np.testing.assert_allclose(d, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
