"""The compiled adaptive-PDO kernel (epdo.nn.native) against the PyTorch path, and its build and fallback."""

import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

from epdo.diffops import stencils
from epdo.nn import adaptive_pdo, native
from epdo.nn.functional import NORMALIZATIONS, stencil_key
from epdo.nn.native import GRAIN_SIZE, op

# (batch, partitions q, fields g, field size d, height, width, discretization, max_order, stencil size)
SHAPES = [
    (2, 3, 2, 4, 9, 11, "fd", 4, 5),
    (1, 1, 1, 1, 28, 28, "gauss", 4, 5),  # one channel; blocks of whole rows end inside the image
    (3, 2, 4, 2, 13, 7, "rbffd", 4, 5),
    (1, 2, 1, 3, 3, 2, "fd", 4, 5),  # narrower and lower than the stencil: every tap reads outside
    (2, 5, 1, 2, 1, 1, "fd", 4, 5),  # single pixels (deep layers after pooling)
    (1, 3, 2, 2, 2, 2, "gauss", 4, 5),
    (2, 1, 2, 8, 6, 40, "fd", 2, 3),  # 3x3 stencils of orders 0..2
    (1, 2, 2, 2, 10, 9, "gauss", 4, 7),
]


def _inputs(shape, dtype):
    b, q, g, d, h, w, discretization, max_order, size = shape
    s = stencils(discretization, max_order, size, dtype=dtype)
    x = torch.randn(b, q * g * d, h, w, dtype=dtype, requires_grad=True)
    a = torch.randn(b, g * d * s.shape[0], h, w, dtype=dtype, requires_grad=True)
    return x, a, s, g


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_native_equals_pytorch_in_float32(shape, normalization):
    x, a, s, g = _inputs(shape, torch.float32)
    grad = torch.randn(x.shape)
    results = []
    for backend in ("native", "pytorch"):
        y = adaptive_pdo(x, a, s, g, normalization=normalization, backend=backend)
        results.append((y, *torch.autograd.grad(y, (x, a), grad)))
    for got, expected in zip(*results):
        scale = expected.abs().max()
        assert (got - expected).abs().max() <= 1e-5 * scale, (got - expected).abs().max() / scale


@pytest.mark.parametrize("dilation, stride", [(2, 1), (3, 1), (1, 2), (2, 2), (1, 3)])
@pytest.mark.parametrize("shape", [(1, 2, 1, 2, 150, 40, "gauss", 4, 5), SHAPES[2], SHAPES[5]])
def test_native_dilated_and_strided_taps_equal_pytorch(shape, dilation, stride):
    """Taps ``dilation`` apart and PDOs on every ``stride``-th pixel, computed by the kernel itself: blocks of rows
    (150 x 40: several at every stride), an image smaller than the reach, 3x3 stencils; values and gradients as the
    PyTorch path's."""
    x, a, s, g = _inputs(shape, torch.float64)
    a = a[..., ::stride, ::stride].detach().requires_grad_(True)  # the coefficients at the output pixels
    results = []
    for backend in ("native", "pytorch"):
        y = adaptive_pdo(x, a, s, g, dilation=dilation, stride=stride, backend=backend)
        grad = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(0))
        results.append((y, *torch.autograd.grad(y, (x, a), grad)))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("shape", [SHAPES[3], (1, 2, 2, 2, 6, 5, "fd", 2, 3)])
def test_native_gradcheck_float64(shape, normalization):
    x, a, s, g = _inputs(shape, torch.float64)
    assert torch.autograd.gradcheck(
        lambda v, c: adaptive_pdo(v, c, s, g, normalization=normalization, backend="native"), (x, a)
    )


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_any_stencil_set_is_compiled_into_its_own_kernel(normalization):
    """The kernel is compiled per stencil set: a user's stencils (here random 3x3 ones with unused taps and zero
    entries) give the PyTorch path's result and gradients, and each set gets its own library."""
    generator = torch.Generator().manual_seed(3)
    results, libraries = {}, []
    for name in ("random", "fd"):
        if name == "random":
            s = torch.randn(6, 3, 3, generator=generator, dtype=torch.float64)  # the shape of fd's below
            s[:, 0, :] = 0  # taps (0, v) unused by every operator
            s[1, 1, 1] = s[2, 2, 0] = 0
        else:
            s = stencils("fd", 2, 3, dtype=torch.float64)
        x = torch.randn(2, 2 * 2 * 3, 7, 6, generator=generator, dtype=torch.float64, requires_grad=True)
        a = torch.randn(2, 2 * 3 * s.shape[0], 7, 6, generator=generator, dtype=torch.float64, requires_grad=True)
        grad = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        for backend in ("native", "pytorch"):
            y = adaptive_pdo(x, a, s, 2, normalization=normalization, backend=backend)
            results[name, backend] = (y, *torch.autograd.grad(y, (x, a), grad))
        for got, expected in zip(results[name, "native"], results[name, "pytorch"]):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        libraries.append(native.load(torch.float64, s.reshape(s.shape[0], -1), required=True))
    assert libraries[0] is not libraries[1]


