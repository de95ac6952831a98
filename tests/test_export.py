"""Whole networks exported to plain PyTorch: the eval-mode outputs, no escnn or epdo at run time, torch.export."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from escnn import gspaces, nn

from epdo.models import EquivariantClassifier, ModelConfig, build_model
from epdo.nn import FieldBatchNorm, FieldMaxPool, NeuralePDO, PDOConv
from epdo.nn.export import export_network

TINY = ModelConfig(group_order=4, widths=(3, 3, 4, 4, 4, 4))
NETWORKS = {
    "default": TINY,
    "quotient fields, fd": replace(TINY, fields="quotient", basis=replace(TINY.basis, discretization="fd")),
    "D4|5C4": replace(TINY, flip=True, widths=(2, 2, 2, 2, 2, 2)),
    "reference layers": replace(TINY, layer="reference"),
    "static PDOs": replace(TINY, layer="pdo"),
    "escnn": replace(TINY, layer="escnn"),
    "plain CNN": replace(TINY, layer="cnn"),
    "linear classifier": replace(TINY, head=0),
    "SO(2) fourier fields": ModelConfig(group_order=-1, fields="fourier", widths=(2, 2, 2, 2, 2, 2)),
    "O(2) fourier fields, escnn": ModelConfig(
        group_order=-1, fields="fourier", flip=True, layer="escnn", widths=(1, 1, 1, 1, 1, 1)
    ),
    "SO(2) gated": ModelConfig(group_order=-1, fields="fourier", nonlinearity="gated", widths=(1, 1, 1, 1, 1, 1)),
    "O(2) norm": ModelConfig(group_order=-1, fields="fourier", flip=True, nonlinearity="norm", widths=(1,) * 6),
}


def trained(config):
    """A network after a few training-mode passes (batch norm statistics away from their initial values)."""
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 1, 28, 28))
    return model.eval()


def module_by_module(model, x):
    """The eval-mode logits with every module run in turn (an equivariant network's inference otherwise runs its
    exported form)."""
    return model.classifier(model.features(x)) if isinstance(model, EquivariantClassifier) else model(x)


@pytest.mark.parametrize("name", list(NETWORKS))
@pytest.mark.parametrize("backend", ["auto", "pytorch"])
def test_every_network_exports_to_its_eval_outputs(name, backend):
    model = trained(NETWORKS[name])
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected = module_by_module(model, x)
        exported = model.export(backend)
        torch.testing.assert_close(exported(x), expected, rtol=1e-5, atol=1e-5)
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    uses_ops = any(op.startswith("epdo.") for op in ops)
    pdo = name not in ("escnn", "plain CNN", "static PDOs", "O(2) fourier fields, escnn")
    pooling = name in ("escnn", "static PDOs")  # their max pooling is the compiled operator too
    fourier_relu = "fourier fields" in name  # and so is the ReLU of Fourier fields
    assert uses_ops == (backend == "auto" and (pdo or pooling or fourier_relu))
    modules = {type(m).__module__.split(".")[0] for m in exported.modules()}
    assert modules <= {"torch"}, modules  # nothing of escnn or epdo is left in the module tree
    norms = torch.nn.modules.batchnorm._BatchNorm  # BatchNorm1d (the classifier), 2d, 3d (FieldBatchNorm's view)
    assert not any(isinstance(m, norms) for m in exported.modules())  # every kind folded into the map before it
    assert not any("batch_norm" in str(node.target) for node in exported.graph.nodes)  # nor left as a function


def test_the_exported_network_runs_without_escnn_and_epdo(tmp_path):
    model = trained(TINY)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        expected = module_by_module(model, x)
    torch.save(dict(model=model.export("pytorch"), x=x, expected=expected), tmp_path / "exported.pt")
    code = (
        "import importlib.abc, sys\n"
        "class Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('escnn', 'epdo'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Blocked())\n"
        "import torch\n"
        f"saved = torch.load({str(tmp_path / 'exported.pt')!r}, weights_only=False)\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(saved['model'](saved['x']), saved['expected'], rtol=1e-5, atol=1e-5)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('escnn', 'epdo')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("backend", ["auto", "pytorch"])
def test_the_exported_network_goes_through_torch_export(backend):
    model = trained(TINY)
    exported = model.export(backend)
    x = torch.rand(2, 1, 28, 28)
    program = torch.export.export(exported, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), exported(x), rtol=1e-6, atol=1e-6)


def test_a_users_network_of_escnn_and_epdo_layers():
    gs = gspaces.rot2dOnR2(4)
    image = nn.FieldType(gs, [gs.trivial_repr])
    fields = nn.FieldType(gs, [gs.regular_repr] * 3)
    network = nn.SequentialModule(
        nn.R2Conv(image, fields, 5, padding=2),
        nn.InnerBatchNorm(fields),
        nn.ReLU(fields),
        NeuralePDO(fields, fields),
        FieldBatchNorm(fields),
        FieldMaxPool(fields),
        nn.ReLU(fields),
        PDOConv(fields, fields, bias=True),
        nn.PointwiseMaxPool2D(fields, 2),
        nn.GroupPooling(fields),
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(3):
            network(nn.GeometricTensor(torch.rand(8, 1, 16, 16), image))
    network.eval()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected = network(nn.GeometricTensor(x, image)).tensor
        plain = export_network(network)
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    assert not network.training  # the network stays as it was
    network.train()
    export_network(network)
    assert network.training
    with pytest.raises(ValueError, match="backend must be one of"):
        export_network(network, backend="fast")


def test_escnns_norm_and_gated_modules_on_unsorted_fields():
    """Fields of several sizes out of size order, a label's fields apart: each bias and gate stays with its field."""
    gs = gspaces.rot2dOnR2(-1, maximum_frequency=3)
    psi = gs.fibergroup.irrep
    gated = nn.FieldType(gs, [psi(2), psi(0), psi(0), psi(0), psi(1), psi(0)])
    gates = ["gated", "gate", "gated", "gate", "gated", "gate"]
    normed = nn.FieldType(gs, [psi(2), psi(0), psi(1), psi(3)])
    torch.manual_seed(0)
    norm = nn.NormNonLinearity(normed, "n_relu")
    with torch.no_grad():
        norm.log_bias.normal_()
    mixed = nn.FieldType(gs, gated.representations[:3] + normed.representations + gated.representations[3:])
    labels = ["a"] * 3 + ["b"] * 4 + ["a"] * 3
    modules = [
        nn.GatedNonLinearity1(gated, gates=gates),
        norm,
        nn.NormPool(normed),
        nn.MultipleModule(mixed, labels, [(nn.GatedNonLinearity1(gated, gates=gates), "a"), (norm, "b")]),
    ]
    for module in modules:
        x = torch.randn(2, module.in_type.size, 5, 5)
        with torch.no_grad():
            expected = module(nn.GeometricTensor(x, module.in_type)).tensor
            torch.testing.assert_close(export_network(module)(x), expected, rtol=1e-6, atol=1e-6)


