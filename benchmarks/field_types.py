"""Both PDO layers on the field types escnn's own convolution tests use: construction time (a fresh process each),
the equivariance error on the grid, and off it against escnn's R2Conv 5x5 on the same types and inputs.

Grid: the largest relative error over the grid's rotations and reflections, training mode, random input, the Neural
ePDO's generator drawn at random (adapting to its input).  Off the grid: the mean relative error at 45 and 22.5
degrees (D8 with an axis off the grid: its reflections), on smooth fields inside a disk, at initialization, over four
draws of the weights; the Neural ePDO also with its generator drawn at random (a harness-only figure: a trained
generator lies somewhere between).

    python benchmarks/field_types.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import torch
from common import report_table
from escnn import nn

from epdo.equivariance import (
    equivariance_errors,
    escnn_field_types,
    off_grid_elements,
    redraw_weights,
    smooth_field,
)
from epdo.kernels import PDOBasis
from epdo.nn import NeuralePDO, PDOConv

LAYERS = {
    "R2Conv": lambda a, b: nn.R2Conv(a, b, 5, padding=2),
    "PDOConv": lambda a, b: PDOConv(a, b),
    "PDOConv, bandwidth 0.15": lambda a, b: PDOConv(a, b, basis=PDOBasis(bandwidth=0.15)),
    "PDOConv, gauss-exact": lambda a, b: PDOConv(a, b, basis=PDOBasis("gauss-exact")),
    "NeuralePDO": lambda a, b: NeuralePDO(a, b),
    "NeuralePDO, gauss-exact": lambda a, b: NeuralePDO(a, b, basis=PDOBasis("gauss-exact")),
}
BUILT_AND_TIMED = ("PDOConv", "NeuralePDO")  # the others are variants of their bases


def redraw(layer: torch.nn.Module, adaptive: bool = False) -> torch.nn.Module:
    """``layer``'s weights drawn anew as at its initialization (with ``adaptive``, a Neural ePDO's generator affine
    drawn from N(0, 1): its PDOs then depend on the input); training mode."""
    redraw_weights(layer)
    if adaptive and isinstance(layer, NeuralePDO):
        with torch.no_grad():
            layer.generator_norm.weight.normal_()
            layer.generator_norm.bias.normal_()
    return layer.train()


def off_grid_error(
    layer: torch.nn.Module, x: nn.GeometricTensor, elements: list, draws: int, adaptive: bool = False
) -> float:
    """The mean relative error of ``layer`` at ``elements`` on ``x`` over ``draws`` draws of its weights
    (:func:`redraw`)."""
    errors = []
    for seed in range(draws):
        torch.manual_seed(seed)
        errors += list(equivariance_errors(redraw(layer, adaptive), x, elements, margin=4).values())
    return float(np.mean(errors))


def construction_seconds(case: str, layer: str) -> float:
    """Seconds to build one layer in a fresh process (bases solved from nothing)."""
    code = (
        "import time, sys; sys.path.insert(0, 'benchmarks'); from field_types import LAYERS; "
        "from epdo.equivariance import escnn_field_types; a, b = escnn_field_types()[sys.argv[1]]; "
        "start = time.perf_counter(); LAYERS[sys.argv[2]](a, b); print(time.perf_counter() - start)"
    )
    done = subprocess.run([sys.executable, "-c", code, case, layer], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=4)
    parser.add_argument("--size", type=int, default=25, help="side of the smooth test fields (off the grid)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    rows = {}
    for case, (in_type, out_type) in escnn_field_types().items():
        torch.manual_seed(0)
        x = smooth_field(in_type, 2, args.size)
        noise = nn.GeometricTensor(torch.randn(2, in_type.size, 12, 12), in_type)
        elements = off_grid_elements(in_type.gspace)
        row = {}
        off = {}
        for name, make in LAYERS.items():
            layer = make(in_type, out_type)
            off[name] = off_grid_error(layer, x, elements, args.draws)
            if name in BUILT_AND_TIMED:
                torch.manual_seed(0)
                row[f"{name}: build (s)"] = f"{construction_seconds(case, name):.2f}"
                row[f"{name}: grid"] = f"{max(equivariance_errors(redraw(layer, True), noise).values()):.1e}"
            if name == "NeuralePDO":
                off["NeuralePDO, generator drawn"] = off_grid_error(layer, x, elements, args.draws, adaptive=True)
        reference = off["R2Conv"]
        row["R2Conv: off grid"] = f"{reference:.4f}"
        for name, value in off.items():
            if name != "R2Conv":
                row[f"{name}: off grid (x R2Conv)"] = f"{value:.4f} ({value / reference:.2f})"
        rows[case] = row
        print(case, row, flush=True)
    report_table(rows, "Field types of escnn's convolution tests", __file__, argv, args.record)


if __name__ == "__main__":
    main()