def test_stencils_that_require_grad_get_their_gradient():
    """The kernel has the stencils compiled in: learnable stencils take the PyTorch path under "auto" (so their
    gradient is right) and are refused by "native"."""
    x, a, s, g = _inputs(SHAPES[6], torch.float64)
    learnable = s.clone().requires_grad_()
    y = adaptive_pdo(x, a, learnable, g)
    (got,) = torch.autograd.grad(y.square().sum(), learnable)
    (expected,) = torch.autograd.grad(adaptive_pdo(x, a, learnable, g, backend="pytorch").square().sum(), learnable)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="no gradient.*require grad"):
        adaptive_pdo(x, a, learnable, g, backend="native")


def test_backend_choice_is_checked():
    x, a, s, g = _inputs(SHAPES[0], torch.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        adaptive_pdo(x, a, s, g, backend="fused")
    with pytest.raises(RuntimeError, match="backend='native' is unavailable.*float16"):
        adaptive_pdo(x.half(), a.half(), s.half(), g, backend="native")


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, env=env, timeout=300
    )  # fmt: skip


FALLBACK = """
import torch
from epdo.diffops import stencils
from epdo.nn import adaptive_pdo
x, a = torch.randn(1, 4, 6, 6), torch.randn(1, 60, 6, 6)
expected = adaptive_pdo(x, a, stencils("fd"), 1, backend="pytorch")
torch.testing.assert_close(adaptive_pdo(x, a, stencils("fd"), 1), expected)
torch.testing.assert_close(adaptive_pdo(x, a, stencils("fd"), 1), expected)
print("ok")
"""


