"""Accuracy as a user gets it: ``epdo-train`` runs (model x seed) side by side, each in its own process, and the final
test error it prints (eval mode, BatchNorm re-estimated on the stored training images), seed by seed and mean ± std.

Beside it, harness-only figures from each run's final checkpoint, which no user sees: the test error with batch
statistics (every BatchNorm normalizing with the statistics of the evaluated batch), which separates learning from
BatchNorm's estimate, and the eval-mode error with BatchNorm re-estimated on augmented training batches instead of
the stored images (what the recipe would report without its choice).

    python benchmarks/accuracy.py --protocol screening --models escnn,default,half --seeds 3 --workers 2
    python benchmarks/accuracy.py --protocol confirmation --models escnn,default --seeds 2 --workers 2

Models are ``epdo-train`` flag sets (:data:`MODELS`); every model sees the same data, batches and augmentation for
a given seed (the CLI derives them from ``--seed``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import torch
from common import markdown_table, record

from epdo.checkpoint import load_checkpoint
from epdo.data import random_rotation
from epdo.evaluate import parse_angles
from epdo.nn import batch_norms
from epdo.training import evaluate, reestimate_batch_norm, rotation_errors

MODELS: Dict[str, List[str]] = {
    "default": [],  # the library's default network, C8, 27,454 parameters
    "half": ["--preset", "half"],  # the half preset: 13,814 parameters, half escnn's count
    "half-widths": ["--widths", "9,10,14,14,19,19"],  # the default at half widths (13,595)
    # the default's parameters moved from the 28x28 layers to the 7x7 ones (a step at or below escnn's)
    "early-6-late-35": ["--widths", "6,6,18,18,35,35"],  # 27,076
    "early-6-late-32": ["--widths", "6,6,21,21,32,32"],  # 27,208
    "escnn": ["--layer", "escnn", "--widths", "5,5,7,7,10,11"],  # escnn R2Conv 5x5, 27,123 parameters
    # the half-parameter study (13,561 ± 3%): generator and classifier variants at widths that fill the budget
    "half-nodrop": ["--widths", "9,10,14,14,19,19", "--dropout", "0"],  # 13,595
    "half-r8": ["--reduction", "8", "--widths", "10,11,15,15,21,21"],  # 13,814
    "half-r8-nodrop": ["--reduction", "8", "--dropout", "0", "--widths", "10,11,15,15,21,21"],  # 13,814
    "half-r16-nodrop": ["--reduction", "16", "--dropout", "0", "--widths", "10,11,15,15,21,21"],  # 13,556
    "half-r8-nodrop-early": ["--reduction", "8", "--dropout", "0", "--widths", "12,12,15,15,19,19"],  # 13,210
    "half-head32": ["--head", "32", "--widths", "10,10,15,15,20,20"],  # 13,946
    "half-head0": ["--head", "0", "--widths", "10,11,15,15,21,21"],  # 13,810
    "half-head0-late": ["--head", "0", "--widths", "10,10,14,14,22,22"],  # 13,570
    "half-head0-r8": ["--head", "0", "--reduction", "8", "--widths", "11,12,16,16,22,22"],  # 13,645
    "half-r8-head128": ["--reduction", "8", "--head", "128", "--widths", "10,10,14,14,18,18"],  # 13,564
    "half-r8-nodrop-head128": ["--reduction", "8", "--dropout", "0", "--head", "128", "--widths", "10,10,14,14,18,18"],
    # SO(2): the so2 preset (27,481) and escnn's R2Conv on the same skeleton (27,614)
    "so2": ["--preset", "so2"],
    "so2-escnn": ["--preset", "so2", "--layer", "escnn", "--widths", "7,7,11,11,14,14"],
    # the so2 skeleton with escnn's gated (27,504; escnn 28,163) and norm (27,655; escnn 27,824) nonlinearities
    "so2-gated": ["--preset", "so2", "--nonlinearity", "gated", "--widths", "14,14,22,22,28,28"],
    "so2-gated-escnn": ["--preset", "so2", "--nonlinearity", "gated", "--layer", "escnn", "--widths", "7,7,8,8,11,11"],
    "so2-norm": ["--preset", "so2", "--nonlinearity", "norm", "--widths", "16,16,25,25,32,32"],
    "so2-norm-escnn": ["--preset", "so2", "--nonlinearity", "norm", "--layer", "escnn", "--widths", "7,7,11,11,13,13"],
    # band limit 0.15 cycles per pixel instead of 0.2 (same span and parameter counts), and static PDOs on SO(2)
    "default-bw15": ["--bandwidth", "0.15"],  # 27,454
    "so2-bw15": ["--preset", "so2", "--bandwidth", "0.15"],  # 27,481
    "so2-pdo": ["--preset", "so2", "--layer", "pdo", "--widths", "7,7,11,11,14,14"],  # 27,614
    "so2-bw30": ["--preset", "so2", "--bandwidth", "0.3"],  # 27,481
    # every PDO up to order 4 (angular frequencies 0-4; the generator's hidden fields then have frequencies up to 4)
    "so2-mf4": ["--preset", "so2", "--max-frequency", "none", "--widths", "19,19,28,28,37,37"],  # 27,465
    # D8 (the default skeleton with --flip, D8|5C8) against escnn's R2Conv on the same skeleton
    "d8": ["--flip", "--widths", "10,10,14,14,20,20"],  # 35,848
    "d8-escnn": ["--flip", "--layer", "escnn", "--widths", "4,4,5,5,7,7"],  # 36,004
    # O(2) (the so2 skeleton with --flip) against escnn's R2Conv on the same skeleton
    "o2": ["--preset", "so2", "--flip", "--widths", "12,12,19,19,25,25"],  # 27,108
    "o2-escnn": ["--preset", "so2", "--flip", "--layer", "escnn", "--widths", "5,5,8,8,10,9"],  # 27,277
    # SO(2) with 7x7 stencils (the same orders, frequencies and parameter count; the Gaussian twice as wide)
    "so2-k7": ["--preset", "so2", "--kernel-size", "7"],  # 27,481
    # R2Conv on SO(2) without its outer ring: 3x3 (rings of radius 0 and 1), widths raised to the same parameters
    "so2-escnn-k3": ["--preset", "so2", "--layer", "escnn", "--kernel-size", "3", "--widths", "10,10,14,14,19,19"],
    # static PDOs on SO(2) with their basis orthonormal for the pixels (no band-limited metric), as R2Conv's is
    "so2-pdo-pixels": ["--preset", "so2", "--layer", "pdo", "--bandwidth", "none", "--widths", "7,7,11,11,14,14"],
    # the default C8 network with the SO(2) networks' coefficient form (K = 8 scalar PDOs a field, mixed by the
    # commutant) instead of one PDO per channel: the same parameters (27,454)
    "default-commutant": ["--form", "commutant"],
    # SO(2) / O(2) with the sampled form (each sampled rotation, and reflection, its own PDO) at the presets' widths
    "so2-sampled": ["--preset", "so2", "--form", "sampled"],  # 27,145
    "o2-sampled": ["--preset", "so2", "--flip", "--form", "sampled", "--widths", "12,12,19,19,25,25"],  # 26,628
    # ... O(2) at R2Conv's parameters (27,277) within 0.5%
    "o2-sampled-w13": ["--preset", "so2", "--flip", "--form", "sampled", "--widths", "13,13,19,19,25,25"],  # 27,143
    # ... SO(2) with Adam's steps halved / 1.5x (its seed-to-seed spread: too large a step, or too small?)
    "so2-sampled-lr05": ["--preset", "so2", "--form", "sampled", "--lr-scale", "0.5"],
    "so2-sampled-lr15": ["--preset", "so2", "--form", "sampled", "--lr-scale", "1.5"],
    "so2-escnn-lr15": ["--preset", "so2", "--layer", "escnn", "--widths", "7,7,11,11,14,14", "--lr-scale", "1.5"],
    # ... SO(2) on seed 2's data (its slow seed) with every seed's initialization, order, augmentation and dropout:
    # does the spread follow the data or the rest?
    "so2-sampled-data2": ["--preset", "so2", "--form", "sampled", "--data-seed", "2"],
    "so2-escnn-data2": ["--preset", "so2", "--layer", "escnn", "--widths", "7,7,11,11,14,14", "--data-seed", "2"],
    # ... and seed 2's initial weights with every seed's data, order, augmentation and dropout
    "so2-sampled-init2": ["--preset", "so2", "--form", "sampled", "--init-seed", "2"],
    # ... SO(2) with a wider generator (hidden fields in_type / (2 d), 9 on layer 2, against 4) or two PDO sets (g 2),
    # at R2Conv's parameters (27,634; 27,172)
    # (--dis gauss: this and the preset's other variants below run on Gaussian stencils)
    "so2-sampled-r2": ["--preset", "so2-sampled", "--dis", "gauss"],  # = --preset so2 --form sampled --reduction 2 ...
    "so2-sampled-g2": ["--preset", "so2", "--form", "sampled", "--g", "2", "--widths", "18,18,26,26,34,34"],
    # ... SO(2) with stencils that rotate better off the grid (static PDOs at initialization: RBF-FD 0.47x R2Conv's
    # off-grid error, the band limit 0.15 0.75x, the default Gaussian stencils 1.40x)
    "so2-sampled-rbffd": ["--preset", "so2", "--form", "sampled", "--dis", "rbffd"],
    "so2-sampled-bw15": ["--preset", "so2", "--form", "sampled", "--bandwidth", "0.15"],
    # ... the wider generator again (hidden fields in_type / d, 14 on layer 2), and with the band limit 0.15 or without
    # the 4th-order stencils, at R2Conv's parameters (27,573; 27,634; 27,579)
    "so2-sampled-r1": ["--preset", "so2", "--form", "sampled", "--reduction", "1", "--widths", "14,14,20,20,27,27"],
    "so2-sampled-r2-bw15": ["--preset", "so2-sampled", "--dis", "gauss", "--bandwidth", "0.15"],
    "so2-sampled-r2-o3": "--preset so2-sampled --dis gauss --max-order 3 --widths 16,16,25,25,32,32".split(),
    # O(2) with the preset so2-sampled's 2x generator, at R2Conv's parameters (27,415)
    "o2-sampled-r2": ["--preset", "so2-sampled", "--dis", "gauss", "--flip", "--widths", "11,11,17,17,23,23"],
    # ... and without the 4th-order stencils, whose off-grid error is the largest, at R2Conv's parameters (27,595)
    "so2-sampled-o3": ["--preset", "so2", "--form", "sampled", "--max-order", "3", "--widths", "18,18,27,27,36,36"],
    # ... on Gaussian stencils made exact on polynomials, whose error under a 22.5 degree rotation is 10x below the
    # Gaussian's at orders 3 and 4 (stencil_rotation_error; 27,634): the preset so2-sampled
    "so2-sampled-gaussexact": ["--preset", "so2-sampled", "--dis", "gauss-exact"],
    # ... and the O(2) network of the sampled form on them (27,143)
    "o2-sampled-gaussexact": "--preset so2 --flip --form sampled --dis gauss-exact --widths 13,13,19,19,25,25".split(),
    # escnn's tutorial shape (7x7 lift, 5x5 layers, antialiased pooling; --skeleton tutorial) without dropout, as the
    # tutorial has none: R2Conv (33,710), static PDOs at the same widths (33,689) and Neural ePDOs (33,766)
    "tutorial-escnn": ["--skeleton", "tutorial", "--layer", "escnn", "--dropout", "0", "--widths", "3,6,6,12,12,8"],
    "tutorial-pdo": ["--skeleton", "tutorial", "--layer", "pdo", "--dropout", "0", "--widths", "3,6,6,12,12,8"],
    "tutorial-epdo": ["--skeleton", "tutorial", "--dropout", "0", "--widths", "8,17,17,34,34,22"],
    "pdo": ["--layer", "pdo", "--widths", "5,5,7,7,10,11"],  # static PDOs, escnn's basis sizes: 27,123
    "reference": ["--layer", "reference", "--dis", "fd", "--reduction", "1", "--widths", "8,8,12,12,16,16"],
    "cnn": ["--layer", "cnn"],  # a plain CNN with the default network's parameter count
    # the paper's four MNIST-rot models (C16 / D16, 229,240-525,038 parameters) at about half their widths
    "paper-R-fd": ["--preset", "paper-R-fd", "--widths", "8,12,16,16,24,32"],  # 69,490
    "paper-R-gauss": ["--preset", "paper-R-gauss", "--widths", "8,12,16,16,24,32"],  # 69,490
    "paper-Q-gauss": ["--preset", "paper-Q-gauss", "--widths", "8,8,12,12,16,32"],  # 80,478
    "paper-D16-5C16": ["--preset", "paper-D16-5C16", "--widths", "4,4,8,8,8,16"],  # 87,638
}
"""``epdo-train`` flags of each model (on top of the CLI's defaults: the default network)."""

PROTOCOLS: Dict[str, List[str]] = {
    "screening": ["--dataset", "fashion-rot", "--epochs", "3", "--limit-train", "6000", "--limit-test", "5000"],
    "confirmation": ["--dataset", "fashion-rot", "--epochs", "15", "--limit-test", "5000"],
    "digits": ["--dataset", "mnist10k-rot", "--epochs", "4"],
}
"""Data and budget of each protocol (``epdo-train`` flags)."""


def run_directory(name: str, seed: int, args: argparse.Namespace) -> Path:
    """Where one run writes its checkpoint and metrics (``epdo-train --out``)."""
    return args.runs / args.protocol / f"{name}-seed{seed}"


def train_command(name: str, seed: int, args: argparse.Namespace) -> str:
    """The ``epdo-train`` command line of one run, as the JSON lines record it."""
    flags = [
        *PROTOCOLS[args.protocol],
        *MODELS[name],
        "--seed",
        str(seed),
        "--out",
        str(run_directory(name, seed, args)),
    ]
    return shlex.join(["epdo-train", *flags, "--threads", str(args.threads), "--no-progress"])


def run(name: str, seed: int, args: argparse.Namespace) -> Optional[dict]:
    """One ``epdo-train`` process (``--threads`` torch threads); its printed figures and the harness-only metrics,
    appended to ``--out`` as soon as it ends."""
    line = train_command(name, seed, args)
    done = subprocess.run([sys.executable, "-m", "epdo.train", *shlex.split(line)[1:]], capture_output=True, text=True)
    final = re.search(r"final test error: ([\d.]+)%", done.stdout)
    if done.returncode or final is None:
        print(f"{name} seed {seed} failed (exit {done.returncode}): {done.stderr[-500:]}", file=sys.stderr, flush=True)
        return None
    seconds = [float(s) for s in re.findall(r"\(([\d.]+) s\)$", done.stdout, re.MULTILINE)]
    result = dict(
        model=name,
        seed=seed,
        command=line,
        params=int(re.search(r"([\d,]+) parameters", done.stdout).group(1).replace(",", "")),
        final_error=float(final.group(1)),
        seconds_per_epoch=statistics.mean(seconds),
        **diagnostics(run_directory(name, seed, args) / "checkpoint.pt", args.rotations),
    )
    print(json.dumps(result), flush=True)
    if args.out:
        with _OUT_LOCK, args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")
    return result


_OUT_LOCK = threading.Lock()


def _recorded(path: Optional[Path]) -> Dict[str, dict]:
    """The runs already in the JSON lines at ``path``, by command line: a rerun of a batch skips them."""
    if path is None or not path.exists():
        return {}
    return {r["command"]: r for r in map(json.loads, filter(None, path.read_text().splitlines()))}


def diagnostics(checkpoint: Path, rotations: List[float]) -> dict:
    """The test error (%) at each of ``rotations`` (degrees), as ``epdo-evaluate`` prints it, and the harness-only
    errors (%) of a checkpoint's final weights: with batch statistics, and in eval mode with BatchNorm re-estimated on
    augmented training batches."""
    model, state = load_checkpoint(checkpoint)
    train, test = state.run_data()
    rotated = {f"error_at_{a:g}": 100 * e for a, e in rotation_errors(model, test, rotations)}
    seed = state.training.seed
    generator = torch.Generator().manual_seed(seed)
    augmented = torch.cat([random_rotation(train.images[i : i + 256], generator) for i in range(0, 30 * 64, 256)])
    reestimate_batch_norm(model, augmented, batches=30, batch_size=64, seed=seed)
    augmented_error = evaluate(model, test, batch_size=500)[1]
    for norm in batch_norms(model):  # the rest stays in eval mode (dropout off)
        norm.train()
        norm.momentum = 0.0  # running statistics untouched
    with torch.no_grad():
        wrong = sum(int((model(test.images[i : i + 500]).argmax(1) != test.labels[i : i + 500]).sum())
                    for i in range(0, len(test), 500))  # fmt: skip
    return dict(
        batch_statistics_error=100 * wrong / len(test), augmented_reestimation_error=100 * augmented_error, **rotated
    )


def summarize(results: List[dict]) -> str:
    rows = {}
    for name in dict.fromkeys(r["model"] for r in results):
        runs = sorted((r for r in results if r["model"] == name), key=lambda r: r["seed"])
        rows[name] = {
            "params": f"{runs[0]['params']:,}",
            "epdo-train final test error (%)": _mean_std([r["final_error"] for r in runs]),
            "seed by seed": " / ".join(f"{r['final_error']:.2f}" for r in runs),
            "harness: batch statistics (%)": _mean_std([r["batch_statistics_error"] for r in runs]),
            "harness: BN on augmented images (%)": _mean_std([r["augmented_reestimation_error"] for r in runs]),
            "s / epoch": f"{statistics.mean(r['seconds_per_epoch'] for r in runs):.0f}",
        }
        for key in (k for k in runs[0] if k.startswith("error_at_")):
            rows[name][f"epdo-evaluate at {key[9:]} deg (%)"] = _mean_std([r[key] for r in runs if key in r])
    return markdown_table(rows)


def _mean_std(values: List[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {spread:.2f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="screening")
    parser.add_argument("--models", default="escnn,default,half")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--runs", type=Path, default=Path("runs/accuracy"), help="where the runs write their outputs")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="append each run's figures here (JSON lines); runs already there are not rerun",
    )
    parser.add_argument("--from-results", type=Path, default=None, help="summarize the JSON lines of earlier runs")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    parser.add_argument("--rotations", type=parse_angles, default=[], help="also the test error at these angles")
    args = parser.parse_args(argv)
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    if args.from_results:
        lines = args.from_results.read_text().splitlines()
        results = [r for r in map(json.loads, filter(None, lines)) if r["model"] in names]
    else:
        done = _recorded(args.out)
        jobs = [(name, seed) for seed in range(args.seeds) for name in names]
        with ThreadPoolExecutor(args.workers) as pool:
            runs = pool.map(lambda job: done.get(train_command(*job, args)) or run(*job, args), jobs)
            results = [r for r in runs if r is not None]
    table = summarize(results)
    print(table)
    if args.record:
        command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
        flags = " ".join(PROTOCOLS[args.protocol])
        setup = f"Protocol `{args.protocol}`: `epdo-train {flags}`, seeds 0..{args.seeds - 1}"
        models = ", ".join(f"{n}: `{' '.join(MODELS[n]) or '(defaults)'}`" for n in names)
        record(f"Accuracy ({args.protocol})", command, torch.device("cpu"), f"{setup}; {models}\n\n{table}")


if __name__ == "__main__":
    main()
