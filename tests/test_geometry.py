"""R2Conv's geometry (kernel size, padding, stride, dilation, padding mode, groups, bias) in both PDO layers, and the
one definition of the adaptive PDO that every other form of it is checked against."""

import itertools

import pytest
import torch
from escnn import gspaces, nn

from epdo.diffops import stencils
from epdo.kernels import PDOBasis
from epdo.nn import FieldBatchNorm, NeuralePDO, PDOConv, adaptive_pdo, export_network
from epdo.nn.functional import NORMALIZATIONS, compose_taps, pixelwise_pdo, stencil_key, tap_matrix
from epdo.nn.geometry import PADDING_MODES, Geometry

GEOMETRIES = [  # (kernel_size, padding, stride, dilation, padding_mode)
    (5, None, 1, 1, "zeros"),
    (5, 1, 1, 1, "zeros"),
    (5, 2, 1, 1, "reflect"),
    (3, 0, 1, 1, "zeros"),
    (5, 3, 1, 2, "circular"),
    (3, 1, 2, 1, "replicate"),
    (5, 2, 2, 2, "zeros"),
    (5, 4, 2, 2, "zeros"),
    (7, 3, 1, 1, "reflect"),
    (3, None, 1, 3, "zeros"),
    (5, 4, 3, 1, "replicate"),
]


def definition(x, coefficients, s, fields, geometry, normalization):
    """:func:`epdo.nn.functional.pixelwise_pdo` itself, differentiated by autograd."""
    batch, channels = x.shape[:2]
    per_part = coefficients.shape[1] // len(s)
    taps = compose_taps(coefficients, tap_matrix(s.to(x.dtype)), per_part)
    padded = geometry.pad(x)
    parts = padded.reshape(batch, channels // per_part, per_part, *padded.shape[2:])
    out = pixelwise_pdo(parts, taps, fields, normalization, geometry)[0]
    return out.reshape(batch, channels, *out.shape[3:])


def inputs(geometry, dtype=torch.float64, shape=(2, 2, 2, 3, 11, 10), seed=0):
    """``x (B, q g d, H, W)``, coefficients at the output pixels, the stencils, ``g``."""
    generator = torch.Generator().manual_seed(seed)
    b, q, g, d, h, w = shape
    s = stencils("fd", min(4, geometry.kernel_size - 1), geometry.kernel_size, dtype=dtype)
    out_h, out_w = geometry.output_size(h, w)
    x = torch.randn(b, q * g * d, h, w, dtype=dtype, generator=generator, requires_grad=True)
    a = torch.randn(b, g * d * len(s), out_h, out_w, dtype=dtype, generator=generator, requires_grad=True)
    return x, a, s, g


def arguments(geometry):
    return dict(
        padding=geometry.padding, stride=geometry.stride, dilation=geometry.dilation, padding_mode=geometry.padding_mode
    )


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_form_of_the_operator_is_the_definition(geometry, normalization):
    """The compiled operator (stride 1), the PyTorch path with its own backward, and the exported layer give the
    definition's values and gradients on every geometry."""
    geometry = Geometry(*geometry)
    x, a, s, g = inputs(geometry)
    probe = torch.randn(x.shape[0], x.shape[1], a.shape[2], a.shape[3], dtype=x.dtype)
    expected = definition(x, a, s, g, geometry, normalization)
    expected = (expected, *torch.autograd.grad(expected, (x, a), probe))
    backends = ["pytorch", "native"]
    for backend in backends:
        y = adaptive_pdo(x, a, s, g, **arguments(geometry), normalization=normalization, backend=backend)
        for got, want in zip((y, *torch.autograd.grad(y, (x, a), probe)), expected):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=f"{backend}: {geometry}")