class _Branching(torch.nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # control flow on values: fx cannot trace it


def test_a_module_that_cannot_be_traced_is_named():
    network = torch.nn.Sequential(torch.nn.ReLU(), _Branching())
    with pytest.raises(TypeError, match=r"export: cannot trace _Branching \(test_export\) into plain PyTorch"):
        export_network(network)


def test_a_users_module_with_its_own_forward_exports_whole():
    """A ``torch.nn.Module`` that wraps its input in a GeometricTensor, calls escnn and epdo modules, takes ``.tensor``
    and ends in a plain head (escnn's tutorial style) exports to one plain graph equal to its eval outputs; a forward
    that branches on values is refused in one line."""
    from epdo.nn import NeuralePDO, PDOConv, export_network

    gs = gspaces.rot2dOnR2(4)
    image, fields = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr] * 2)

    class Network(torch.nn.Module):
        def __init__(self, branching=False):
            super().__init__()
            self.branching = branching
            self.body = nn.SequentialModule(PDOConv(image, fields, 5, padding=1), nn.InnerBatchNorm(fields),
                                            nn.ReLU(fields), NeuralePDO(fields, fields, 3, stride=2))  # fmt: skip
            self.pool = nn.GroupPooling(fields)
            self.head = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))

        def forward(self, x):
            y = self.pool(self.body(nn.GeometricTensor(x, image))).tensor
            if self.branching and y.sum() > 0:
                y = -y
            return self.head(y.amax(dim=(2, 3)))

    torch.manual_seed(0)
    network = Network()
    x = torch.rand(4, 1, 15, 15)
    network(x)
    network.eval()
    with torch.no_grad():
        plain = export_network(network)
        torch.testing.assert_close(plain(x), network(x), rtol=1e-5, atol=1e-5)
    assert {type(m).__module__.split(".")[0] for m in plain.modules()} == {"torch"}
    assert network.body[0].training is False and isinstance(network(x), torch.Tensor)  # left as it was, escnn intact
    with pytest.raises(TypeError, match="^export: cannot trace Network's forward into plain PyTorch: "):
        export_network(Network(branching=True))
