"""Test error of a trained checkpoint as a function of the rotation applied to the test images.

``python -m epdo.evaluate --checkpoint runs/x/checkpoint.pt --rotations 0:360:15``
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from epdo.cli import positive_int
from epdo.data import DatasetError, load_dataset, rotate_batch
from epdo.models import build_model, config_from_checkpoint
from epdo.runtime import tune_malloc


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


def rotation_errors(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    angles: Sequence[float],
    batch_size: int = 256,
    progress: bool = False,
) -> List[Tuple[float, float]]:
    """``[(angle, error)]``: error on the images rotated by ``angle`` degrees (bilinear; 90-degree multiples exact).
    ``progress``: a progress bar per angle on stderr."""
    model.eval()
    results = []
    with torch.no_grad():
        for index, angle in enumerate(angles):
            wrong = 0
            batches = range(0, len(labels), batch_size)
            if progress:
                from tqdm import tqdm

                desc = f"angle {angle:g} deg ({index + 1}/{len(angles)})"
                batches = tqdm(batches, desc=desc, leave=False, file=sys.stderr)
            for start in batches:
                x = images[start : start + batch_size]
                quarter = angle / 90.0
                if abs(quarter - round(quarter)) < 1e-9:
                    x = torch.rot90(x, int(round(quarter)) % 4, dims=(2, 3))
                else:
                    x = rotate_batch(x, torch.full((len(x),), math.radians(angle)), mode="bilinear")
                wrong += int((model(x).argmax(1) != labels[start : start + batch_size]).sum())
            results.append((angle, wrong / len(labels)))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="epdo-evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--rotations", type=parse_angles, default=parse_angles("0:360:15"))
    parser.add_argument("--data-dir", type=Path, default=None, help="override the checkpoint's data directory")
    parser.add_argument("--limit-test", type=positive_int, default=None)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    tune_malloc()
    if not args.checkpoint.exists():
        print(f"epdo-evaluate: {args.checkpoint} does not exist", file=sys.stderr)
        return 2
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    try:
        model = build_model(config_from_checkpoint(state))
    except ValueError as err:
        print(f"epdo-evaluate: {args.checkpoint}: {err}", file=sys.stderr)
        return 2
    model.load_state_dict(state["model"])
    data = state.get("data") or state["args"]  # "args": checkpoints written before the model configuration
    try:
        _, test = load_dataset(data["dataset"], args.data_dir or data["data_dir"], seed=data["seed"])
    except DatasetError as err:
        print(f"epdo-evaluate: {err}", file=sys.stderr)
        return 1
    test = test.limit(args.limit_test or data["limit_test"])
    results = rotation_errors(model, test.images, test.labels, args.rotations, progress=not args.no_progress)
    print(f"{'angle (deg)':>12} {'test error (%)':>15}")
    for angle, error in results:
        print(f"{angle:12.1f} {100 * error:15.2f}")
    plot = args.plot or args.checkpoint.with_name("rotation_errors.png")
    _plot(results, plot)
    print(f"plot: {plot}")
    return 0


def _plot(results: List[Tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([a for a, _ in results], [100 * e for _, e in results], "o-")
    ax.set(xlabel="rotation of the test images (degrees)", ylabel="test error (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