@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[4], GEOMETRIES[5], GEOMETRIES[6]])
def test_gradcheck_on_geometries(geometry):
    geometry = Geometry(*geometry)
    x, a, s, g = inputs(geometry, shape=(1, 2, 1, 2, 7, 6))
    for backend in ["pytorch", "native"]:
        assert torch.autograd.gradcheck(
            lambda v, c, b=backend: adaptive_pdo(v, c, s, g, **arguments(geometry), backend=b), (x, a)
        )


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_the_definitions_geometry_is_conv2ds(geometry):
    """With the same coefficients at every pixel the adaptive PDO is a depthwise ``torch.nn.Conv2d`` of its
    normalized taps with the same padding, stride, dilation and padding mode: an independent check of where the taps
    read."""
    geometry = Geometry(*geometry)
    k, (out_h, out_w) = geometry.kernel_size, geometry.output_size(11, 10)
    s = stencils("gauss", min(4, k - 1), k, dtype=torch.float64)
    x = torch.randn(2, 6, 11, 10, dtype=torch.float64)
    per_channel = torch.randn(6, len(s), dtype=torch.float64)  # fields=6, d=1: one PDO per channel
    a = per_channel.reshape(1, -1, 1, 1).expand(2, -1, out_h, out_w)
    y = adaptive_pdo(x, a, s, 6, **arguments(geometry), normalization="l1", backend="pytorch")
    taps = (per_channel @ s.reshape(len(s), -1) * 0.2).reshape(6, 1, k, k)
    taps = taps / (taps.abs().sum(dim=(1, 2, 3), keepdim=True) + 0.01)
    conv = torch.nn.Conv2d(6, 6, k, geometry.stride, geometry.padding, geometry.dilation, groups=6, bias=False,
                           padding_mode=geometry.padding_mode).double()  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(taps)
        torch.testing.assert_close(y, conv(x), rtol=1e-12, atol=1e-12)


def conv2d_shape(k, padding, stride, dilation, mode, size):
    """``torch.nn.Conv2d``'s output shape on a ``(1, 1, size, size - 1)`` input (``padding=None``: same)."""
    p = dilation * (k // 2) if padding is None else padding
    conv = torch.nn.Conv2d(1, 4, k, stride, p, dilation, padding_mode=mode)
    return tuple(conv(torch.randn(1, 1, size, size - 1)).shape)


def r2conv_shape(k, padding, stride, dilation, mode, size):
    """escnn ``R2Conv``'s output shape, as :func:`conv2d_shape`."""
    gs = gspaces.rot2dOnR2(4)
    image, fields = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr])
    p = dilation * (k // 2) if padding is None else padding
    r2conv = nn.R2Conv(image, fields, k, p, stride, dilation, mode, initialize=False)
    return tuple(r2conv(nn.GeometricTensor(torch.randn(1, 1, size, size - 1), image)).tensor.shape)


def test_output_shapes_are_r2convs_and_conv2ds_for_every_combination():
    gs = gspaces.rot2dOnR2(4)
    image, fields = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr])
    size, checked = 9, 0
    for k, padding, stride, dilation, mode in itertools.product(
        (3, 5, 7), (None, 0, 1, 3), (1, 2, 3), (1, 2), PADDING_MODES
    ):
        arguments = dict(padding=padding, stride=stride, dilation=dilation, padding_mode=mode)
        layers = {PDOConv(image, fields, k, **arguments): image, NeuralePDO(fields, fields, k, **arguments): fields}
        if 2 * (dilation * (k // 2) if padding is None else padding) + size - 1 < dilation * (k - 1) + 1:
            for layer, in_type in layers.items():  # too small for any output pixel: Conv2d raises too
                with pytest.raises(ValueError, match="too small for kernel_size"):
                    layer(nn.GeometricTensor(torch.randn(1, in_type.size, size, size - 1), in_type))
            continue
        expected = conv2d_shape(k, padding, stride, dilation, mode, size)
        if (k, stride, dilation) in {(3, 1, 1), (5, 2, 1), (7, 3, 2), (5, 1, 2)} and padding != 1:  # R2Conv: slow
            assert r2conv_shape(k, padding, stride, dilation, mode, size) == expected
        for layer, in_type in layers.items():
            out = layer(nn.GeometricTensor(torch.randn(1, in_type.size, size, size - 1), in_type)).tensor
            assert tuple(out.shape) == expected, (type(layer).__name__, k, arguments)
            assert layer.evaluate_output_shape((1, in_type.size, size, size - 1)) == expected
        checked += 1
    assert checked > 200


def test_padding_modes_pad_once():
    """A non-zero padding mode pads the input once (reflect of a constant-per-row ramp: a double pad would reflect the
    padding itself), and PDOConv equals Conv2d with its filter and the same arguments."""
    gs = gspaces.rot2dOnR2(4)
    image, fields = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr])
    for mode in PADDING_MODES:
        layer = PDOConv(image, fields, 5, padding=2, stride=2, dilation=2, padding_mode=mode, bias=True)
        with torch.no_grad():
            for parameter in layer.bias_expansion.parameters():
                parameter.normal_()
        x = torch.randn(2, 1, 15, 14)
        weight, bias = layer.filter_and_bias()
        conv = torch.nn.Conv2d(1, 4, 5, 2, 2, 2, padding_mode=mode)
        with torch.no_grad():
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            torch.testing.assert_close(layer(nn.GeometricTensor(x, image)).tensor, conv(x))
            torch.testing.assert_close(layer.export()(x), conv(x))


