"""Test error against the rotation of the test images, several trained ``epdo-train`` checkpoints in one figure
(eval mode, as ``epdo-evaluate`` computes it for one checkpoint): the README's picture.

    python benchmarks/rotation_errors.py --checkpoint "escnn R2Conv=runs/escnn/checkpoint.pt" \\
        --checkpoint "Neural ePDO=runs/default/checkpoint.pt" --limit-test 2000 --record
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from common import LOG, report_figure

from epdo.checkpoint import load_checkpoint
from epdo.evaluate import parse_angles
from epdo.models import count_parameters
from epdo.plots import rotation_errors_figure
from epdo.training import rotation_errors


def checkpoint_errors(path: Path, angles: List[float], limit_test: int) -> Tuple[int, List[Tuple[float, float]]]:
    """Parameter count and ``[(angle, error)]`` of an ``epdo-train`` checkpoint on its own test set."""
    model, checkpoint = load_checkpoint(path)
    _, test = checkpoint.run_data(limit_test=limit_test)
    return count_parameters(model), rotation_errors(model, test, angles)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="LABEL=PATH, one per model")
    parser.add_argument("--rotations", type=parse_angles, default=parse_angles("0:360:15"))
    parser.add_argument("--limit-test", type=int, default=2000)
    parser.add_argument("--plot", type=Path, default=LOG.with_name("rotation_errors.png"))
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    curves: Dict[str, List[Tuple[float, float]]] = {}
    rows: Dict[str, Dict[str, str]] = {}
    for item in args.checkpoint:
        label, _, path = item.partition("=")
        params, curves[label] = checkpoint_errors(Path(path), args.rotations, args.limit_test)
        on_grid = [100 * e for a, e in curves[label] if a % 90 == 0]
        off_grid = [100 * e for a, e in curves[label] if a % 90]
        rows[label] = {
            "params": f"{params:,}",
            "multiples of 90° (%)": f"{statistics.mean(on_grid):.2f}",
            "other angles (%)": f"{statistics.mean(off_grid):.2f}",
            "worst angle (%)": f"{max(on_grid + off_grid):.2f}",
        }
    legends = {f"{label} ({rows[label]['params']} parameters)": results for label, results in curves.items()}
    fig, ax = rotation_errors_figure(legends, size=(7, 3.6))
    ax.set_xticks(range(0, 361, 45))
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    title = "Test error by rotation of the test images"
    report_figure(fig, args.plot, rows, title, __file__, argv, args.record)


if __name__ == "__main__":
    main()
