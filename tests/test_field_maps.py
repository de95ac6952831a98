"""The per-field maps: FourierReLU against escnn's FourierPointwise ReLU, field_linear against torch.matmul, their
compiled operators (values, gradients, fake implementations, pooled memory) and the PyTorch fallback."""

from dataclasses import replace

import pytest
import torch
from escnn import gspaces, nn

from epdo.equivariance import equivariance_errors
from epdo.models import PRESETS, build_model
from epdo.nn import FourierReLU, field_linear, fourier_relu
from epdo.nn.native import GRAIN_SIZE

GROUPS = {"SO(2)": gspaces.rot2dOnR2(-1, maximum_frequency=4), "O(2)": gspaces.flipRot2dOnR2(-1, maximum_frequency=4)}


def _pair(gspace, fields: int, **kwargs):
    """``FourierReLU`` and escnn's ``FourierPointwise`` ReLU of the same arguments (frequencies up to 2)."""
    irreps = gspace.fibergroup.bl_irreps(2)
    ours = FourierReLU(gspace, fields, irreps, type="regular", **kwargs)
    theirs = nn.FourierPointwise(gspace, fields, irreps, type="regular", function="p_relu", **kwargs)
    return ours, theirs


def _value_and_gradient(module, x: torch.Tensor, grad: torch.Tensor):
    x = x.detach().requires_grad_()
    y = module(nn.GeometricTensor(x, module.in_type)).tensor
    return y, torch.autograd.grad(y, x, grad)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("samples", [8, 12])
@pytest.mark.parametrize("group", list(GROUPS))
def test_fourier_relu_is_escnns_fourier_pointwise_relu(group, samples, dtype):
    torch.manual_seed(0)
    ours, theirs = _pair(GROUPS[group], 3, N=samples)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    assert torch.equal(ours.A, theirs.A) and torch.equal(ours.Ainv, theirs.Ainv)
    x = torch.randn(2, ours.in_type.size, 5, 37, dtype=dtype)  # 37 pixels a row: a partial vector at every row end
    grad = torch.randn_like(x)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for got, expected in zip(_value_and_gradient(ours, x, grad), _value_and_gradient(theirs, x, grad)):
        torch.testing.assert_close(got, expected, **tolerance)


