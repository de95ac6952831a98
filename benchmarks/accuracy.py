"""Accuracy under a fixed CPU budget on rotated Fashion-MNIST: Neural ePDO (fd, gauss) against the static-PDO, escnn
and plain-CNN baselines at matched parameter counts, several seeds, final-epoch test error (mean +- std), and the
error on test images rotated further by off-grid angles.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from common import markdown_table, record

from epdo.evaluate import rotation_errors
from epdo.models import count_parameters, mnist_rot_model
from epdo.runtime import tune_malloc
from epdo.train import main as train_main

BASE_WIDTHS = (8, 8, 8, 8, 8, 8)


def matched_widths(target: int, group_order: int, **kwargs) -> tuple:
    """Widths ``round(k * BASE_WIDTHS)`` whose model has the parameter count closest to ``target``."""
    best = None
    for k in [i / 8 for i in range(2, 33)]:
        widths = tuple(max(1, round(k * w)) for w in BASE_WIDTHS)
        count = count_parameters(mnist_rot_model(group_order=group_order, widths=widths, **kwargs))
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (widths, count)
    return best[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-order", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=6000, help="training images (of the 12,000)")
    parser.add_argument("--test", type=int, default=5000, help="test images (of the 10,000)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", default="epdo-fd,epdo-gauss,pdo,escnn,cnn")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    tune_malloc()
    n = args.group_order
    common = dict(g=2, s=1)
    target = count_parameters(mnist_rot_model(group_order=n, widths=BASE_WIDTHS, dis="fd", **common))
    configs = {
        "epdo-fd": ["--dis", "fd", "--widths", ",".join(map(str, BASE_WIDTHS))],
        "epdo-gauss": ["--dis", "gauss", "--widths", ",".join(map(str, BASE_WIDTHS))],
        "pdo": ["--baseline", "pdo", "--widths", ",".join(map(str, matched_widths(target, n, baseline="pdo")))],
        "escnn": ["--baseline", "escnn", "--widths", ",".join(map(str, matched_widths(target, n, baseline="escnn")))],
        "cnn": ["--baseline", "cnn", "--widths", ",".join(map(str, BASE_WIDTHS))],  # matched inside plain_cnn
    }
    angles = (0.0, 22.5, 45.0)
    rows = {}
    for name in args.models.split(","):
        finals, rotated, params = [], {a: [] for a in angles}, None
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as out:
                argv_run = [
                    "--dataset", "fashion-rot", "--group-order", str(n), "--g", "2", "--s", "1", "--epochs",
                    str(args.epochs), "--limit-train", str(args.train), "--limit-test", str(args.test), "--seed",
                    str(seed), "--out", out, "--no-progress", *configs[name],
                ]  # fmt: skip
                if train_main(argv_run) != 0:
                    raise SystemExit(f"training {name} seed {seed} failed")
                with open(Path(out) / "metrics.csv") as f:
                    finals.append(float(list(csv.DictReader(f))[-1]["test_error"]))
                state = torch.load(Path(out) / "checkpoint.pt", weights_only=False)
            from epdo.data import load_dataset
            from epdo.train import _make_model

            model = _make_model(argparse.Namespace(**state["args"]))
            model.load_state_dict(state["model"])
            params = count_parameters(model)
            _, test = load_dataset("fashion-rot", seed=seed)
            test = test.limit(args.test)
            for angle, error in rotation_errors(model, test.images, test.labels, angles):
                rotated[angle].append(error)

        def fmt(values):
            mean = 100 * statistics.mean(values)
            std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{mean:.2f} +- {std:.2f}"

        rows[name] = {"params": f"{params:,}", "final test error (%)": fmt(finals)}
        rows[name].update({f"test rotated {a} deg (%)": fmt(v) for a, v in rotated.items() if a})
        print(name, rows[name], flush=True)
    table = markdown_table(rows)
    print(table)
    if args.record:
        command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
        setup = (
            f"fashion-rot, {args.train} training / {args.test} test images, {args.epochs} epochs (paper recipe, "
            f"lr 2e-3), C{n}, seeds 0..{args.seeds - 1}; final-epoch test error, no model selection."
        )
        record("Accuracy under a CPU budget", command, torch.device("cpu"), setup + "\n\n" + table)


if __name__ == "__main__":
    main()
