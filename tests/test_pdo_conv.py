import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOL, high_frequency_share, off_grid, quotient, space
from escnn import group, gspaces, nn

from epdo.diffops import DISCRETIZATIONS
from epdo.equivariance import equivariance_errors, grid_elements, smooth_field
from epdo.kernels import PDOBasis, pdo_coefficient_basis, pdo_filter_basis
from epdo.nn import Conv1x1, PDOConv

FIELDS = {
    "trivial": lambda gs: gs.trivial_repr,
    "regular": lambda gs: gs.regular_repr,
    "quotient": lambda gs: quotient(gs),
    "irrep": lambda gs: gs.irrep(*gs.fibergroup.irreps()[2].id),
}


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("group_name", ["C4", "C8", "C16", "D4", "D8"])
def test_equivariance_exact_on_grid(group_name, discretization):
    gs = space(group_name)
    in_type = nn.FieldType(gs, [f(gs) for f in FIELDS.values()])
    out_type = nn.FieldType(gs, [f(gs) for f in reversed(FIELDS.values())] + [gs.regular_repr])
    layer = PDOConv(in_type, out_type, basis=PDOBasis(discretization, max_frequency=None), bias=True).train()
    x = nn.GeometricTensor(torch.randn(2, in_type.size, 13, 13), in_type)
    errors = equivariance_errors(layer, x)
    assert len(errors) == len(grid_elements(gs))
    assert max(errors.values()) <= TOL, errors
    off = equivariance_errors(layer, smooth_field(in_type, 2, 29), off_grid(gs), margin=4)
    assert not off or max(off.values()) < 0.03, off  # measured 0.003 (rbffd) to 0.014 (fd, gauss)


@pytest.mark.parametrize("name", FIELDS)
def test_equivariance_per_field_kind(name):
    gs = gspaces.flipRot2dOnR2(4)
    t = nn.FieldType(gs, [FIELDS[name](gs)] * 2)
    layer = PDOConv(t, t)
    x = nn.GeometricTensor(torch.randn(2, t.size, 11, 11), t)
    assert max(equivariance_errors(layer, x).values()) <= TOL


def test_basis_sizes_follow_frobenius_reciprocity():
    gs, every = gspaces.rot2dOnR2(16), PDOBasis("fd", max_frequency=None)
    assert pdo_filter_basis(gs, gs.trivial_repr, gs.regular_repr, every).shape == (15, 16, 1, 5, 5)
    assert pdo_filter_basis(gs, gs.regular_repr, gs.regular_repr, every).shape[0] == 15 * 16
    d16 = gspaces.flipRot2dOnR2(16)
    assert pdo_filter_basis(d16, d16.trivial_repr, d16.regular_repr, every).shape[0] == 15


@pytest.mark.parametrize("discretization", ["fd", "gauss"])
def test_band_limited_basis_spans_the_same_space_with_smooth_random_filters(discretization):
    gs = gspaces.rot2dOnR2(8)
    plain = pdo_filter_basis(gs, gs.regular_repr, gs.regular_repr, PDOBasis(discretization, 4, None, None))
    smooth = pdo_filter_basis(gs, gs.regular_repr, gs.regular_repr, PDOBasis(discretization, 4, None, 0.2))
    assert smooth.shape == plain.shape
    flat_plain, flat_smooth = plain.reshape(len(plain), -1), smooth.reshape(len(smooth), -1)
    np.testing.assert_allclose(flat_plain @ flat_plain.T, np.eye(len(plain)), atol=1e-9)
    np.testing.assert_allclose(flat_smooth @ (flat_plain.T @ flat_plain), flat_smooth, atol=1e-9)  # same span
    assert np.isclose((flat_smooth**2).sum(1).mean(), 1.0)  # the same initial scale
    # white-noise combinations (the sum of the elements' power): most power at high frequency without the band
    # limit (fd's order-4 stencils), a small share with it
    plain_share, smooth_share = high_frequency_share(plain), high_frequency_share(smooth)
    assert smooth_share < 0.7 * plain_share, (plain_share, smooth_share)  # 0.75 -> 0.45 (fd), 0.69 -> 0.38 (gauss)
    sharper = high_frequency_share(
        pdo_filter_basis(gs, gs.regular_repr, gs.regular_repr, PDOBasis(discretization, 4, None, 0.1))
    )
    assert sharper < smooth_share
    for bad in (0, -0.1, 0.05, 1.5, True, "0.2"):
        with pytest.raises(ValueError, match=r"bandwidth must be None or a number in \[0.1, 1\]"):
            PDOBasis(bandwidth=bad)


def test_build_time_with_cached_basis():
    gs = gspaces.rot2dOnR2(16)
    a, b = nn.FieldType(gs, [gs.regular_repr] * 24), nn.FieldType(gs, [gs.regular_repr] * 32)
    PDOConv(a, b)
    start = time.perf_counter()
    layer = PDOConv(a, b)
    assert time.perf_counter() - start < 1.0
    assert sum(p.numel() for p in layer.parameters()) == 24 * 32 * 11 * 16