def test_without_a_compiler_the_pytorch_path_runs_with_one_warning(tmp_path):
    env = dict(os.environ, CC="no-such-compiler", EPDO_CACHE_DIR=str(tmp_path))
    out = _run(FALLBACK, env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    warned = [line for line in out.stderr.splitlines() if "RuntimeWarning" in line]
    assert len(warned) == 1 and "no C compiler: 'no-such-compiler'" in warned[0], out.stderr


def test_disabled_on_purpose_the_pytorch_path_runs_silently(monkeypatch):
    monkeypatch.setenv("EPDO_NATIVE", "0")
    x, a = torch.randn(1, 4, 6, 6), torch.randn(1, 60, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.load(torch.float32, op.key_stencils(stencil_key(stencils("fd"))).float()) is None
        got = adaptive_pdo(x, a, stencils("fd"), 1)
    torch.testing.assert_close(got, adaptive_pdo(x, a, stencils("fd"), 1, backend="pytorch"), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="EPDO_NATIVE=0"):
        adaptive_pdo(x, a, stencils("fd"), 1, backend="native")


def test_the_build_is_cached_and_atomic(tmp_path, monkeypatch):
    """A fresh process builds into an empty cache, one finished file; this process then loads that library from the
    cache, without a build."""
    out = _run(FALLBACK, dict(os.environ, EPDO_CACHE_DIR=str(tmp_path)))
    assert out.returncode == 0 and "Warning" not in out.stderr, out.stderr
    built = sorted((tmp_path / "native").iterdir())
    names = [p.name for p in built]
    assert len(names) == 1 and names[0].startswith("adaptive_pdo_float_") and names[0].endswith(".so"), names
    monkeypatch.setenv("EPDO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_build", lambda *args: pytest.fail("the cached library was built again"))
    native._adaptive_pdo_library.cache_clear()  # forget the libraries this process loaded
    try:
        values = op.key_stencils(stencil_key(stencils("fd"))).float()
        assert native.load(torch.float32, values, required=True) is not None
    finally:
        native._adaptive_pdo_library.cache_clear()  # loaded from tmp_path: not kept for later tests
    assert sorted((tmp_path / "native").iterdir()) == built


def test_the_build_key_covers_the_headers_the_sources_include(tmp_path, monkeypatch):
    """An edited ``vectors.h`` must build new libraries, not load ones compiled from the old header."""
    assert all(f'#include "{h.name}"' in native.ADAPTIVE_PDO_SOURCE.read_text() for h in native.HEADERS)
    header = tmp_path / "vectors.h"
    monkeypatch.setattr(native, "HEADERS", (header,))
    keys = []
    for text in ("/* one */", "/* two */"):
        header.write_text(text)
        keys.append(native._build_key(native.MAX_POOL_SOURCE, ["cc", "-O3"]))
    assert keys[0] != keys[1]


def test_the_build_key_is_the_same_for_a_copy_of_the_package_elsewhere(tmp_path):
    """A clone or reinstall at another path loads the libraries built for the same sources."""
    copy = tmp_path / native.MAX_POOL_SOURCE.name
    copy.write_bytes(native.MAX_POOL_SOURCE.read_bytes())
    keys = [native._build_key(source, ["cc", "-O3", str(source), "-lm"]) for source in (native.MAX_POOL_SOURCE, copy)]
    assert keys[0] == keys[1]
    copy.write_text(copy.read_text() + "/* edited */")
    assert native._build_key(copy, ["cc", "-O3", str(copy), "-lm"]) != keys[0]


def test_native_kernel_is_faster_than_the_pytorch_path():
    """Not a benchmark (those are in benchmarks/): a guard that the compiled path is not silently the slow one, as a
    ratio of medians over interleaved rounds in one run, with a generous bound (it is several times faster)."""
    x, a, s, g = _inputs((4, 4, 4, 8, 28, 28, "fd", 4, 5), torch.float32)
    grad = torch.randn(x.shape)
    times = {"native": [], "pytorch": []}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(6):  # the first round warms up
            for backend, kept in times.items():
                start = time.perf_counter()
                torch.autograd.grad(adaptive_pdo(x, a, s, g, backend=backend), (x, a), grad)
                kept.append(time.perf_counter() - start)
    native, pytorch = (sorted(kept[1:])[2] for kept in times.values())
    assert native < pytorch, (native, pytorch)


def test_the_operator_is_registered_with_fake_and_autograd():
    """``torch.ops.epdo.adaptive_pdo``: schema, fake (meta) implementation and autograd formula consistent with the
    real kernel (``torch.library.opcheck``)."""
    x, a, s, g = _inputs(SHAPES[0], torch.float64)
    key = stencil_key(s)
    for l1, dilation in [(False, 1), (True, 1), (False, 2)]:
        torch.library.opcheck(torch.ops.epdo.adaptive_pdo.default, (x, a, key, g, l1, dilation))
    strided = a[..., ::2, ::2].detach().contiguous().requires_grad_(True)
    torch.library.opcheck(torch.ops.epdo.adaptive_pdo.default, (x, strided, key, g, False, 2, 2))
    # calls (and exported programs) of the schema without the dilation keep working: it defaults to 1
    assert torch.equal(
        torch.ops.epdo.adaptive_pdo(x, a, key, g, False)[0], torch.ops.epdo.adaptive_pdo(x, a, key, g, False, 1)[0]
    )


def _graph_kept(graphs: list):
    """A ``torch.compile`` backend: ``aot_eager``, keeping the code of each graph dynamo captures in ``graphs``."""
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(graph_module, inputs):
        graphs.append(graph_module.code)
        return aot_eager(graph_module, inputs)

    return backend


def test_a_network_compiles_without_graph_breaks_and_matches_eager():
    """``torch.compile(fullgraph=True)`` of a network with NeuralePDO layers on the CPU (the compiled kernel as an
    operator), forward and backward, and of the same layers on the PyTorch path (as on CUDA); ``aot_eager`` traces
    what inductor would compile, without its code generation (benchmarks/compile_check.py runs inductor)."""
    from epdo.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(group_order=4, widths=(4, 4, 4, 4, 4, 4), dropout=0.0))
    x = torch.rand(4, 1, 28, 28)
    eager = model(x)
    eager.square().sum().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend=_graph_kept(graphs := []))
    got = compiled(x)
    got.square().sum().backward()
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e, rtol=1e-5, atol=1e-5)
    assert len(graphs) == 1 and "epdo.adaptive_pdo" in graphs[0] and "epdo.max_pool2x2" in graphs[0]
    torch._dynamo.reset()
    with torch.no_grad():
        model.eval()
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


def test_the_pytorch_path_compiles_without_graph_breaks():
    """On CUDA the layers run the PyTorch path; it must trace into one graph for inductor (Triton on a GPU)."""
    x, a, s, g = _inputs(SHAPES[0], torch.float32)

    def step(x, a):
        return adaptive_pdo(x, a, s, g, backend="pytorch").square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    got = torch.autograd.grad(compiled(x, a), (x, a))
    expected = torch.autograd.grad(step(x, a), (x, a))
    for u, v in zip(got, expected):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)


def test_the_thread_count_does_not_change_the_result():
    """Above the grain size the operator runs on torch's threads (below it on one): the same numbers either way."""
    x, a, s, g = _inputs((2, 1, 2, 8, 6, 40, "fd", 2, 3), torch.float32)
    assert a.numel() >= GRAIN_SIZE
    grad = torch.randn(x.shape)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            y = adaptive_pdo(x, a, s, g, backend="native")
            results.append((y, *torch.autograd.grad(y, (x, a), grad)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)