def test_default_calls_are_same_geometry_and_kernel_size_sets_the_orders():
    gs = gspaces.rot2dOnR2(8)
    t = nn.FieldType(gs, [gs.regular_repr] * 2)
    assert NeuralePDO(t, t).geometry == Geometry(5, 2, 1, 1, "zeros") == PDOConv(t, t).geometry
    three = NeuralePDO(t, t, 3)
    assert three.basis == PDOBasis(max_order=2, size=3) and three.stencils.shape == (6, 3, 3)
    assert PDOConv(t, t, 7).basis == PDOBasis(size=7)
    assert PDOConv(t, t, 3, basis=PDOBasis("fd", max_order=1)).basis == PDOBasis("fd", max_order=1, size=3)
    with pytest.raises(ValueError, match="a 3x3 stencil holds derivatives of order <= 2, got max_order=4"):
        PDOBasis(size=3)


def test_stride_computes_only_at_the_output_pixels():
    """The generator reads the input only at the output pixels' centres: a stride-2 layer's generator sees a quarter
    of the pixels; with a static generator (the layer's initial state) the output is the stride-1 layer's subsampled.
    (An adapting generator differs: its per-field normalization takes statistics over the pixels it sees.)"""
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr] * 2)
    torch.manual_seed(0)
    strided = NeuralePDO(t, t, 5, padding=2, stride=2)
    dense = NeuralePDO(t, t)
    dense.load_state_dict(strided.state_dict())
    seen = []
    strided.generator_in.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].tensor.shape)))
    x = nn.GeometricTensor(torch.randn(2, t.size, 13, 13), t)
    y = strided(x).tensor
    assert seen == [(2, t.size, 7, 7)]
    torch.testing.assert_close(y, dense(x).tensor[..., ::2, ::2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["PDOConv", "NeuralePDO"])
def test_groups_and_bias(layer):
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr] * 4)
    cls = {"PDOConv": PDOConv, "NeuralePDO": NeuralePDO}[layer]
    grouped, plain = cls(t, t, 3, groups=2, bias=True), cls(t, t, 3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    weights = {"PDOConv": "filter_expansion", "NeuralePDO": "mix"}[layer]
    assert count(getattr(grouped, weights)) < count(getattr(plain, weights)) + 8  # half the map, plus the bias
    mix = grouped if layer == "PDOConv" else grouped.mix
    assert mix.groups == 2 and mix.bias_expansion is not None
    with pytest.raises(ValueError, match="groups=3 must divide the number of input fields \\(4\\)"):
        cls(t, t, groups=3)


def test_bad_arguments_are_one_line_each():
    gs = gspaces.rot2dOnR2(4)
    t = nn.FieldType(gs, [gs.regular_repr] * 2)
    cases = [
        (dict(kernel_size=4), "kernel_size must be an odd integer >= 3 \\(the stencil's width\\), got 4"),
        (dict(kernel_size=1), "kernel_size must be an odd integer >= 3 \\(the stencil's width\\), got 1"),
        (dict(padding=-1), "padding must be an integer >= 0 \\(pixels on every side\\), got -1"),
        (dict(stride=0), "stride must be an integer >= 1, got 0"),
        (dict(dilation=0), "dilation must be an integer >= 1, got 0"),
        (dict(padding_mode="mirror"), "padding_mode must be one of \\('zeros', 'reflect', 'replicate', 'circular'\\)"),
    ]
    for cls in (PDOConv, NeuralePDO):
        for arguments, message in cases:
            with pytest.raises(ValueError, match=f"^{cls.__name__}: {message}") as error:
                cls(t, t, **arguments)
            assert "\n" not in str(error.value)
        layer = cls(t, t, 5, padding=0)
        with pytest.raises(ValueError, match=f"^{cls.__name__}: an input of 3 x 3 pixels is too small for "):
            layer(nn.GeometricTensor(torch.randn(1, t.size, 3, 3), t))
        reflect = cls(t, t, 5, padding=4, padding_mode="reflect")
        with pytest.raises(ValueError, match="padding_mode='reflect' with padding=4 needs an input of at least 5"):
            reflect(nn.GeometricTensor(torch.randn(1, t.size, 4, 4), t))


def test_shapes_are_checked_before_the_compiled_code_runs():
    """Coefficients that do not fit the input are one ValueError at every entry point, never a read out of bounds."""
    s = stencils("gauss")
    x = torch.randn(8, 16, 16, 16)
    for bad in [(1, 240, 4, 4), (4, 240, 16, 16), (8, 240, 8, 16), (8, 240, 17, 16), (8, 225, 16, 16)]:
        with pytest.raises(ValueError, match="adaptive_pdo: coefficients"):
            adaptive_pdo(x, torch.randn(bad), s, 16)
        with pytest.raises(ValueError, match="epdo::adaptive_pdo: coefficients"):
            torch.ops.epdo.adaptive_pdo(x, torch.randn(bad), stencil_key(s), 16, False, 1)
    with pytest.raises(ValueError, match="every tensor must be of x's dtype"):
        torch.ops.epdo.adaptive_pdo(x, torch.randn(8, 240, 16, 16, dtype=torch.float64), stencil_key(s), 16, False, 1)
    a = torch.randn(8, 240, 16, 16)
    for dilation, stride in [(0, 1), (1, 0)]:
        with pytest.raises(ValueError, match=f"stride >= 1, got .* dilation={dilation} and stride={stride}"):
            torch.ops.epdo.adaptive_pdo(x, a, stencil_key(s), 16, False, dilation, stride)
    with pytest.raises(ValueError, match=r"at stride 2: expected \(B, fields \* d \* 15, ceil\(H / stride\)"):
        torch.ops.epdo.adaptive_pdo(x, a, stencil_key(s), 16, False, 1, 2)
    out, norm = torch.ops.epdo.adaptive_pdo(x, a, stencil_key(s), 16, False, 1)
    with pytest.raises(ValueError, match="expected a tensor of shape \\(8, 16, 16, 16\\), got \\(8, 16, 8, 16\\)"):
        torch.ops.epdo.adaptive_pdo_backward(x, a, norm, out, out[:, :, :8], stencil_key(s), 16, False, 1)


@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[4], GEOMETRIES[5]])
def test_export_compile_and_torch_export_keep_the_geometry(geometry):
    """``torch.compile(fullgraph=True)`` (forward and backward, training mode), ``export_network`` with both
    backends and ``torch.export`` of its result, on a network of both layers with the geometry."""
    k, padding, stride, dilation, mode = geometry
    gs = gspaces.rot2dOnR2(4)
    image, t = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr] * 2)
    arguments = dict(padding=padding, stride=stride, dilation=dilation, padding_mode=mode)
    torch.manual_seed(0)
    net = nn.SequentialModule(
        PDOConv(image, t, k, **arguments), FieldBatchNorm(t), nn.ReLU(t), NeuralePDO(t, t, k, **arguments)
    )
    with torch.no_grad():
        net[3].generator_norm.weight.normal_()
    x = torch.randn(2, 1, 21, 21)

    def run(module):
        y = module(x)
        return (y, *torch.autograd.grad(y.square().sum(), list(net.parameters())))

    eager = run(lambda v: net(nn.GeometricTensor(v, image)).tensor)
    compiled = torch.compile(lambda v: net(nn.GeometricTensor(v, image)).tensor, fullgraph=True, backend="aot_eager")
    for got, expected in zip(run(compiled), eager):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    net.eval()
    with torch.no_grad():
        expected = net(nn.GeometricTensor(x, image)).tensor
        for backend in ("auto", "pytorch"):
            plain = export_network(net, backend)
            torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
            program = torch.export.export(plain, (x,))
            torch.testing.assert_close(program.module()(x), expected, rtol=1e-5, atol=1e-5)


