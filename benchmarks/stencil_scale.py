"""Off-grid equivariance error of PDOConv at initialization against the scale of the Gaussian-derivative stencils,
as a ratio to escnn's R2Conv 5x5 on the same field types and inputs.

The stencils are derivatives of ``exp(-(eps t)^2)`` sampled on the 5x5 grid, ``eps`` the basis's ``scale``
(``PDOBasis(scale=eps)``; the library's default 0.99).  Field types, inputs and draws as in ``field_types.py``:
smooth fields in a disk, the mean relative error at 45 and 22.5 degrees (D8 with its axis at pi/3: its
reflections), ``--draws`` draws of the weights.

    python benchmarks/stencil_scale.py --scales 0.6,0.8,0.9,0.95,0.99,1.03,1.1,1.3
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import List

import torch
from common import report_table
from escnn import nn
from field_types import off_grid_error

from epdo.equivariance import escnn_field_types, off_grid_elements, smooth_field
from epdo.kernels import PDOBasis
from epdo.nn import PDOConv

BASES = {"default basis": PDOBasis(), "bandwidth 0.15": PDOBasis(bandwidth=0.15)}


def ratios(scales: List[float], draws: int, size: int) -> dict:
    """``{scale: {field types: {basis: PDOConv's off-grid error / R2Conv's}}}``, R2Conv measured once per field
    types (the same inputs and draws for every scale)."""
    found: dict = {scale: {} for scale in scales}
    for case, (in_type, out_type) in escnn_field_types().items():
        torch.manual_seed(0)
        x = smooth_field(in_type, 2, size)
        elements = off_grid_elements(in_type.gspace)
        reference = off_grid_error(nn.R2Conv(in_type, out_type, 5, padding=2), x, elements, draws)
        for scale in scales:
            found[scale][case] = {
                name: off_grid_error(PDOConv(in_type, out_type, basis=replace(basis, scale=scale)), x, elements, draws)
                / reference
                for name, basis in BASES.items()
            }
    return found


def positive_scales(text: str) -> List[float]:
    """A comma-separated list of positive numbers (the values of eps)."""
    try:
        scales = [float(v) for v in text.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(0 < v < float("inf") for v in scales):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return scales


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", type=positive_scales, default="0.8,0.99,1.1", help="values of eps, comma-separated")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--size", type=int, default=25, help="side of the smooth test fields")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    rows = {}
    for scale, found in ratios(args.scales, args.draws, args.size).items():
        for case, values in found.items():
            for name, value in values.items():
                rows.setdefault(f"{case}, {name}", {})[f"eps = {scale:g}"] = f"{value:.2f}"
        print(scale, found, flush=True)
    report_table(rows, "PDOConv off the grid against the Gaussian stencils' scale", __file__, argv, args.record)


if __name__ == "__main__":
    main()
