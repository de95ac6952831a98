"""How much of trained networks' off-grid drop is the interpolation's blur, not the rotation.

Each ``epdo-train`` checkpoint is evaluated (eval mode, as ``epdo-evaluate``) on its test images as they are, rotated by
each angle (bilinear, as ``epdo-evaluate --rotations`` does), and rotated by the angle and back: two interpolations and
no rotation left, so a network that loses there loses to the blur alone.  Mean over the runs of each model.

    python benchmarks/interpolation_blur.py --runs RUNS/digits --models so2-sampled-gaussexact,so2-escnn
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path
from typing import List

import numpy as np
import torch
from common import report_table

from epdo.checkpoint import load_checkpoint, read_checkpoint
from epdo.data.augment import rotate_batch
from epdo.training import evaluate, rotation_errors

ANGLES = (22.5, 45.0)


def rotated_and_back(images: torch.Tensor, angle: float) -> torch.Tensor:
    """``images`` rotated by ``angle`` degrees and back, each time bilinearly resampled."""
    for step in (angle, -angle):
        images = rotate_batch(images, torch.full((len(images),), math.radians(step)), mode="bilinear")
    return images


def errors(checkpoint: Path) -> List[float]:
    """Test error (%) as stored, then at each of :data:`ANGLES` (:func:`epdo.training.rotation_errors`, as
    ``epdo-evaluate`` computes it) and rotated there and back."""
    model, _ = load_checkpoint(checkpoint)
    _, test = read_checkpoint(checkpoint).run_data()
    at = dict(rotation_errors(model, test, [0.0, *ANGLES], batch_size=500))
    found = [100 * at[0.0]]
    for angle in ANGLES:
        back = evaluate(model, replace(test, images=rotated_and_back(test.images, angle)), batch_size=500)[1]
        found += [100 * at[angle], 100 * back]
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="a folder of accuracy.py runs (MODEL-seedN)")
    parser.add_argument("--models", required=True, help="run name prefixes, comma-separated")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    rows = {}
    for model in args.models.split(","):
        runs = sorted(args.runs.glob(f"{model}-seed*/checkpoint.pt"))
        if not runs:
            parser.error(f"--runs: no {model}-seed*/checkpoint.pt in {args.runs}")
        mean = np.mean([errors(run) for run in runs], axis=0)
        row = {"0°": f"{mean[0]:.2f}"}
        for k, angle in enumerate(ANGLES):
            at, back = mean[1 + 2 * k], mean[2 + 2 * k]
            row[f"{angle:g}°"] = f"{at:.2f} ({at - mean[0]:+.2f})"
            row[f"{angle:g}° and back"] = f"{back:.2f} ({back - mean[0]:+.2f})"
        rows[f"{model} ({len(runs)} runs)"] = row
    report_table(rows, "Off-grid drop and the interpolation's blur", __file__, argv, args.record)


if __name__ == "__main__":
    main()
