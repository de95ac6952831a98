"""Off-grid equivariance error of trained layers: every convolution of trained networks (``epdo-train`` checkpoints),
side by side with the layers of trained escnn networks on the same skeleton.

Each layer in eval mode (trained running statistics) on smooth fields of its input type scaled to unit RMS (the scale
of the batch-normalized features it was trained on), inside a disk, at the off-grid elements of
:func:`epdo.equivariance.off_grid_elements` (C8: 45 and 135 degrees; SO(2): 45 and 22.5 degrees); the mean relative
error over them and over the runs of each group.

    python benchmarks/trained_equivariance.py --runs RUNS/screening --pairs default:escnn,so2:so2-escnn
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List

import numpy as np
import torch
from common import report_table
from escnn import nn

from epdo.checkpoint import load_checkpoint
from epdo.equivariance import equivariance_errors, off_grid_elements, smooth_field
from epdo.nn import NeuralePDO, PDOConv

LAYERS = (NeuralePDO, PDOConv, nn.R2Conv)


def layer_error(layer: torch.nn.Module, size: int) -> float:
    """``layer``'s mean off-grid error on smooth fields of its input type (``size`` pixels) scaled to unit RMS."""
    torch.manual_seed(0)
    x = smooth_field(layer.in_type, 2, size).tensor
    x = nn.GeometricTensor(x / x.pow(2).mean().sqrt(), layer.in_type)
    with torch.no_grad():
        found = equivariance_errors(layer, x, off_grid_elements(layer.in_type.gspace), margin=4)
    return float(np.mean(list(found.values())))


def layer_errors(checkpoint: Path, size: int) -> List[float]:
    """The mean off-grid error of each convolution of the network in ``checkpoint``, in order."""
    model, _ = load_checkpoint(checkpoint)
    return [layer_error(layer, size) for layer in model.eval().body.children() if isinstance(layer, LAYERS)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="a folder of accuracy.py runs (MODEL-seedN)")
    parser.add_argument("--pairs", default="default:escnn", help="MODEL:BASELINE,... (run name prefixes)")
    parser.add_argument("--size", type=int, default=25, help="side of the smooth test fields")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    pairs = args.pairs.split(",")
    if any(len(pair.split(":")) != 2 or "" in pair.split(":") for pair in pairs):
        parser.error(f"--pairs: expected MODEL:BASELINE pairs separated by commas, got {args.pairs!r}")
    rows = {}
    for pair in pairs:
        means = {}
        for name in pair.split(":"):
            runs = sorted(args.runs.glob(f"{name}-seed*/checkpoint.pt"))
            if not runs:
                parser.error(f"no runs {name}-seed*/checkpoint.pt in {args.runs}")
            means[name] = (np.mean([layer_errors(run, args.size) for run in runs], axis=0), len(runs))
        (ours, (a, n)), (theirs, (b, m)) = means.items()
        pair_rows = {
            f"{ours} ({n} runs)": {f"layer {i + 1}": f"{v:.4f}" for i, v in enumerate(a)},
            f"{theirs} ({m} runs)": {f"layer {i + 1}": f"{v:.4f}" for i, v in enumerate(b)},
            f"{ours} / {theirs}": {f"layer {i + 1}": f"{v:.2f}" for i, v in enumerate(a / b)},
        }
        print(pair_rows, flush=True)
        rows.update(pair_rows)
    report_table(rows, "Off-grid equivariance of trained layers", __file__, argv, args.record)


if __name__ == "__main__":
    main()