def test_fourier_relu_maps_to_other_output_frequencies():
    """escnn's ``out_irreps`` (``e != d``): the result's coefficients on fewer frequencies."""
    gspace = GROUPS["SO(2)"]
    ours, theirs = _pair(gspace, 2, N=12, out_irreps=gspace.fibergroup.bl_irreps(1))
    assert ours.Ainv.shape[0] < ours.A.shape[1]
    x = torch.randn(3, ours.in_type.size, 6, 6)
    grad = torch.randn(3, ours.out_type.size, 6, 6)
    for got, expected in zip(_value_and_gradient(ours, x, grad), _value_and_gradient(theirs, x, grad)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", list(GROUPS))
def test_fourier_relu_is_equivariant_to_the_sampled_elements_on_the_grid(group):
    module, _ = _pair(GROUPS[group], 2, N=8)
    x = nn.GeometricTensor(torch.randn(2, module.in_type.size, 9, 9), module.in_type)
    errors = equivariance_errors(module, x)  # the quarter turns (and reflections) are among the 8 samples
    assert len(errors) == (8 if group == "O(2)" else 4) and max(errors.values()) < 1e-5, errors


def test_the_operators_match_pytorch_in_float64_gradcheck_and_opcheck():
    torch.manual_seed(1)
    module, _ = _pair(GROUPS["O(2)"], 2, N=8)
    sample, unsample = module.A.double(), module.Ainv.double()
    x = torch.randn(2, module.in_type.size, 4, 11, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: torch.ops.epdo.fourier_relu(t, sample, unsample), (x,))
    torch.library.opcheck(torch.ops.epdo.fourier_relu.default, (x, sample, unsample))
    planes = x.detach().reshape(-1, sample.shape[1], 44).requires_grad_()
    expected = torch.matmul(unsample, torch.relu(torch.matmul(sample, planes))).reshape(x.shape[0], -1, 4, 11)
    torch.testing.assert_close(torch.ops.epdo.fourier_relu(x, sample, unsample), expected, rtol=1e-13, atol=1e-13)
    torch.autograd.gradcheck(lambda t: torch.ops.epdo.field_linear(t, sample), (planes,))
    torch.library.opcheck(torch.ops.epdo.field_linear.default, (planes, sample))
    torch.testing.assert_close(field_linear(planes, unsample.T), torch.matmul(unsample.T, planes), rtol=0, atol=1e-13)


def test_relu_at_zero_and_nan_as_pytorchs():
    """A zero sample passes no gradient, as ``torch.relu``'s; a NaN passes through."""
    module, _ = _pair(GROUPS["SO(2)"], 1, N=8)
    x = torch.zeros(1, module.in_type.size, 2, 3, requires_grad=True)
    y = fourier_relu(x, module.A, module.Ainv)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(y, torch.zeros_like(y)) and torch.equal(grad, torch.zeros_like(grad))
    x = torch.randn(1, module.in_type.size, 2, 3)
    x[0, 0, 1, 2] = float("nan")
    y = fourier_relu(x, module.A, module.Ainv)
    assert y[0, :, 1, 2].isnan().all() and not y[0, :, 0, 0].isnan().any()


def test_outputs_kept_by_the_caller_are_never_reused():
    """Outputs come from pooled memory: one the caller holds is not handed out again."""
    module, _ = _pair(GROUPS["SO(2)"], 4, N=8)
    x = torch.randn(8, module.in_type.size, 16, 16)
    first = fourier_relu(x, module.A, module.Ainv)
    kept = first.clone()
    for _ in range(3):
        second = fourier_relu(-x, module.A, module.Ainv)
        assert second.data_ptr() != first.data_ptr()
    assert torch.equal(first, kept)
    del first, second
    again = fourier_relu(x, module.A, module.Ainv)
    assert torch.equal(again, kept)


def test_the_thread_count_does_not_change_the_result():
    module, _ = _pair(GROUPS["SO(2)"], 4, N=12)
    x = torch.randn(4, module.in_type.size, 24, 24)
    assert x.numel() >= GRAIN_SIZE
    threads, results = torch.get_num_threads(), []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(_value_and_gradient(module, x, torch.ones_like(x)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_without_the_compiled_kernels_pytorch_computes_the_same(monkeypatch):
    module, _ = _pair(GROUPS["O(2)"], 2, N=8)
    x = torch.randn(2, module.in_type.size, 6, 7)
    grad = torch.randn_like(x)
    planes = torch.randn(3, module.A.shape[1], 10)
    expected = (*_value_and_gradient(module, x, grad), field_linear(planes, module.A))
    monkeypatch.setenv("EPDO_NATIVE", "0")
    with torch.autograd.profiler.profile() as prof:
        got = (*_value_and_gradient(module, x, grad), field_linear(planes, module.A))
    assert not {"epdo::fourier_relu", "epdo::field_linear"} & {e.name for e in prof.function_events}
    for u, v in zip(got, expected):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def test_bad_arguments_get_one_line_errors():
    module, _ = _pair(GROUPS["SO(2)"], 1, N=8)
    with pytest.raises(ValueError, match=r"fourier_relu: expected x \(B, fields \* d, H, W\).*got \(1, 7, 3, 3\)"):
        fourier_relu(torch.randn(1, 7, 3, 3), module.A, module.Ainv)
    with pytest.raises(ValueError, match="sample and unsample are constants; pass them detached"):
        fourier_relu(torch.randn(1, 5, 3, 3), module.A.clone().requires_grad_(), module.Ainv)
    with pytest.raises(ValueError, match=r"field_linear: expected x \(P, d, Q\) and matrix \(e, d\), got \(2, 4, 3\)"):
        field_linear(torch.randn(2, 4, 3), module.A)
    with pytest.raises(ValueError, match="epdo::fourier_relu: sample and unsample must be of x's dtype"):
        torch.ops.epdo.fourier_relu(torch.randn(1, 5, 3, 3, dtype=torch.float64), module.A, module.Ainv)
    with pytest.raises(TypeError, match="expected a GeometricTensor"):
        module(torch.randn(1, 5, 3, 3))


@pytest.mark.parametrize("backend", ["auto", "pytorch"])
def test_a_sampled_form_network_exports_with_either_backend(backend):
    torch.manual_seed(0)
    model = build_model(replace(PRESETS["so2"], form="sampled"))
    x = torch.rand(3, 1, 28, 28)
    model.train()
    model(x)  # batch statistics into the running ones
    model.eval()
    exported = model.export(backend)
    native = backend == "auto"
    assert ("field_linear" in exported.code) == ("fourier_relu" in exported.code) == native, exported.code
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-4)
