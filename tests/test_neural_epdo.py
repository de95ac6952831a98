import pytest
import torch
from conftest import TOL, high_frequency_share, off_grid, quotient, regular_plus_quotient, space
from escnn import gspaces, nn

from epdo.diffops import DISCRETIZATIONS
from epdo.equivariance import equivariance_errors, smooth_field
from epdo.kernels import PDOBasis
from epdo.nn import NeuralePDO, PDOConv, RestrictToRotations, adaptive_pdo
from epdo.nn.functional import COEFFICIENT_SCALE, NORM_EPS, NORMALIZATIONS

REPRESENTATIONS = {
    "regular": lambda gs: gs.regular_repr,
    "quotient": quotient,
    "regular+quotient": regular_plus_quotient,
}


def randomize(module: torch.nn.Module) -> None:
    """Non-trivial FieldNorm affine parameters, so that no part of the layer is at an identity-like init."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "generator_norm" in name:
                p.normal_()


@pytest.mark.parametrize("discretization", DISCRETIZATIONS)
@pytest.mark.parametrize("group_name", ["C4", "C8", "C16", "D4", "D8", "D16"])
def test_equivariance_exact_on_grid(group_name, discretization):
    gs = space(group_name)
    in_type = nn.FieldType(gs, [gs.regular_repr] * 4)
    out_type = nn.FieldType(gs, [gs.regular_repr] * 2 + [gs.trivial_repr])
    layer = NeuralePDO(in_type, out_type, basis=PDOBasis(discretization)).train()
    randomize(layer)
    x = nn.GeometricTensor(torch.randn(2, in_type.size, 11, 11), in_type)
    errors = equivariance_errors(layer, x)
    assert max(errors.values()) <= TOL, errors
    if off_grid(gs) and discretization == "gauss":  # measured 0.005 (D8) to 0.077 (D16) with these random layers
        off = equivariance_errors(layer, smooth_field(in_type, 2, 29), off_grid(gs), margin=4)
        assert max(off.values()) < 0.15, off


@pytest.mark.parametrize("rep", REPRESENTATIONS)
@pytest.mark.parametrize("group_name", ["C8", "D4"])
def test_equivariance_quotient_fields(group_name, rep):
    gs = space(group_name)
    in_type = nn.FieldType(gs, [REPRESENTATIONS[rep](gs)] * 4)
    layer = NeuralePDO(in_type, in_type, g=4, reduction=2)
    randomize(layer)
    x = nn.GeometricTensor(torch.randn(2, in_type.size, 10, 10), in_type)
    assert max(equivariance_errors(layer, x).values()) <= TOL


@pytest.mark.parametrize("fields", [1, 2, 3, 5, 6])
@pytest.mark.parametrize("rep", REPRESENTATIONS)
def test_defaults_accept_every_permutation_field_type(rep, fields):
    """The default g (1) divides every field count and the hidden width is at least one regular field, so the
    default layer accepts any number of fields of any permutation representation, one included."""
    gs = space("C4")
    in_type = nn.FieldType(gs, [REPRESENTATIONS[rep](gs)] * fields)
    layer = NeuralePDO(in_type, nn.FieldType(gs, [gs.regular_repr]))
    assert layer.g == 1
    assert layer.hidden == max(1, fields * in_type.representations[0].size // (4 * 4))
    randomize(layer)
    x = nn.GeometricTensor(torch.randn(2, in_type.size, 7, 7), in_type)
    assert max(equivariance_errors(layer, x).values()) <= TOL


def test_mixed_network_stays_equivariant():
    gs = gspaces.flipRot2dOnR2(4)
    reg = nn.FieldType(gs, [gs.regular_repr] * 4)
    triv = nn.FieldType(gs, [gs.trivial_repr])
    net = nn.SequentialModule(
        PDOConv(triv, reg, basis=PDOBasis("fd")),
        nn.ReLU(reg),
        NeuralePDO(reg, reg, g=2, basis=PDOBasis("fd")),
        nn.ReLU(reg),
        NeuralePDO(reg, reg, g=4, s=2, reduction=1, basis=PDOBasis("gauss", max_frequency=None)),
        nn.R2Conv(reg, reg, 5, padding=2),
        nn.ReLU(reg),
        PDOConv(reg, reg, basis=PDOBasis("rbffd")),
        NeuralePDO.reference(reg, nn.FieldType(gs, [gs.regular_repr] * 2), g=4, discretization="rbffd"),
    ).train()
    x = nn.GeometricTensor(torch.randn(2, 1, 12, 12), triv)
    assert max(equivariance_errors(net, x).values()) <= TOL


def test_a_broken_convention_is_detected():
    """The reference's gauss stencils ran [d_y^k .. d_x^k] with a (-1)^k sign; such a layer must fail the test."""
    gs = gspaces.rot2dOnR2(4)
    reg = nn.FieldType(gs, [gs.regular_repr] * 2)
    layer = NeuralePDO(reg, reg, basis=PDOBasis("gauss", max_frequency=None))
    with torch.no_grad():
        orders = [layer.stencils[k * (k + 1) // 2 : (k + 1) * (k + 2) // 2] for k in range(5)]
        flipped = torch.cat([s.flip(0) * (-1) ** k for k, s in enumerate(orders)])
        layer.stencils.copy_(flipped)
    x = nn.GeometricTensor(torch.randn(2, reg.size, 11, 11), reg)
    assert max(equivariance_errors(layer, x).values()) > 1e-2


def test_restriction_d16_to_c16_fields():
    gs = gspaces.flipRot2dOnR2(16)
    t = nn.FieldType(gs, [gs.regular_repr] * 2)
    restrict = RestrictToRotations(t)
    assert len(restrict.out_type) == 4 and all(r.name == "regular" for r in restrict.out_type.representations)
    after = NeuralePDO(restrict.out_type, restrict.out_type, g=4)
    x = nn.GeometricTensor(torch.randn(2, t.size, 9, 9), t)
    inclusion = gs.restrict((None, 16))[1]
    y = after(restrict(x))
    for e in restrict.out_type.gspace.fibergroup.elements[::4]:
        z = after(restrict(x.transform(inclusion(e)))).tensor
        assert (z - y.transform(e).tensor).norm() / y.tensor.norm() <= TOL


def test_parameter_count_matches_the_design_formula():
    gs = gspaces.rot2dOnR2(16)
    n, z, z_out, g, s = 16, 16, 24, 4, 4
    in_type, out_type = nn.FieldType(gs, [gs.regular_repr] * z), nn.FieldType(gs, [gs.regular_repr] * z_out)
    layer = NeuralePDO(in_type, out_type, g=g, s=s, reduction=1, basis=PDOBasis(max_frequency=None))
    m = z  # reduction 1: M = z d / |G|
    # design doc: N z M + 4M + (M/s) g 15 N + N z z_out. The reference normalizes with GroupNorm (affine, 2M) and
    # then applies its own per-field affine (2M more): two affine maps in a row compose to one, so we keep one (2M).
    formula = n * z * m + 4 * m + (m // s) * g * 15 * n + n * z * z_out
    assert sum(p.numel() for p in layer.parameters()) == formula - 2 * m == 14144 - 32
    reference = NeuralePDO.reference(in_type, out_type, g=g, s=s)
    assert sum(p.numel() for p in reference.parameters()) == formula - 2 * m
    # symbols of angular frequency <= 2 only: 11 of the 15 coefficient dimensions per generated field
    cut = NeuralePDO(in_type, out_type, g=g, s=s, reduction=1)
    assert sum(p.numel() for p in cut.parameters()) == formula - 2 * m - (m // s) * g * 4 * n


@pytest.mark.parametrize("reference", [False, True])
def test_gradcheck_float64(reference):
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr] * 2)
    layer = (NeuralePDO.reference(t, t, g=2) if reference else NeuralePDO(t, t)).double()
    x = torch.randn(1, t.size, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: layer(nn.GeometricTensor(v, t)).tensor, (x,))


def unfold_reference(x, a, stencils, g, normalization):
    """The reference implementation's computation: taps composed per pixel, normalized, applied by ``unfold``."""
    b, _, h, w = x.shape
    n_ops, k, _ = stencils.shape
    d = a.shape[1] // (g * n_ops)
    q = x.shape[1] // (g * d)
    taps = torch.einsum("bjcaz,ap->bjcpz", a.view(b, g, d, n_ops, h * w) * COEFFICIENT_SCALE, stencils.view(n_ops, -1))
    if normalization == "l1":  # the reference: sum of |taps| over the field's channels and taps
        nu = taps.abs().sum(dim=(2, 3), keepdim=True)
    else:  # root mean square over the field's channels of each channel's L2 norm
        nu = taps.square().sum(dim=(2, 3), keepdim=True).div(d).sqrt()
    taps = taps / (nu + NORM_EPS)
    patches = torch.nn.functional.unfold(x, k, padding=k // 2).view(b, q, g, d, k * k, h * w)
    return (patches * taps[:, None]).sum(4).view(b, q * g * d, h, w)


@pytest.mark.parametrize("backend", ["native", "pytorch"])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_adaptive_pdo_matches_unfold_reference(normalization, backend):
    torch.manual_seed(1)
    b, q, g, d, n_ops, h, w = 2, 3, 2, 4, 15, 7, 8
    stencils = torch.randn(n_ops, 5, 5, dtype=torch.float64)
    x = torch.randn(b, q * g * d, h, w, dtype=torch.float64)
    a = torch.randn(b, g * d * n_ops, h, w, dtype=torch.float64)
    expected = unfold_reference(x, a, stencils, g, normalization)
    got = adaptive_pdo(x, a, stencils, g, normalization=normalization, backend=backend)
    torch.testing.assert_close(got, expected)
    if backend == "native":
        coefficients = a[:1, :, :5, :6].clone().requires_grad_()
        v = x[:1, :, :5, :6].clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda v, c: adaptive_pdo(v, c, stencils, g, normalization=normalization, backend=backend),
            (v, coefficients),
            fast_mode=True,  # the kernel's full gradcheck: test_native.py
        )


def test_the_reference_layer_is_the_reference_computation():
    """``NeuralePDO.reference``: generator (1x1 map, per-field GroupNorm at weight 1 / bias 0, ReLU, 1x1 map into the
    coefficients of every PDO of order <= 4), taps normalized by their L1 norm + 0.01, a 1x1 mix: the reference
    implementation's layer, term by term (its affine parameters at their initial values)."""
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(8)
    t = nn.FieldType(gs, [gs.regular_repr] * 4)
    layer = NeuralePDO.reference(t, t, g=4, s=4, discretization="fd").double()
    assert (layer.g, layer.s, layer.hidden, layer.basis) == (4, 4, 4, PDOBasis("fd", 4, None, None))
    assert torch.equal(layer.generator_norm.weight, torch.ones(4)) and not layer.generator_norm.bias.any()
    x = torch.randn(2, t.size, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        hidden = layer.generator_in(nn.GeometricTensor(x, t)).tensor
        hidden = torch.relu(torch.nn.functional.group_norm(hidden, 4))
        coefficients = layer.generator_out(nn.GeometricTensor(hidden, layer.generator_out.in_type)).tensor
        expected = layer.mix(nn.GeometricTensor(unfold_reference(x, coefficients, layer.stencils, 4, "l1"), t)).tensor
        torch.testing.assert_close(layer(nn.GeometricTensor(x, t)).tensor, expected)


@pytest.mark.parametrize("group_name", ["C8", "D4"])
def test_layer_preserves_variance_at_initialization(group_name):
    """The reference's L1 normalization shrinks the variance ~1000x (BN running statistics then collapse eval mode);
    the default layer keeps it within a factor 4, as escnn's R2Conv does."""
    torch.manual_seed(0)
    gs = space(group_name)
    t = nn.FieldType(gs, [gs.regular_repr] * 8)
    x = nn.GeometricTensor(torch.randn(8, t.size, 16, 16), t)
    with torch.no_grad():
        for discretization in DISCRETIZATIONS:
            default = NeuralePDO(t, t, basis=PDOBasis(discretization))(x).tensor.var().item()
            reference = NeuralePDO.reference(t, t, g=2, discretization=discretization)(x).tensor.var().item()
            assert 0.25 <= default <= 4.0 and reference <= 0.01, (discretization, default, reference)
        escnn_ratio = nn.R2Conv(t, t, 5, padding=2)(x).tensor.var().item()
        assert 0.25 <= escnn_ratio <= 4.0  # the yardstick


@pytest.mark.parametrize("basis", [PDOBasis(bandwidth=None, max_frequency=None), PDOBasis("fd"), PDOBasis("rbffd", 3)])
def test_bases_keep_exact_equivariance(basis):
    gs = space("D4")
    t = nn.FieldType(gs, [gs.regular_repr] * 4)
    layer = NeuralePDO(t, t, basis=basis).train()
    randomize(layer)
    x = nn.GeometricTensor(torch.randn(2, t.size, 11, 11), t)
    assert max(equivariance_errors(layer, x).values()) <= TOL


def test_bandwidth_band_limits_the_generators_taps():
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr] * 2)

    def taps(bandwidth):
        """Every generator output basis element composed with the stencils: ``(n, d, d_hidden, 5, 5)``."""
        layer = NeuralePDO(t, t, reduction=1, basis=PDOBasis(bandwidth=bandwidth, max_frequency=None))
        basis = layer.generator_out.filter_expansion.basis_0  # (n, d * n_ops, d_hidden)
        split = basis.reshape(len(basis), gs.regular_repr.size, len(layer.stencils), -1)
        return torch.einsum("kcai,auv->kciuv", split, layer.stencils).double().numpy()

    white, smooth = high_frequency_share(taps(None)), high_frequency_share(taps(0.2))
    assert smooth < 0.7 * white, (white, smooth)


def test_export_and_state_dict_round_trip():
    gs = gspaces.flipRot2dOnR2(4)
    t, out = nn.FieldType(gs, [gs.regular_repr] * 4), nn.FieldType(gs, [gs.regular_repr] * 3)
    layer = NeuralePDO(t, out, basis=PDOBasis("rbffd"))
    randomize(layer)
    layer.eval()
    x = torch.randn(2, t.size, 9, 10)
    with torch.no_grad():
        expected = layer(nn.GeometricTensor(x, t)).tensor
        torch.testing.assert_close(layer.export()(x), expected)
        fresh = NeuralePDO(t, out, basis=PDOBasis("rbffd")).eval()
        fresh.load_state_dict(layer.state_dict())
        torch.testing.assert_close(fresh(nn.GeometricTensor(x, t)).tensor, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    gs = gspaces.rot2dOnR2(8)
    t = nn.FieldType(gs, [gs.regular_repr] * 4)
    layer = NeuralePDO(t, t, g=2, s=2, reduction=1)
    x = torch.randn(2, t.size, 12, 12)
    expected = layer(nn.GeometricTensor(x, t)).tensor
    got = layer.cuda()(nn.GeometricTensor(x.cuda(), t)).tensor
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    assert max(equivariance_errors(layer, nn.GeometricTensor(x.cuda(), t)).values()) <= 1e-4


def test_bad_configurations_are_refused_with_numbers():
    gs = gspaces.rot2dOnR2(8)
    reg = nn.FieldType(gs, [gs.regular_repr] * 4)
    with pytest.raises(ValueError, match="g=3 must divide .* z=4"):
        NeuralePDO(reg, reg, g=3)
    with pytest.raises(ValueError, match="s=3 must divide the generator's 4 output fields and its hidden width M=1"):
        NeuralePDO(reg, reg, g=4, s=3)
    with pytest.raises(ValueError, match="s=2 must divide the generator's 2 output fields and its hidden width M=1"):
        NeuralePDO(reg, reg, g=2, s=2)
    with pytest.raises(ValueError, match="s=2 must divide the generator's 1 output fields"):
        NeuralePDO(reg, reg, s=2)
    assert NeuralePDO(reg, reg).form == "diagonal"  # other field types take the commutant form (test_field_types)
    assert NeuralePDO(nn.FieldType(gs, [gs.irrep(1)] * 4), reg).form == "commutant"
    with pytest.raises(ValueError, match="g must be a positive integer, got 0"):
        NeuralePDO(reg, reg, g=0)
    with pytest.raises(TypeError, match="basis must be an epdo.kernels.PDOBasis, got str"):
        NeuralePDO(reg, reg, basis="fd")
    with pytest.raises(ValueError, match="NeuralePDO: kernel_size must be an odd integer >= 3 .*, got 2"):
        NeuralePDO(reg, reg, 2)  # R2Conv's third argument
    with pytest.raises(TypeError, match="positional"):
        NeuralePDO(reg, reg, 5, 2, 1, 1, "zeros", 1, False, 2)  # g and what follows it are keyword-only
    with pytest.raises(ValueError, match=r"normalization must be one of \('rms', 'l1'\), got 'l2'"):
        adaptive_pdo(torch.randn(1, 8, 4, 4), torch.randn(1, 120, 4, 4), PDOBasis().stencils(), 1, normalization="l2")
    layer = NeuralePDO(reg, reg, g=2)
    with pytest.raises(TypeError, match="GeometricTensor"):
        layer(torch.randn(1, reg.size, 8, 8))
    with pytest.raises(ValueError, match="expected input of type"):
        layer(nn.GeometricTensor(torch.randn(1, 8, 8, 8), nn.FieldType(gs, [gs.regular_repr])))


@pytest.mark.parametrize("reference", [False, True])
def test_the_generator_starts_static_by_default(reference):
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr] * 2)
    layer = NeuralePDO.reference(t, t, g=2) if reference else NeuralePDO(t, t)
    x = nn.GeometricTensor(torch.randn(2, t.size, 7, 7), t)
    with torch.no_grad():
        a = layer.coefficients(x).tensor
    spread = (a - a[:, :, :1, :1]).abs().max() / a.abs().max()
    assert (spread < 1e-6) != reference
    assert max(equivariance_errors(layer, x).values()) <= TOL
