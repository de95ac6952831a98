"""Write notebooks/*.ipynb from the cell sources below and execute them, so that they are committed with their
outputs (plots and printed tables visible when browsing).

``make notebooks`` (or ``python notebooks/build_notebooks.py``) after editing a cell; tests/test_notebooks.py checks
that the committed notebooks hold these sources, runs them again from scratch and checks what they print.
"""

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent

QUICKSTART = [
    (
        "md",
        "# epdo quickstart\n\nBuild an equivariant network from escnn field types with static `PDOConv` "
        "and spatially adaptive `NeuralePDO` layers, look at the derivative stencils, train briefly, and check "
        "predictions on rotated inputs. Sizes are tiny so that the notebook runs in a minute on 2 CPU cores.",
    ),
    (
        "code",
        "import torch\nimport matplotlib.pyplot as plt\nfrom escnn import gspaces, nn\n\n"
        "from epdo.diffops import stencils, multi_indices\nfrom epdo.nn import PDOBasis, PDOConv, NeuralePDO\n"
        "from epdo.data import load_dataset, DatasetError\n"
        "from epdo.models import ModelConfig, build_model, count_parameters\n"
        "torch.manual_seed(0)",
    ),
    (
        "md",
        "## Derivative stencils\n\nFifteen 5x5 stencils, orders 0..4, ordered `[d_x^k, ..., d_y^k]`, x to the right "
        "and y upward (escnn's convention).",
    ),
    (
        "code",
        "fig, axes = plt.subplots(3, 15, figsize=(15, 3.4))\n"
        "for row, discretization in enumerate(['fd', 'gauss', 'rbffd']):\n"
        "    for col, (s, (i, j)) in enumerate(zip(stencils(discretization), multi_indices(4))):\n"
        "        axes[row, col].imshow(s, cmap='RdBu', vmin=-abs(s).max(), vmax=abs(s).max())\n"
        "        axes[row, col].set_xticks([])\n"
        "        axes[row, col].set_yticks([])\n"
        "        if row == 0:\n"
        "            axes[row, col].set_title(f'dx^{i} dy^{j}', fontsize=7)\n"
        "    axes[row, 0].set_ylabel(discretization)\nplt.tight_layout()",
    ),
    ("md", "## A network of PDO layers on escnn field types"),
    (
        "code",
        "gs = gspaces.rot2dOnR2(8)\nimage = nn.FieldType(gs, [gs.trivial_repr])\n"
        "feat = nn.FieldType(gs, [gs.regular_repr] * 4)\n"
        "net = nn.SequentialModule(PDOConv(image, feat), nn.InnerBatchNorm(feat), nn.ReLU(feat),\n"
        "                          NeuralePDO(feat, feat), nn.ReLU(feat),\n"
        "                          NeuralePDO(feat, feat, basis=PDOBasis('fd')))\n"
        "x = nn.GeometricTensor(torch.rand(2, 1, 28, 28), image)\n"
        "y = net(x)\nprint(y.tensor.shape, count_parameters(net), 'parameters')",
    ),
    (
        "md",
        "## Train briefly\n\nOn rotated Fashion-MNIST when Debian's `dataset-fashion-mnist` is installed, "
        "else on the synthetic data set.",
    ),
    (
        "code",
        "try:\n    train, test = load_dataset('fashion-rot')\nexcept DatasetError as err:\n"
        "    print(err)\n    train, test = load_dataset('synthetic')\n"
        "train, test = train.limit(1024), test.limit(256)\n"
        "model = build_model(ModelConfig(group_order=4, widths=(4, 4, 4, 4, 4, 4)))\n"
        "optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)\n"
        "for epoch in range(3):\n    model.train()\n"
        "    for start in range(0, len(train), 64):\n"
        "        xb, yb = train.images[start:start + 64], train.labels[start:start + 64]\n"
        "        loss = torch.nn.functional.cross_entropy(model(xb), yb)\n"
        "        optimizer.zero_grad()\n"
        "        loss.backward()\n"
        "        optimizer.step()\n"
        "    print(f'epoch {epoch + 1}: last batch loss {loss.item():.3f}')",
    ),
    (
        "md",
        "## Predictions on rotated inputs\n\nThe model is invariant to 90-degree rotations of its input: the "
        "logits agree to float precision, while they differ from image to image (the spread printed first: an "
        "invariance of outputs that were the same for every image would prove nothing).",
    ),
    (
        "code",
        "model.eval()\nwith torch.no_grad():\n"
        "    error = (model(test.images).argmax(1) != test.labels).float().mean().item()\n"
        "    print(f'test error on {len(test)} images: {100 * error:.1f}% (chance: 90%)')\n"
        "    xb = test.images[:8]\n    logits = model(xb)\n"
        "    print(f'spread of the logits across images: {logits.std(0).mean():.2e}')\n"
        "    for k in (1, 2, 3):\n        rotated = model(torch.rot90(xb, k, dims=(2, 3)))\n"
        "        print(f'{90 * k:3d} deg: max logit change {(rotated - logits).abs().max():.1e}')\n"
        "print('predictions', logits.argmax(1).tolist(), 'labels', test.labels[:8].tolist())\n"
        "fig, axes = plt.subplots(1, 4, figsize=(8, 2))\n"
        "for k, ax in enumerate(axes):\n    ax.imshow(torch.rot90(xb[0, 0], k), cmap='gray')\n    ax.axis('off')\n"
        "    ax.set_title(f'pred {model(torch.rot90(xb[:1], k, dims=(2, 3))).argmax().item()}')",
    ),
]

