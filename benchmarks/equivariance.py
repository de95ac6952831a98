"""Equivariance error against the input rotation angle, for single layers and whole (untrained, normalized) models.

Layers (C16, regular fields, at initialization): relative error ``||layer(g.x) - g.layer(x)||`` on smooth inputs
inside a disk, at the 16 group rotations (exact on the grid, 90-degree multiples; interpolated in between).  Models
(C16, small widths, batch-norm statistics populated, eval mode): relative change of the invariant features when the
input images are rotated by any angle in 0..360 (step 7.5; bilinear rotation).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch
from common import LOG, markdown_table, record
from escnn import gspaces, nn

from epdo.data import load_dataset
from epdo.data.augment import rotate_batch
from epdo.equivariance import disk_mask, equivariance_errors, relative_error, smooth_field
from epdo.models import ModelConfig, build_model
from epdo.nn import NeuralePDO, PDOBasis, PDOConv
from epdo.plots import save_figure

MODELS = {
    "NeuralePDO (default)": ModelConfig(),
    "NeuralePDO fd": ModelConfig(basis=PDOBasis("fd")),
    "NeuralePDO (reference layer)": ModelConfig(layer="reference"),
    "PDOConv (static, default basis)": ModelConfig(layer="pdo"),
    "escnn R2Conv 5x5": ModelConfig(layer="escnn"),
}


def layer_errors(group_order: int, fields: int, size: int) -> dict:
    gs = gspaces.rot2dOnR2(group_order)
    t = nn.FieldType(gs, [gs.regular_repr] * fields)
    layers = {
        "NeuralePDO (default)": NeuralePDO(t, t),
        "NeuralePDO fd": NeuralePDO(t, t, basis=PDOBasis("fd")),
        "NeuralePDO (reference layer)": NeuralePDO.reference(t, t),
        "PDOConv (static, default basis)": PDOConv(t, t),
        "escnn R2Conv 5x5": nn.R2Conv(t, t, 5, padding=2),
    }
    x = smooth_field(t, 2, size)
    out = {}
    for name, layer in layers.items():
        errors = equivariance_errors(layer.eval(), x, gs.fibergroup.elements, margin=4)
        out[name] = {round(math.degrees(e.to("radians")), 1): v for e, v in errors.items()}
    return out


def model_errors(group_order: int, widths, images: torch.Tensor, angles) -> dict:
    out = {}
    mask = disk_mask(*images.shape[-2:], margin=0.0)
    images = images * mask
    for name, config in MODELS.items():
        torch.manual_seed(0)
        model = build_model(replace(config, group_order=group_order, widths=tuple(widths), dropout=0.0))
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = None  # cumulative: running statistics = statistics of the images seen
        model.train()
        with torch.no_grad():
            model(images)
            model.eval()
            reference = model.features(images)
            out[name] = {
                a: relative_error(model.features(rotate_batch(images, torch.full((len(images),), math.radians(a)),
                                                              mode="bilinear")), reference)
                for a in angles
            }  # fmt: skip
    return out


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, errors in curves.items():
        ax.plot(list(errors), list(errors.values()), "o-", ms=3, label=name)
    ax.set(xlabel="rotation (degrees)", ylabel="relative error", title=title, yscale="symlog")
    ax.set_yscale("symlog", linthresh=1e-6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def table(curves: dict, angles=(22.5, 45.0, 90.0)) -> str:
    return markdown_table({n: {f"{a} deg": f"{e.get(a, float('nan')):.2e}" for a in angles} for n, e in curves.items()})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-order", type=int, default=16)
    parser.add_argument("--fields", type=int, default=4, help="fields of the single layers")
    parser.add_argument("--widths", default="4,4,4,4,4,4", help="fields of the models' six layers")
    parser.add_argument("--images", type=int, default=64, help="test images for the models")
    parser.add_argument("--dataset", default="fashion-rot", help="fashion-rot (falls back to synthetic)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    layers = layer_errors(args.group_order, args.fields, 33)
    print(f"single layers (C{args.group_order} regular fields, group rotations):")
    print(table(layers))
    try:
        _, test = load_dataset(args.dataset)
    except Exception as err:  # noqa: BLE001 - the study still runs on synthetic data
        print(f"({args.dataset} unavailable: {err}; using synthetic)")
        _, test = load_dataset("synthetic")
    angles = [i * 7.5 for i in range(49)]
    widths = [int(w) for w in args.widths.split(",")]
    models = model_errors(args.group_order, widths, test.images[: args.images], angles)
    print("\nwhole models (invariant features; input rotated by any angle):")
    print(table(models))
    plot(layers, LOG.with_name("equivariance_layers.png"), "single layers: equivariance error")
    plot(models, LOG.with_name("equivariance_models.png"), "models: invariance error")
    if args.record:
        command = "python benchmarks/equivariance.py " + " ".join(sys.argv[1:] if argv is None else argv)
        body = (
            "Single layers (relative error of g.layer(x) vs layer(g.x), smooth inputs, inside a disk):\n\n"
            + table(layers)
            + "\n\nWhole untrained models, batch-norm statistics populated, eval mode (relative change of the "
            "invariant features under input rotation):\n\n"
            + table(models)
            + "\n\nPlots: `benchmarks/equivariance_layers.png`, `benchmarks/equivariance_models.png`."
        )
        record(f"Equivariance error vs rotation angle (C{args.group_order})", command, torch.device("cpu"), body)


if __name__ == "__main__":
    main()
