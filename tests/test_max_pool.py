import pytest
import torch
import torch.nn.functional as F
from escnn import gspaces, nn

from epdo.equivariance import equivariance_errors
from epdo.nn import FieldMaxPool, max_pool2x2
from epdo.nn.native import GRAIN_SIZE


def _pool_and_gradient(pool, x, grad):
    x = x.detach().requires_grad_()
    out = pool(x)
    return out, torch.autograd.grad(out, x, grad)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [(6, 8), (7, 9), (5, 70)])  # one vector or more per row, odd sizes
def test_equals_pytorch_bit_for_bit_with_ties_odd_sizes_and_nan(dtype, size):
    torch.manual_seed(0)
    x = torch.randn(3, 5, *size, dtype=dtype).relu()  # zeros: ties inside windows
    x[0, 0, 0, :2] = 1.5  # a tie of the maximum: the first one takes the gradient
    x[1, 2, 1, 1] = float("nan")
    x[1, 2, 0, 0] = float("nan")  # two NaNs in one window: the last one is the maximum
    grad = torch.randn(3, 5, size[0] // 2, size[1] // 2, dtype=dtype)
    got = _pool_and_gradient(max_pool2x2, x, grad)
    expected = _pool_and_gradient(lambda t: F.max_pool2d(t, 2), x, grad)
    for u, v in zip(got, expected):
        torch.testing.assert_close(u, v, rtol=0, atol=0, equal_nan=True)


def test_the_compiled_kernel_runs_and_the_thread_count_does_not_change_the_result():
    x = torch.randn(2, 16, 32, 40)
    assert x.numel() >= GRAIN_SIZE
    grad = torch.randn(2, 16, 16, 20)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with torch.autograd.profiler.profile() as prof:
                results.append(_pool_and_gradient(max_pool2x2, x, grad))
            assert {"epdo::max_pool2x2", "epdo::max_pool2x2_backward"} <= {e.name for e in prof.function_events}
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_without_the_compiled_kernel_pytorch_pools(monkeypatch):
    x, grad = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)
    expected = _pool_and_gradient(max_pool2x2, x, grad)
    monkeypatch.setenv("EPDO_NATIVE", "0")
    with torch.autograd.profiler.profile() as prof:
        got = _pool_and_gradient(max_pool2x2, x, grad)
    assert "epdo::max_pool2x2" not in {e.name for e in prof.function_events}
    for u, v in zip(got, expected):
        assert torch.equal(u, v)


def test_the_operator_is_registered_with_fake_and_autograd():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    torch.library.opcheck(torch.ops.epdo.max_pool2x2.default, (x,))
    torch.library.opcheck(torch.ops.epdo.max_pool2x2_backward.default, (torch.randn(2, 3, 3, 3), *_argmax(x)))


def _argmax(x):
    return torch.ops.epdo.max_pool2x2(x)[1], x.shape[2], x.shape[3]


@pytest.mark.parametrize("gspace", [gspaces.rot2dOnR2(4), gspaces.flipRot2dOnR2(4)], ids=["C4", "D4"])
def test_field_max_pool_is_equivariant_on_the_grid(gspace):
    quotient = gspace.quotient_repr((None, 2)) if gspace.flips_order else gspace.quotient_repr(2)
    ftype = nn.FieldType(gspace, [gspace.regular_repr, quotient, gspace.trivial_repr])
    pool = FieldMaxPool(ftype)
    x = nn.GeometricTensor(torch.randn(2, ftype.size, 12, 12), ftype)
    assert max(equivariance_errors(pool, x).values()) < 1e-6
    assert pool(x).tensor.shape == pool.evaluate_output_shape(x.tensor.shape) == (2, ftype.size, 6, 6)
    assert torch.equal(pool.export()(x.tensor), pool(x).tensor)


def test_field_max_pool_rejects_fields_it_cannot_pool():
    gspace = gspaces.rot2dOnR2(8)
    with pytest.raises(ValueError, match="representation 'irrep_1' does not permute channels"):
        FieldMaxPool(nn.FieldType(gspace, [gspace.irrep(1)]))
    with pytest.raises(TypeError, match="in_type must be an escnn FieldType"):
        FieldMaxPool([gspace.regular_repr])
    pool = FieldMaxPool(nn.FieldType(gspace, [gspace.regular_repr]))
    with pytest.raises(ValueError, match="expected input of type"):
        pool(nn.GeometricTensor(torch.randn(1, 16, 4, 4), nn.FieldType(gspace, [gspace.regular_repr] * 2)))
    for shape in ((8, 4, 4), (1, 1, 1, 5)):
        expected = rf"max_pool2x2: expected .* H, W >= 2, got \({', '.join(map(str, shape))}\)"
        with pytest.raises(ValueError, match=expected):
            max_pool2x2(torch.randn(shape))