def _pair(gs=None):
    gs = gs or gspaces.rot2dOnR2(8)
    a, b = nn.FieldType(gs, [gs.regular_repr] * 2), nn.FieldType(gs, [gs.regular_repr, gs.trivial_repr])
    return a, b


def test_export_matches_eval_output():
    a, b = _pair()
    layer = PDOConv(a, b, basis=PDOBasis("rbffd"), bias=True)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    layer.eval()
    x = torch.randn(3, a.size, 10, 12)
    with torch.no_grad():
        expected = layer(nn.GeometricTensor(x, a)).tensor
        exported = layer.export()
        assert isinstance(exported, torch.nn.Conv2d)
        torch.testing.assert_close(exported(x), expected)


def test_eval_cache_never_stale():
    a, b = _pair()
    x = nn.GeometricTensor(torch.randn(2, a.size, 9, 9), a)
    layer, other = PDOConv(a, b).eval(), PDOConv(a, b)
    with torch.no_grad():
        before = layer(x).tensor
        layer.load_state_dict(other.state_dict())  # the reference code evaluated with stale kernels here
        after = layer(x).tensor
        torch.testing.assert_close(after, other.eval()(x).tensor)
    assert not torch.allclose(before, after)
    # an optimizer step taken while in eval mode
    optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer(x).tensor.square().sum().backward()
    optimizer.step()
    with torch.no_grad():
        stepped = layer(x).tensor
        layer.train()
        torch.testing.assert_close(stepped, layer(x).tensor)
        layer.eval()
        # .to(dtype) and back
        layer.double()
        doubled = layer(nn.GeometricTensor(x.tensor.double(), a)).tensor
        assert doubled.dtype == torch.float64 and layer.filter_and_bias()[0].dtype == torch.float64
        torch.testing.assert_close(doubled.float(), stepped, rtol=1e-3, atol=1e-3)


def test_state_dict_round_trip():
    a, b = _pair(gspaces.flipRot2dOnR2(4))
    layer = PDOConv(a, b, bias=True)
    fresh = PDOConv(a, b, bias=True)
    fresh.load_state_dict(layer.state_dict())
    x = nn.GeometricTensor(torch.randn(2, a.size, 9, 9), a)
    torch.testing.assert_close(fresh(x).tensor, layer(x).tensor)
    assert set(layer.eval().state_dict()) == set(layer.train().state_dict())


def test_bad_input_is_refused_clearly():
    a, b = _pair()
    layer = PDOConv(a, b)
    with pytest.raises(TypeError, match="GeometricTensor"):
        layer(torch.randn(1, a.size, 9, 9))
    with pytest.raises(ValueError, match="expected input of type"):
        layer(nn.GeometricTensor(torch.randn(1, b.size, 9, 9), b))
    with pytest.raises(ValueError, match="share one gspace"):
        PDOConv(a, nn.FieldType(gspaces.rot2dOnR2(4), [gspaces.rot2dOnR2(4).regular_repr]))
    with pytest.raises(TypeError, match="FieldType"):
        PDOConv(a, 3)
    with pytest.raises(ValueError, match="fd, gauss, gauss-exact, rbffd"):
        PDOBasis("spline")
    with pytest.raises(TypeError, match="basis must be an epdo.kernels.PDOBasis, got str"):
        PDOConv(a, b, basis="fd")
    with pytest.raises(ValueError, match="max_frequency must be None or a non-negative integer, got -1"):
        PDOBasis(max_frequency=-1)
    with pytest.raises(ValueError, match="size must be an odd positive integer, got 4"):
        PDOBasis(size=4)


def test_bases_are_identical_across_processes():
    """The parametrization must not depend on the process, bit for bit, or a checkpoint loaded in another process
    would compute another function and the same seed would give another training run; numpy's global generator is
    left as the caller had it.  A fresh process against this one (another seed, other bases built before)."""
    import hashlib
    import subprocess
    import sys

    def digest(gs) -> str:
        a = pdo_filter_basis(gs, gs.regular_repr, gs.regular_repr, PDOBasis())
        b = pdo_coefficient_basis(gs, gs.regular_repr, gs.regular_repr, PDOBasis("fd"))
        return hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest()

    script = (
        "import numpy as np, hashlib; np.random.seed(1); from escnn import gspaces; "
        "from epdo.kernels import PDOBasis, pdo_filter_basis, pdo_coefficient_basis; "
        "gs = gspaces.rot2dOnR2(4); state = np.random.get_state()[1].copy(); "
        "a = pdo_filter_basis(gs, gs.regular_repr, gs.regular_repr, PDOBasis()); "
        "b = pdo_coefficient_basis(gs, gs.regular_repr, gs.regular_repr, PDOBasis('fd')); "
        "print(hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest(), (np.random.get_state()[1] == state).all())"
    )
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    np.random.seed(2)
    assert fresh == [digest(gspaces.rot2dOnR2(4)), "True"]


