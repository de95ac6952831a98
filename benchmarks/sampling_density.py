"""Off-grid error of trained sampled-form networks against the number of sampled rotations: each checkpoint's
``SampledLayout`` rebuilt with ``N`` rotations (the weights do not depend on ``N``), the test error at each angle,
mean ± std over the checkpoints.  Tests whether the sampled form's approximation between its samples is what
raises the error off the grid.

    python benchmarks/sampling_density.py RUNS/screening/so2-sampled-seed*/checkpoint.pt --samples 8,12
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import report_table

from epdo.checkpoint import CheckpointError, load_checkpoint
from epdo.cli import positive_int
from epdo.evaluate import parse_angles
from epdo.nn import NeuralePDO
from epdo.nn.neural_epdo import SampledLayout
from epdo.training import rotation_errors


def with_samples(model: torch.nn.Module, samples: int) -> torch.nn.Module:
    """``model`` with every sampled-form Neural ePDO's layout rebuilt at ``samples`` rotations (in place)."""
    layers = [m for m in model.modules() if isinstance(m, NeuralePDO) and isinstance(m.layout, SampledLayout)]
    if not layers:
        raise SystemExit("sampling_density: the checkpoint has no sampled-form NeuralePDO layer")
    for layer in layers:
        layer.layout = SampledLayout(layer.in_type, layer.layout.g, samples)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument(
        "--samples",
        type=lambda text: [positive_int(n) for n in text.split(",")],
        default=[8, 12],
        help="comma-separated numbers of sampled rotations",
    )
    parser.add_argument("--rotations", type=parse_angles, default=parse_angles("0,22.5,45"))
    parser.add_argument("--limit-test", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    errors = {}  # (samples, angle) -> [error of each checkpoint]
    for path in args.checkpoints:
        try:
            model, checkpoint = load_checkpoint(path)
        except CheckpointError as err:
            raise SystemExit(f"sampling_density: {err}") from None
        _, test = checkpoint.run_data(None, args.limit_test)
        for samples in args.samples:
            for angle, error in rotation_errors(with_samples(model, samples), test, args.rotations):
                errors.setdefault((samples, angle), []).append(100 * error)
            print(path, samples, {a: round(errors[samples, a][-1], 2) for a in args.rotations}, flush=True)
    rows = {}
    for (samples, angle), values in errors.items():
        row = rows.setdefault(f"N = {samples}", {})
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        seeds = " / ".join(f"{v:.2f}" for v in values)
        row[f"{angle:g} deg (%)"] = f"{statistics.mean(values):.2f} ± {spread:.2f} ({seeds})"
    title = f"Off-grid error against the sampled rotations ({len(args.checkpoints)} trained sampled-form networks)"
    report_table(rows, title, __file__, argv, args.record)


if __name__ == "__main__":
    main()