def tutorial_shaped(layer, gs):
    """A network of the shape of escnn's tutorial model (C8): a 7x7 lift with padding 1, 5x5 layers with padding 2
    and 1, antialiased average pooling with stride 2, group pooling; every convolution ``layer`` called with
    ``R2Conv``'s arguments."""
    image = nn.FieldType(gs, [gs.trivial_repr])
    a, b = nn.FieldType(gs, [gs.regular_repr] * 2), nn.FieldType(gs, [gs.regular_repr] * 3)
    lift = PDOConv if layer is NeuralePDO else layer  # a Neural ePDO on a trivial field is a static PDO
    return nn.SequentialModule(
        nn.MaskModule(image, 29, margin=1),
        lift(image, a, kernel_size=7, padding=1, bias=False),
        nn.InnerBatchNorm(a),
        nn.ReLU(a),
        layer(a, b, kernel_size=5, padding=2, bias=False),
        nn.InnerBatchNorm(b),
        nn.ReLU(b),
        nn.PointwiseAvgPoolAntialiased2D(b, sigma=0.66, stride=2),
        layer(b, b, kernel_size=5, padding=1, bias=False),
        nn.InnerBatchNorm(b),
        nn.ReLU(b),
        nn.GroupPooling(b),
    )


def test_a_network_of_escnns_tutorial_shape_takes_epdo_layers():
    """The same network with R2Conv, PDOConv and NeuralePDO layers called with the same arguments: the same output
    shape, invariant to quarter turns (the output of group pooling), and exported whole to its eval outputs."""
    gs = gspaces.rot2dOnR2(8)
    x = torch.randn(3, 1, 29, 29)
    shapes = set()
    for layer in (nn.R2Conv, PDOConv, NeuralePDO):
        torch.manual_seed(0)
        net = tutorial_shaped(layer, gs)
        if layer is NeuralePDO:
            with torch.no_grad():
                for module in net.modules():
                    if isinstance(module, NeuralePDO):
                        module.generator_norm.weight.normal_()
        y = net(nn.GeometricTensor(x, net.in_type)).tensor
        turned = net(nn.GeometricTensor(torch.rot90(x, 1, (2, 3)), net.in_type)).tensor
        torch.testing.assert_close(turned, torch.rot90(y, 1, (2, 3)), rtol=1e-4, atol=1e-4)
        shapes.add(tuple(y.shape))
        net.eval()
        with torch.no_grad():
            expected = net(nn.GeometricTensor(x, net.in_type)).tensor
            torch.testing.assert_close(export_network(net)(x), expected, rtol=1e-4, atol=1e-5)
    assert shapes == {(3, 3, 11, 11)}