def _fields(gs):
    q = quotient(gs)
    return {
        "trivial": gs.trivial_repr,
        "regular": gs.regular_repr,
        "regular+quotient": group.directsum([gs.regular_repr, q]),
    }


def test_bases_equal_the_previous_implementations():
    """``tests/data/bases_before.npz``: four random projections of every element of bases the previous
    implementation computed (filters composed and Fourier-transformed one by one, escnn's numerical decompositions).
    The stencil-level metric and the orbit solutions give the same bases up to rounding, amplified by the stencil
    metric's condition number (fd ~6e3, gauss ~4e3, rbffd ~1e5): 1e-10 relative, 2e-9 for rbffd."""
    stored = np.load(Path(__file__).parent / "data" / "bases_before.npz")
    spaces = {"C4": gspaces.rot2dOnR2(4), "D4": gspaces.flipRot2dOnR2(4), "C16": gspaces.rot2dOnR2(16),
              "D16": gspaces.flipRot2dOnR2(16)}  # fmt: skip
    for key in stored.files:
        kind, name, *pair, discretization, bandwidth, frequency = key.split("/")
        gs, fields = spaces[name], _fields(spaces[name])
        basis = PDOBasis(discretization, 4, None if frequency == "None" else int(frequency),
                         None if bandwidth == "None" else float(bandwidth))  # fmt: skip
        if kind == "filter":
            new = pdo_filter_basis(gs, fields[pair[0]], fields[pair[1]], basis)
        else:
            rho = fields[pair[0]]
            new = pdo_coefficient_basis(gs, rho, rho, basis)
        flat = new.reshape(len(new), -1)
        projected = flat @ np.random.default_rng(0).standard_normal((flat.shape[1], 4))
        tolerance = (2e-9 if discretization == "rbffd" else 1e-10) * np.abs(stored[key]).max()
        np.testing.assert_allclose(projected, stored[key], rtol=0, atol=tolerance, err_msg=key)


@pytest.mark.parametrize("gain", [1.0, 4.0])
def test_gain_keeps_the_initial_map_and_scales_the_first_adam_step(gain):
    """``gain`` multiplies the basis and divides the initial weights: the same map at initialization; Adam's first
    step (``lr * sign(grad)`` per weight, whose gradient is ``gain`` times larger) moves the map ``gain`` times
    further."""
    gs = gspaces.rot2dOnR2(4)
    types = [nn.FieldType(gs, [gs.regular_repr] * 3) for _ in range(2)]
    x = nn.GeometricTensor(torch.randn(2, 12, 9, 9), types[0])
    steps = []
    for g in (1.0, gain):
        torch.manual_seed(0)
        conv = Conv1x1(*types, gain=g)
        before = conv.filter_and_bias()[0].detach().clone()
        optimizer = torch.optim.Adam(conv.parameters(), lr=1e-3)
        (conv(x).tensor ** 2).mean().backward()
        optimizer.step()
        steps.append((before, conv.filter_and_bias()[0].detach() - before))
    torch.testing.assert_close(steps[1][0], steps[0][0], rtol=1e-5, atol=1e-6)
    ratio = float(steps[1][1].norm() / steps[0][1].norm())
    assert abs(ratio - gain) < 1e-3 * gain, ratio


def test_gain_must_be_positive():
    gs = gspaces.rot2dOnR2(4)
    ftype = nn.FieldType(gs, [gs.regular_repr])
    with pytest.raises(ValueError, match="gain must be positive, got 0"):
        Conv1x1(ftype, ftype, gain=0)


@pytest.mark.parametrize("group_name", ["C8", "D8"])
def test_frequency_cutoff_two_has_escnns_5x5_basis_sizes(group_name):
    """escnn's 5x5 filters are rings of angular frequency 0-2: as many as the PDOs with symbols of those frequencies."""
    gs = space(group_name)
    for rho_in in (gs.trivial_repr, gs.regular_repr):
        a, b = nn.FieldType(gs, [rho_in]), nn.FieldType(gs, [gs.regular_repr])
        expected = nn.R2Conv(a, b, 5).basisexpansion.dimension()
        assert len(pdo_filter_basis(gs, rho_in, gs.regular_repr, PDOBasis())) == expected
        assert len(pdo_filter_basis(gs, rho_in, gs.regular_repr, PDOBasis(max_frequency=None))) == expected * 15 // 11


@pytest.mark.parametrize("group_name", ["C8", "D4"])
def test_frequency_cutoff_keeps_exact_equivariance(group_name):
    gs = space(group_name)
    in_type = nn.FieldType(gs, [f(gs) for f in FIELDS.values()])
    layer = PDOConv(in_type, in_type, basis=PDOBasis("fd", max_frequency=1), bias=True).train()
    x = nn.GeometricTensor(torch.randn(2, in_type.size, 13, 13), in_type)
    assert max(equivariance_errors(layer, x).values()) <= TOL
