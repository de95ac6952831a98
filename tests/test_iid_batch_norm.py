"""IIDBatchNorm against escnn's IIDBatchNorm2d: values, gradients, running statistics, state and equivariance."""

import pytest
import torch
from escnn import gspaces, nn

from epdo.equivariance import equivariance_errors
from epdo.nn import IIDBatchNorm, batch_norms


def _mixed_type() -> nn.FieldType:
    """Band-limited regular fields, irreps with and without an invariant part, interleaved (not contiguous)."""
    gspace = gspaces.flipRot2dOnR2(-1, maximum_frequency=4)
    group = gspace.fibergroup
    regular = group.spectral_regular_representation(*group.bl_irreps(2))
    return nn.FieldType(gspace, [regular, group.irrep(1, 1), regular, gspace.trivial_repr, group.irrep(1, 2)] * 2)


def _fourier_type() -> nn.FieldType:
    gspace = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    group = gspace.fibergroup
    return nn.FieldType(gspace, [group.spectral_regular_representation(*group.bl_irreps(2))] * 3)


OPTIONS = {
    "default": {},
    "no affine": dict(affine=False),
    "cumulative average": dict(momentum=None),
    "batch statistics always": dict(track_running_stats=False),
}


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("field_type", [_mixed_type, _fourier_type], ids=["mixed", "fourier"])
def test_is_escnns_iid_batch_norm_in_training_and_eval_mode(field_type, options):
    torch.manual_seed(0)
    ftype = field_type()
    theirs = nn.IIDBatchNorm2d(ftype, **OPTIONS[options])
    with torch.no_grad():
        for parameter in theirs.parameters():
            parameter.normal_()
    ours = IIDBatchNorm(ftype, **OPTIONS[options])
    ours.load_state_dict(theirs.state_dict())
    for training in (True, True, True, False):
        theirs.train(training)
        ours.train(training)
        x = (torch.randn(4, ftype.size, 7, 9) * 3 + 1).requires_grad_()
        grad = torch.randn_like(x)
        results = []
        for module in (ours, theirs):
            y = module(nn.GeometricTensor(x, ftype)).tensor
            results.append((y, *torch.autograd.grad(y, [x, *module.parameters()], grad)))
        for got, expected in zip(*results):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for (name, got), expected in zip(ours.state_dict().items(), theirs.state_dict().values()):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_equivariant_on_the_grid_in_training_mode():
    torch.manual_seed(1)
    ftype = _mixed_type()
    norm = IIDBatchNorm(ftype).train()
    with torch.no_grad():
        for parameter in norm.parameters():
            parameter.normal_()
    x = nn.GeometricTensor(torch.randn(3, ftype.size, 8, 8), ftype)
    errors = equivariance_errors(norm, x)
    assert len(errors) == 8 and max(errors.values()) < 1e-5, errors


def test_is_a_batch_norm_and_folds_on_export():
    torch.manual_seed(2)
    ftype = _fourier_type()
    net = nn.SequentialModule(nn.R2Conv(ftype, ftype, 3, padding=1), IIDBatchNorm(ftype))
    assert batch_norms(net) == [net[1]]
    net.train()
    for _ in range(3):
        net(nn.GeometricTensor(torch.randn(4, ftype.size, 6, 6), ftype))
    net.eval()
    x = torch.randn(2, ftype.size, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(net.export()(x), net(nn.GeometricTensor(x, ftype)).tensor, rtol=1e-4, atol=1e-5)


def test_bad_input_gets_one_line_errors():
    ftype = _fourier_type()
    norm = IIDBatchNorm(ftype).train()
    with pytest.raises(ValueError, match=r"more than one value per channel in training mode, got .*\(1, 15, 1, 1\)"):
        norm(nn.GeometricTensor(torch.randn(1, ftype.size, 1, 1), ftype))
    with pytest.raises(TypeError, match="IIDBatchNorm: in_type must be an escnn FieldType, got int"):
        IIDBatchNorm(3)
    with pytest.raises(ValueError, match="IIDBatchNorm: expected input of type"):
        norm(nn.GeometricTensor(torch.randn(2, 15, 3, 3), nn.FieldType(ftype.gspace, [ftype.gspace.trivial_repr] * 15)))
