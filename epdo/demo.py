"""A network of PDO layers on escnn field types, and its measured equivariance error.

Run: ``python -m epdo.demo``.
"""

from __future__ import annotations

import argparse
import time

import torch
from escnn import gspaces, nn

from epdo.equivariance import equivariance_errors, grid_elements, smooth_field
from epdo.nn import NeuralePDO, PDOConv


def build(group_order: int = 8, fields: int = 4, flip: bool = False) -> nn.SequentialModule:
    """trivial -> PDOConv -> ReLU -> NeuralePDO(fd) -> ReLU -> NeuralePDO(gauss) -> ReLU -> PDOConv(rbffd)."""
    gs = gspaces.flipRot2dOnR2(group_order) if flip else gspaces.rot2dOnR2(group_order)
    image = nn.FieldType(gs, [gs.trivial_repr])
    hidden = nn.FieldType(gs, [gs.regular_repr] * fields)
    return nn.SequentialModule(
        PDOConv(image, hidden, "fd"),
        nn.ReLU(hidden),
        NeuralePDO(hidden, hidden, g=2, s=1, discretization="fd"),
        nn.ReLU(hidden),
        NeuralePDO(hidden, hidden, g=2, s=2, discretization="gauss"),
        nn.ReLU(hidden),
        PDOConv(hidden, hidden, "rbffd"),
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-order", type=int, default=8)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--size", type=int, default=33)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    start = time.perf_counter()
    net = build(args.group_order, args.fields, args.flip).train()
    print(f"built {net.__class__.__name__} in {time.perf_counter() - start:.2f} s:")
    print(net)
    x = smooth_field(net.in_type, 2, args.size)
    gs = net.in_type.gspace
    print(f"\nrelative equivariance error of the whole network on {args.size}x{args.size} inputs")
    exact = equivariance_errors(net, x)
    for element, error in exact.items():
        print(f"  {str(element):>24}  {error:.2e}  (exact grid symmetry)")
    off_grid = [e for e in gs.fibergroup.elements if e not in grid_elements(gs)]
    for element, error in equivariance_errors(net, x, off_grid, margin=6).items():
        print(f"  {str(element):>24}  {error:.2e}  (off-grid: interpolated, inside a disk)")
    if off_grid:
        print(
            "off-grid angles are not symmetries of the pixel grid: stencils, interpolation and the generator's\n"
            "per-sample field normalization (statistics over the whole square, whose rotated corners are refilled)\n"
            "all contribute; see benchmarks/equivariance.py for the per-layer picture."
        )


if __name__ == "__main__":
    main()
