"""Test error against training wall-clock time, from the runs of benchmarks/accuracy.py: every model's eval-mode test
error after each epoch (as ``epdo-train`` printed it) against the cumulative seconds of training and evaluation,
mean over seeds; and each model's error at the time the first model (the baseline) finished, interpolated.

    python benchmarks/accuracy_time.py --runs runs/accuracy/digits --models escnn,default --record
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from common import LOG, report_figure


def curves(directory: Path, model: str) -> List[Tuple[np.ndarray, np.ndarray]]:
    """``[(cumulative seconds, test error %)]`` per seed of ``model``'s runs in ``directory``."""
    out = []
    for run in sorted(directory.glob(f"{model}-seed*")):
        with open(run / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        seconds = np.cumsum([float(r["seconds"]) for r in rows])
        out.append((seconds, np.array([100 * float(r["test_error"]) for r in rows])))
    if not out:
        raise SystemExit(f"no runs of {model!r} in {directory}")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True, help="a protocol's directory of benchmarks/accuracy.py")
    parser.add_argument("--models", default="escnn,default", help="the first is the baseline")
    parser.add_argument("--plot", type=Path, default=LOG.with_name("accuracy_time.png"))
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    runs = {name: curves(args.runs, name) for name in names}
    budget = statistics.mean(seconds[-1] for seconds, _ in runs[names[0]])  # the baseline's time to finish
    rows: Dict[str, Dict[str, str]] = {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, seeds in runs.items():
        at_budget = [float(np.interp(budget, s, e)) for s, e in seeds]  # beyond its last epoch: its final error
        final = [e[-1] for _, e in seeds]
        rows[name] = {
            "seeds": str(len(seeds)),
            "s / epoch": f"{statistics.mean(float(np.mean(np.diff(s, prepend=0))) for s, _ in seeds):.0f}",
            f"error at {budget:.0f} s (%)": f"{statistics.mean(at_budget):.2f} ± {statistics.stdev(at_budget):.2f}",
            "final error (%)": f"{statistics.mean(final):.2f} ± {statistics.stdev(final):.2f}",
        }
        length = min(len(s) for s, _ in seeds)
        mean_seconds = np.mean([s[:length] for s, _ in seeds], axis=0)
        mean_error = np.mean([e[:length] for _, e in seeds], axis=0)
        ax.plot(mean_seconds, mean_error, "o-", ms=3, label=name)
    ax.axvline(budget, color="gray", lw=0.8, ls="--")
    ax.set(xlabel="training + evaluation time (s, this CPU)", ylabel="test error (%)", title=args.runs.name)
    ax.grid(alpha=0.3)
    ax.legend()
    title = f"Test error against training time ({args.runs.name})"
    report_figure(fig, args.plot, rows, title, __file__, argv, args.record)


if __name__ == "__main__":
    main()
