"""``epdo-evaluate``: test error of a trained checkpoint as a function of the rotation applied to the test images.

``epdo-evaluate --checkpoint runs/x/checkpoint.pt --rotations 0:360:15``
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from epdo.checkpoint import CheckpointError, load_checkpoint
from epdo.cli import one_line_warnings, positive_int
from epdo.data import DatasetError
from epdo.plots import plot_rotation_errors
from epdo.training import rotation_errors


def parse_angles(text: str) -> List[float]:
    """``"start:stop:step"`` (stop excluded) or a comma-separated list, in degrees."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            count = int(math.floor((stop - start) / step + 1e-9))
            return [start + i * step for i in range(max(count, 0))]
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected start:stop:step or a list of angles, got {text!r}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="epdo-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--rotations", type=parse_angles, default=parse_angles("0:360:15"))
    parser.add_argument("--data-dir", type=Path, default=None, help="override the checkpoint's data directory")
    parser.add_argument("--limit-test", type=positive_int, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    with one_line_warnings("epdo-evaluate"):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    try:
        model, checkpoint = load_checkpoint(args.checkpoint)
    except CheckpointError as err:
        print(f"epdo-evaluate: {err}", file=sys.stderr)
        return 2
    try:
        _, test = checkpoint.run_data(args.data_dir, args.limit_test)
    except DatasetError as err:
        print(f"epdo-evaluate: {err}", file=sys.stderr)
        return 1
    results = rotation_errors(model, test, args.rotations, progress=not args.no_progress)
    print(f"{'angle (deg)':>12} {'test error (%)':>15}")
    for angle, error in results:
        print(f"{angle:12.1f} {100 * error:15.2f}")
    plot = args.plot or args.checkpoint.with_name("rotation_errors.png")
    plot_rotation_errors(results, plot)
    print(f"plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