def test_a_strided_1x1_map_and_a_residual_block():
    from epdo.nn import Conv1x1, ResidualBlock

    gs = gspaces.rot2dOnR2(4)
    a, b = nn.FieldType(gs, [gs.regular_repr] * 2), nn.FieldType(gs, [gs.regular_repr] * 3)
    shortcut = Conv1x1(a, b, stride=2)
    x = nn.GeometricTensor(torch.randn(2, a.size, 9, 8), a)
    expected = torch.nn.functional.conv2d(x.tensor, shortcut.filter_and_bias()[0], stride=2)
    torch.testing.assert_close(shortcut(x).tensor, expected)
    torch.testing.assert_close(shortcut.export()(x.tensor), expected)
    assert shortcut.evaluate_output_shape((2, a.size, 9, 8)) == (2, b.size, 5, 4)
    branch = nn.SequentialModule(nn.ReLU(a), PDOConv(a, b, 3, padding=1, stride=2))
    block = ResidualBlock(branch, shortcut)
    torch.testing.assert_close(block(x).tensor, branch(x).tensor + expected)
    with pytest.raises(ValueError, match="needs a shortcut between the types"):
        ResidualBlock(branch)
    with pytest.raises(ValueError, match="gives \\(2, 12, 5, 4\\) and the shortcut \\(2, 12, 9, 8\\)"):
        ResidualBlock(branch, Conv1x1(a, b))(x)
    with pytest.raises(ValueError, match="Conv1x1: stride must be a positive integer, got 0"):
        Conv1x1(a, b, stride=0)