EQUIVARIANCE = [
    (
        "md",
        "# Checking equivariance\n\nExact grid symmetries (90-degree rotations, flips) against off-grid angles, "
        "per layer and per model, for the fd, gauss and rbffd discretizations. Adapt the cells to your layers.",
    ),
    (
        "code",
        "import math\nimport torch\nimport matplotlib.pyplot as plt\nfrom escnn import gspaces, nn\n\n"
        "from epdo.equivariance import equivariance_errors, grid_elements, smooth_field, relative_error\n"
        "from epdo.nn import NeuralePDO, PDOBasis, PDOConv\nfrom epdo.models import ModelConfig, build_model\n"
        "from epdo.data import rotate_batch\nfrom epdo.training import batch_norms\ntorch.manual_seed(0)",
    ),
    (
        "md",
        "## Per layer\n\n`equivariance_errors(layer, x, elements)` compares `layer(g.x)` with `g.layer(x)` "
        "using escnn's `GeometricTensor.transform`. On grid elements it is exact (float32 rounding); off the grid "
        "the interpolation and the discretization both contribute, so compare inside a disk (`margin`).",
    ),
    (
        "code",
        "gs = gspaces.flipRot2dOnR2(8)\nt = nn.FieldType(gs, [gs.regular_repr] * 2)\nx = smooth_field(t, 2, 29)\n"
        "rows = {}\nfor discretization in ['fd', 'gauss', 'rbffd']:\n"
        "    basis = PDOBasis(discretization)\n"
        "    for name, layer in [('NeuralePDO', NeuralePDO(t, t, basis=basis)),\n"
        "                        ('PDOConv', PDOConv(t, t, basis=basis))]:\n"
        "        errors = equivariance_errors(layer, x, gs.fibergroup.elements, margin=4)\n"
        "        rows[f'{name} {discretization}'] = errors\n"
        "grid = grid_elements(gs)\nfor name, errors in rows.items():\n"
        "    exact = max(v for e, v in errors.items() if e in grid)\n"
        "    off = max(v for e, v in errors.items() if e not in grid)\n"
        "    print(f'{name:>18}: grid {exact:.1e}   off-grid (45 deg) {off:.3f}')",
    ),
    (
        "md",
        "## Per model\n\nWhole models are invariant: rotate the input image by any angle and compare the "
        "invariant features. Batch-norm statistics are populated first, so that eval mode is not degenerate.",
    ),
    (
        "code",
        "images = torch.rand(8, 1, 28, 28)\n"
        "yy, xx = torch.meshgrid(torch.arange(28) - 13.5, torch.arange(28) - 13.5, indexing='ij')\n"
        "images = images * ((yy**2 + xx**2) < 14**2)\n"
        "angles = [15.0 * i for i in range(13)]\nplt.figure(figsize=(6, 3.5))\n"
        "for dis in ['fd', 'gauss', 'rbffd']:\n"
        "    widths = (2, 2, 2, 2, 2, 2)\n"
        "    config = ModelConfig(group_order=8, widths=widths, basis=PDOBasis(dis), dropout=0)\n"
        "    model = build_model(config)\n"
        "    for m in batch_norms(model):\n        m.momentum = None\n"
        "    with torch.no_grad():\n        model.train()\n        model(images)\n        model.eval()\n"
        "        ref = model.features(images)\n"
        "        turn = [rotate_batch(images, torch.full((8,), math.radians(a)), mode='bilinear')\n"
        "                for a in angles]\n"
        "        errors = [relative_error(model.features(r), ref) for r in turn]\n"
        "    print(f'{dis}: spread of the invariant features across images {ref.std(0).mean():.2e}, '\n"
        "          f'largest relative change under rotation {max(errors):.3f}')\n"
        "    plt.plot(angles, errors, 'o-', ms=3, label=dis)\n"
        "plt.yscale('symlog', linthresh=1e-6)\nplt.xlabel('rotation (deg)')\nplt.ylabel('relative error')\n"
        "plt.legend()",
    ),
]


