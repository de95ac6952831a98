import numpy as np
import pytest
from escnn import gspaces
from threadpoolctl import threadpool_info

from epdo.diffops import (
    DISCRETIZATIONS,
    coefficient_representation,
    derivative_matrix,
    derivative_representation,
    frequency_projector,
    grid_coordinates,
    multi_indices,
    stencils_numpy,
)
from epdo.equivariance import grid_elements
from epdo.memo import memoize

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


@pytest.mark.parametrize("cutoff", [0, 1, 2, 3])
def test_frequency_projector_keeps_exactly_the_low_angular_frequencies_of_the_symbol(cutoff):
    """``h P``'s symbol ``sum_a h_a omega^a`` on the unit circle has the angular frequencies ``<= cutoff`` of ``h``'s
    and no others; ``P`` is a projector of rank ``sum_k #{m in k, k-2, ... >= 0, m <= cutoff} (2 if m else 1)``."""
    p = frequency_projector(4, cutoff)
    np.testing.assert_allclose(p @ p, p, atol=1e-12)
    rank = sum((2 if m else 1) for k in range(5) for m in range(k % 2, k + 1, 2) if m <= cutoff)
    assert np.linalg.matrix_rank(p, tol=1e-9) == rank == [3, 7, 11, 13][cutoff]
    angles = 2 * np.pi * np.arange(32) / 32
    monomials = np.array([[np.cos(t) ** i * np.sin(t) ** j for i, j in multi_indices(4)] for t in angles])
    rng = np.random.default_rng(cutoff)
    for order in range(5):  # per degree: frequencies of different degrees may coincide
        h = rng.standard_normal(15) * np.array([i + j == order for i, j in multi_indices(4)])
        spectrum, kept = (np.abs(np.fft.rfft(monomials @ v)) for v in (h, h @ p))
        low = np.arange(len(spectrum)) <= cutoff
        np.testing.assert_allclose(kept[low], spectrum[low], atol=1e-9)
        np.testing.assert_allclose(kept[~low], 0, atol=1e-9)


def test_frequency_projector_commutes_with_rotations_and_reflections():
    p = frequency_projector(4, 2)
    for g in (np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]), np.diag([1.0, -1.0])):
        np.testing.assert_allclose(p @ derivative_matrix(g), derivative_matrix(g) @ p, atol=1e-12)
    np.testing.assert_allclose(frequency_projector(4, None), np.eye(15), atol=1e-12)
    np.testing.assert_allclose(frequency_projector(2, 7), np.eye(6), atol=1e-12)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_frequency must be None or a non-negative integer"):
            frequency_projector(4, bad)


def test_memoized_constructions_run_with_one_blas_thread():
    """Bases and representations are many small dense problems: computed on one BLAS thread, then cached."""
    threads = []

    @memoize
    def construction(n: int) -> int:
        threads.append([pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"])
        return n

    assert construction(3) == construction(3) == 3
    assert len(threads) == 1 and threads[0] and set(threads[0]) == {1}


@pytest.mark.parametrize("flip", [False, True], ids=["SO(2)", "O(2)"])
def test_coefficients_of_band_limited_fields_transform_by_the_kronecker_product(flip):
    """``rho (x) D^-T`` of an SO(2) / O(2) field at arbitrary elements, not only those of the subgroup it is solved
    on: frequencies up to 2 + 4 need 13 rotations."""
    gs = gspaces.flipRot2dOnR2(-1, maximum_frequency=2) if flip else gspaces.rot2dOnR2(-1, maximum_frequency=2)
    group = gs.fibergroup
    rho = group.spectral_regular_representation(*group.bl_irreps(2))
    dual, product = coefficient_representation(gs, 4), coefficient_representation(gs, 4, rho)
    rng = np.random.default_rng(0)
    angles = rng.uniform(0, 2 * np.pi, 6)
    elements = [group.element((k % 2, t) if flip else t, "radians") for k, t in enumerate(angles)]
    for g in elements:
        np.testing.assert_allclose(product(g), np.kron(rho(g), dual(g)), atol=1e-12)


def test_threads_building_the_same_layer_share_its_representations():
    """Bases and representations are "look up, else build and register": two threads building the same new layer
    both missed, and escnn refused the second registration.  Built from 4 threads at once, one layer type never
    built before in this process (C11, gauss-exact stencils) gives every thread the same representation objects."""
    import threading

    from escnn import nn

    from epdo.kernels import PDOBasis
    from epdo.nn import NeuralePDO

    gs = gspaces.rot2dOnR2(11)
    field = nn.FieldType(gs, [gs.regular_repr])
    start, built, failed = threading.Barrier(4), [], []

    def build() -> None:
        start.wait()
        try:
            built.append(NeuralePDO(field, field, basis=PDOBasis("gauss-exact", max_order=3)))
        except Exception as error:  # the assertion below names it
            failed.append(repr(error))

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed[0]
    assert len(built) == 4
    rho = coefficient_representation(gs, 3, gs.regular_repr)
    assert gs.fibergroup.representations[rho.name] is rho