CONTINUOUS = [
    (
        "md",
        "# SO(2) and O(2)\n\nBoth PDO layers take every field type of escnn's planar gspaces, continuous rotation "
        "groups included: irreps, band-limited regular fields, mixes. Build an SO(2) and an O(2) network of epdo and "
        "escnn layers, then measure the equivariance error of single layers against the rotation angle.",
    ),
    (
        "code",
        "import math\nimport torch\nimport matplotlib.pyplot as plt\nfrom escnn import gspaces, nn\n\n"
        "from epdo.equivariance import equivariance_errors, smooth_field\n"
        "from epdo.nn import GroupMaxPool, NeuralePDO, PDOConv\nfrom epdo.models import count_parameters\n"
        "torch.manual_seed(0)",
    ),
    (
        "md",
        "## Networks\n\nBand-limited regular fields (frequencies up to 2) with escnn's Fourier-sampled ReLU and "
        "batch norm, a static `PDOConv` lift, `NeuralePDO` and escnn's `R2Conv` in between, irreps fields in the "
        "middle, and invariant features at the end (the maximum over 16 rotations of each field). Rotating the "
        "input by 90 degrees leaves them unchanged to float precision.",
    ),
    (
        "code",
        "def network(gspace):\n"
        "    group = gspace.fibergroup\n"
        "    image = nn.FieldType(gspace, [gspace.trivial_repr])\n"
        "    relu = nn.FourierPointwise(gspace, 3, group.bl_irreps(2), type='regular', N=12)\n"
        "    fields = relu.in_type\n"
        "    irreps = nn.FieldType(gspace, [group.irrep(*i) for i in group.bl_irreps(2)] * 2)\n"
        "    return nn.SequentialModule(\n"
        "        PDOConv(image, fields), nn.IIDBatchNorm2d(fields), relu,\n"
        "        NeuralePDO(fields, irreps), NeuralePDO(irreps, fields),\n"
        "        nn.R2Conv(fields, fields, 5, padding=2), nn.FourierPointwise(gspace, 3, group.bl_irreps(2),\n"
        "                                                                    type='regular', N=12),\n"
        "        NeuralePDO(fields, fields), GroupMaxPool(fields))\n\n"
        "images = torch.rand(4, 1, 29, 29)\nturned_images = torch.rot90(images, 1, (2, 3))\n"
        "for name, gspace in [('SO(2)', gspaces.rot2dOnR2(-1, 6)), ('O(2)', gspaces.flipRot2dOnR2(-1, 6))]:\n"
        "    net = network(gspace).eval()\n"
        "    with torch.no_grad():\n"
        "        features = net(nn.GeometricTensor(images, net.in_type)).tensor.amax(dim=(2, 3))\n"
        "        turned = net(nn.GeometricTensor(turned_images, net.in_type)).tensor.amax(dim=(2, 3))\n"
        "    change = ((turned - features).norm() / features.norm()).item()\n"
        "    print(f'{name}: {count_parameters(net)} parameters, {features.shape[1]} invariant features, '\n"
        "          f'spread across images {features.std(0).mean():.2e}, change at 90 deg {change:.1e}')",
    ),
    (
        "md",
        "## Equivariance error against the rotation angle\n\nSingle layers on SO(2) fields of frequencies 0-3 "
        "(`bl_irreps(3)`), a smooth input inside a disk, rotations from 0 to 90 degrees: exact at 0 and 90 "
        "(the grid's rotations), interpolation and discretization in between. The Neural ePDO is shown at "
        "initialization (a static PDO) and with its generator drawn at random (its PDOs then follow the input).",
    ),
    (
        "code",
        "gs = gspaces.rot2dOnR2(-1, 6)\nt = nn.FieldType(gs, [gs.irrep(k) for k in range(4)])\n"
        "x = smooth_field(t, 2, 33)\n"
        "adaptive = NeuralePDO(t, t)\nwith torch.no_grad():\n"
        "    adaptive.generator_norm.weight.normal_()\n    adaptive.generator_norm.bias.normal_()\n"
        "layers = {'escnn R2Conv 5x5': nn.R2Conv(t, t, 5, padding=2), 'PDOConv': PDOConv(t, t),\n"
        "          'NeuralePDO': NeuralePDO(t, t), 'NeuralePDO, generator drawn': adaptive}\n"
        "angles = [2.5 * i for i in range(37)]\n"
        "elements = [gs.fibergroup.element(math.radians(a), 'radians') for a in angles]\n"
        "plt.figure(figsize=(6, 3.5))\n"
        "for name, layer in layers.items():\n"
        "    errors = list(equivariance_errors(layer.train(), x, elements, margin=4).values())\n"
        "    print(f'{name:>27}: 90 deg {errors[-1]:.1e}, largest in 0-90 deg {max(errors):.4f}')\n"
        "    plt.plot(angles, errors, 'o-', ms=2, label=name)\n"
        "plt.yscale('symlog', linthresh=1e-7)\nplt.xlabel('rotation (deg)')\nplt.ylabel('relative error')\n"
        "plt.legend(fontsize=7)",
    ),
]


TUTORIAL = [
    (
        "md",
        "# An escnn network with epdo layers\n\nA network of the shape of escnn's tutorial model, written as an escnn "
        "user writes it: a `torch.nn.Module` whose forward wraps the image in a `GeometricTensor`, runs blocks of "
        "equivariant layers (a 7x7 lift with `padding=1`, 5x5 layers with `padding=2` and `padding=1`), escnn's "
        "antialiased pooling with stride 2 and group pooling, then a plain-PyTorch head. The convolution is a "
        "parameter: `R2Conv`, `PDOConv` or `NeuralePDO`, each called with the same `R2Conv` arguments.",
    ),
    (
        "code",
        "import torch\nfrom escnn import gspaces, nn\n\nfrom epdo.nn import NeuralePDO, PDOConv, export_network\n\n\n"
        "class SteerableCNN(torch.nn.Module):\n"
        "    def __init__(self, conv, classes=10):\n"
        "        super().__init__()\n"
        "        gs = gspaces.rot2dOnR2(8)\n"
        "        self.input_type = nn.FieldType(gs, [gs.trivial_repr])\n"
        "        a, b = nn.FieldType(gs, 4 * [gs.regular_repr]), nn.FieldType(gs, 6 * [gs.regular_repr])\n"
        "        lift = PDOConv if conv is NeuralePDO else conv  # on a scalar image a Neural ePDO is a static PDO\n"
        "        self.mask = nn.MaskModule(self.input_type, 29, margin=1)\n"
        "        self.block1 = nn.SequentialModule(lift(self.input_type, a, kernel_size=7, padding=1, bias=False),\n"
        "                                          nn.InnerBatchNorm(a), nn.ReLU(a, inplace=True))\n"
        "        self.block2 = nn.SequentialModule(conv(a, b, kernel_size=5, padding=2, bias=False),\n"
        "                                          nn.InnerBatchNorm(b), nn.ReLU(b, inplace=True))\n"
        "        self.pool = nn.PointwiseAvgPoolAntialiased2D(b, sigma=0.66, stride=2)\n"
        "        self.block3 = nn.SequentialModule(conv(b, b, kernel_size=5, padding=1, bias=False),\n"
        "                                          nn.InnerBatchNorm(b), nn.ReLU(b, inplace=True))\n"
        "        self.gpool = nn.GroupPooling(b)\n"
        "        self.head = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.BatchNorm1d(32), torch.nn.ELU(),\n"
        "                                        torch.nn.Linear(32, classes))\n\n"
        "    def forward(self, image):\n"
        "        x = nn.GeometricTensor(image, self.input_type)\n"
        "        x = self.block3(self.pool(self.block2(self.block1(self.mask(x)))))\n"
        "        features = self.gpool(x).tensor.amax(dim=(2, 3))\n"
        "        return self.head(features)\n\n\n"
        "# three networks, one set of arguments: the same output shapes after every block\n"
        "torch.manual_seed(0)\nimages = torch.rand(16, 1, 29, 29)\nnetworks = {}\n"
        "for conv in (nn.R2Conv, PDOConv, NeuralePDO):\n"
        "    model = networks[conv.__name__] = SteerableCNN(conv)\n"
        "    x = model.mask(nn.GeometricTensor(images, model.input_type))\n"
        "    shapes = []\n"
        "    for block in (model.block1, model.block2, model.pool, model.block3):\n"
        "        x = block(x)\n"
        "        shapes.append(tuple(x.tensor.shape[1:]))\n"
        "    parameters = sum(p.numel() for p in model.parameters())\n"
        "    logits = tuple(model(images).shape)\n"
        "    print(f'{conv.__name__:>10}: {parameters:6,} parameters, shapes {shapes}, logits {logits}')",
    ),
    (
        "md",
        "## Invariance to quarter turns\n\nIn training mode (each batch norm normalizes with the batch's "
        "statistics, which a turn of every image leaves as they are), with the Neural ePDO's generators drawn at "
        "random so that its PDOs follow the input.",
    ),
    (
        "code",
        "with torch.no_grad():\n"
        "    for module in networks['NeuralePDO'].modules():\n"
        "        if isinstance(module, NeuralePDO):\n"
        "            module.generator_norm.weight.normal_()\n"
        "    for name, model in networks.items():\n"
        "        logits = model.train()(images)\n"
        "        turned = model(torch.rot90(images, 1, (2, 3)))\n"
        "        print(f'{name:>10}: change at 90 deg {(turned - logits).abs().max():.1e}, '\n"
        "              f'spread across images {logits.std(0).max():.2e}')",
    ),
    (
        "md",
        "## Exported whole, head included\n\nAfter a plain `model.eval()`, `export_network` turns each network into "
        "one `torch.fx.GraphModule` of plain PyTorch (escnn's and epdo's modules exported, the head traced): the same "
        "logits as the network in eval mode.",
    ),
    (
        "code",
        "with torch.no_grad():\n"
        "    for name, model in networks.items():\n"
        "        for _ in range(3):\n"
        "            model.train()(torch.rand(16, 1, 29, 29))  # running statistics away from their start\n"
        "        model.eval()\n"
        "        plain = export_network(model)\n"
        "        kinds = sorted({type(m).__module__.split('.')[0] for m in plain.modules()})\n"
        "        print(f'{name:>10}: export difference {(plain(images) - model(images)).abs().max():.1e}, '\n"
        "              f'modules from {kinds}')",
    ),
]

NOTEBOOKS = {
    "quickstart.ipynb": QUICKSTART,
    "equivariance.ipynb": EQUIVARIANCE,
    "continuous_groups.ipynb": CONTINUOUS,
    "escnn_network.ipynb": TUTORIAL,
}


def notebook(cells) -> nbformat.NotebookNode:
    """A notebook of ``cells`` (``(kind, source)``), not executed."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(s) if kind == "md" else nbformat.v4.new_code_cell(s) for kind, s in cells]
    return nb


def execute(nb: nbformat.NotebookNode, directory: Path) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel (working directory ``directory``; figures inline, as PNG outputs), stopped
    at once when the last cell is done (a graceful shutdown waits seconds for nothing)."""
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    resources = {"metadata": {"path": str(directory)}}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources, shutdown_kernel="immediate").execute()
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(execute(notebook(cells), HERE), HERE / name)
        print(f"wrote {HERE / name}")
