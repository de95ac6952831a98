"""Accuracy per parameter on rotated Fashion-MNIST: Neural ePDO variants against escnn ``R2Conv``, static-PDO and
plain-CNN baselines at matched parameter counts, several seeds, side by side in one run.

Per epoch and model: eval-mode test error, training error (train mode, on the augmented batches as trained) and
seconds; after the last epoch also the same weights' test error with batch statistics (what eval mode would give if
BN's running statistics were right) and the eval-mode error after re-estimating BN's statistics with the final
weights (:func:`recalibrated_error`).  Jobs (model, seed) run in ``--workers`` processes; every job sees the same
data, batches and augmentation for a given seed.

Screening (the issue's protocol)::

    python benchmarks/accuracy.py --models epdo,epdo-l1,pdo,escnn,cnn --train 6000 --test 5000 --epochs 3 --seeds 3

A model name may end in ``@K`` to scale its learning rate (and the schedule) by ``K``: ``--models pdo@1,pdo@3`` compares
the static PDO network at Adam 2e-3 and 6e-3 side by side.

Confirmation: ``--train 12000 --epochs 15 --seeds 2 --compress-schedule`` (the paper's 200-epoch step schedule
compressed in proportion).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from common import machine_description, markdown_table, record
from escnn import nn

from epdo.data import load_dataset, random_rotation
from epdo.kernels import DEFAULT_BANDWIDTH
from epdo.models import count_parameters, mnist_rot_model
from epdo.nn import NeuralePDO, PDOConv
from epdo.runtime import tune_malloc
from epdo.train import batch_norms, learning_rate, reestimate_batch_norm

BASE_WIDTHS = (8, 8, 12, 12, 16, 16)
COMMON = dict(group_order=8, g=2, s=1, reduction=1, discretization="fd")
VARIANTS: Dict[str, dict] = {
    "epdo": {},  # the library's default Neural ePDO
    "epdo-white": dict(bandwidth=None),  # plain orthonormal bases (white-noise filters at init; default before)
    "epdo-bw15": dict(bandwidth=0.15),
    "epdo-bw10": dict(bandwidth=0.1),
    "epdo-bw30": dict(bandwidth=0.3),
    "epdo-l1": dict(normalization="l1"),  # the reference's L1 tap normalization (default before issue 8)
    "epdo-ref": dict(normalization="l1", generator_init="reference", bandwidth=None, mix_gain=1.0),  # the reference
    "epdo-frozen": dict(frozen_adaptivity=True),  # diagnostic: the generator stays static (no adaptivity)
    "epdo-gauss": dict(discretization="gauss"),
    "epdo-lift-escnn": dict(lift="escnn"),  # diagnostic: layer 1 an escnn R2Conv 5x5 instead of a PDOConv
    # diagnostics: a NeuralePDO map's initial weights scaled by 1/3; its layer is scale-invariant in them (per-pixel tap
    # normalization, FieldNorm, the next BN), so under Adam this acts as a 3x learning rate for those weights alone
    "epdo-gen3": dict(init_scale=dict(generator_out=1 / 3)),
    "epdo-in3": dict(init_scale=dict(generator_in=1 / 3)),
    "epdo-mix3": dict(init_scale=dict(mix=1 / 3)),
    "epdo-all3": dict(init_scale=dict(generator_in=1 / 3, generator_out=1 / 3, mix=1 / 3)),
    "epdo-mixg1": dict(mix_gain=1.0),  # the output mix without a gain (default before issue 8's gain)
    "epdo-mixg3": dict(mix_gain=3.0),
    "epdo-mixg4": dict(mix_gain=15**0.5),  # the mix learns at a PDOConv's rate: sqrt(n_operators) its fan-in ratio
    "epdo-mixg6": dict(mix_gain=6.0),
    "epdo-mixg9": dict(mix_gain=9.0),
    "epdo-o3": dict(max_order=3, match=True),  # derivatives up to order 3 (10 operators), widths matched
    "epdo-o2": dict(max_order=2, match=True),  # up to order 2 (6 operators, 3x3 support), widths matched
    # where the parameters go: the generator's output map holds ~55% of them; cheaper generators, widths matched
    "epdo-s2": dict(s=2, match=True),  # the generator's output map in 2 groups (half its parameters)
    "epdo-r2": dict(reduction=2, match=True),  # hidden width halved
    # escnn's 5x5 filter space: angular frequencies 0-2 only (11 of 15 operator dimensions), widths matched
    "epdo-f2": dict(max_frequency=2, match=True),
    "pdo-f2": dict(baseline="pdo", max_frequency=2),
    # the radial profile: escnn's filter-space dimension with other stencils (escnn: Gaussian rings of radius 0, 1, 2)
    "pdo-f2-gauss": dict(baseline="pdo", max_frequency=2, discretization="gauss"),
    "pdo-f2-rbffd": dict(baseline="pdo", max_frequency=2, discretization="rbffd"),
    "epdo-f2r2": dict(max_frequency=2, reduction=2, match=True),  # both
    "epdo-r4": dict(reduction=4, match=True),
    "epdo-f2r4": dict(max_frequency=2, reduction=4, match=True),
    "epdo-f2r4-gauss": dict(max_frequency=2, reduction=4, discretization="gauss", match=True),
    "pdo": dict(baseline="pdo"),
    "pdo-o3": dict(baseline="pdo", max_order=3),
    "pdo-o2": dict(baseline="pdo", max_order=2),
    "pdo-white": dict(baseline="pdo", bandwidth=None),
    "pdo-lift-escnn": dict(baseline="pdo", lift="escnn"),
    "escnn": dict(baseline="escnn"),
    "escnn-lift-pdo": dict(baseline="escnn", lift="pdo"),  # diagnostic: layer 1 a PDOConv (fd) instead
    "cnn": dict(baseline="cnn"),
}
MATCHED = ("pdo", "escnn")  # baselines whose widths are scaled to the target parameter count (cnn matches itself)
# (variants with ``match=True`` too)


def variant(spec: str) -> str:
    """The ``VARIANTS`` name of a model spec ``NAME`` or ``NAME@K``."""
    return spec.split("@")[0]


def lr_scale(spec: str) -> float:
    """The learning-rate factor ``K`` of a model spec ``NAME@K`` (1 without one)."""
    return float(spec.split("@")[1]) if "@" in spec else 1.0


def build(name: str, widths) -> torch.nn.Module:
    options = {**COMMON, **VARIANTS[variant(name)]}
    frozen = options.pop("frozen_adaptivity", False)
    options.pop("match", None)
    init_scale = options.pop("init_scale", {})
    lift = options.pop("lift", None)
    model = mnist_rot_model(widths=widths, **options).train()
    if lift is not None:  # swap layer 1 (the lift from the image to the first fields)
        first = model.body._modules["0"]
        model.body._modules["0"] = (
            nn.R2Conv(first.in_type, first.out_type, 5, padding=2, bias=False)
            if lift == "escnn"
            else PDOConv(
                first.in_type,
                first.out_type,
                options["discretization"],
                bandwidth=options.get("bandwidth", DEFAULT_BANDWIDTH),
            )
        )
    for module in (m for m in model.modules() if isinstance(m, NeuralePDO)):
        if frozen:  # per-pixel coefficients stay constant: a static PDO
            module.generator_norm.weight.requires_grad_(False)
        with torch.no_grad():
            for name, factor in init_scale.items():
                for weight in getattr(module, name).filter_expansion.parameters():
                    weight.mul_(factor)
    return model


def widths_for(name: str, target: int) -> tuple:
    """``BASE_WIDTHS`` for Neural ePDOs; for matched models ``round(k * BASE_WIDTHS)`` closest to ``target``, then
    single layers one field (Neural ePDOs: ``g`` fields) wider or narrower while that brings the count closer."""
    options = VARIANTS[variant(name)]
    if options.get("baseline") not in MATCHED and not options.get("match"):
        return BASE_WIDTHS
    step = 1 if options.get("baseline") in MATCHED else options.get("g", COMMON["g"])  # a Neural ePDO's g divides them

    def gap(widths) -> float:
        if min(widths) < 1 or any(w % step for w in widths):
            return float("inf")
        try:
            return abs(count_parameters(build(name, widths)) - target)
        except ValueError:  # a configuration the layers refuse (e.g. a hidden width of 0 at reduction 4)
            return float("inf")

    scaled = {tuple(max(step, step * round(i / 32 * w / step)) for w in BASE_WIDTHS) for i in range(8, 97)}
    best = min(scaled, key=gap)
    improved = True
    while improved:
        neighbours = [best[:i] + (best[i] + d,) + best[i + 1 :] for i in range(6) for d in (-step, step)]
        candidate = min(neighbours, key=gap)
        improved = gap(candidate) < gap(best)
        best = candidate if improved else best
    return best


def error(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> float:
    wrong = 0
    with torch.no_grad():
        for start in range(0, len(labels), 500):
            x, y = images[start : start + 500].to(device), labels[start : start + 500].to(device)
            wrong += int((model(x).argmax(1) != y).sum())
    return wrong / len(labels)


def batch_statistics_error(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, device) -> float:
    """Test error with every batch norm using the statistics of the evaluated batch (running statistics untouched,
    everything else in eval mode)."""
    norms = batch_norms(model)
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.train()
        m.momentum = 0.0
    try:
        return error(model, images, labels, device)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()


def recalibrated_error(
    model: torch.nn.Module, train, test, device, seed: int, augment: bool, batches: int = 30
) -> float:
    """Eval-mode test error after re-estimating BN's running statistics with the final weights
    (:func:`epdo.train.reestimate_batch_norm`: the exact average over ``batches`` training batches, dropout off),
    augmented as in training or not (the stored training images are rotated once, bilinearly, like the test images).
    Running statistics are restored afterwards.

    Separates the causes of an eval/batch-statistics gap: statistics that lag weights still moving or were taken with
    dropout on (re-estimating on augmented batches closes them) and augmented training inputs that differ from test
    inputs (only re-estimating on the stored images closes it)."""
    norms = batch_norms(model)
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    reestimate_batch_norm(model, train.images, batches, 64, augment, seed + 424242)
    try:
        return error(model, test.images, test.labels, device)
    finally:
        for m, state in zip(norms, saved):
            m.load_state_dict(state)


def run_job(args: argparse.Namespace) -> dict:
    """Train one (model, seed) and return its per-epoch metrics."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    tune_malloc()  # faster CPU training; the same for every model
    torch.set_num_threads(args.threads)
    train, test = load_dataset("fashion-rot", seed=args.seed)
    train, test = train.limit(args.train), test.limit(args.test)
    torch.manual_seed(args.seed)
    model = build(args.model, tuple(args.widths)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    epochs = []
    for epoch in range(args.epochs):
        scheduled = int(epoch * 200 / args.epochs) if args.compress_schedule else 0
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(scheduled) * lr_scale(args.model)
        model.train()
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed * 1009 + epoch))
        augment = torch.Generator().manual_seed(args.seed * 7919 + epoch)
        torch.manual_seed(args.seed * 31 + epoch)  # dropout
        wrong = 0
        tic = time.perf_counter()
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            x = train.images[index]
            x = (random_rotation(x, augment) if args.augment else x).to(device)
            y = train.labels[index].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            wrong += int((logits.argmax(1) != y).sum())
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tic
        model.eval()
        metrics = dict(
            train_error=wrong / len(order), test_error=error(model, test.images, test.labels, device), seconds=seconds
        )
        if epoch == args.epochs - 1:  # the diagnostics cost five passes over the test set: final weights only
            metrics.update(
                batch_stats_error=batch_statistics_error(model, test.images, test.labels, device),
                recalibrated_error=recalibrated_error(model, train, test, device, args.seed * 13 + epoch, True),
                recalibrated_stored_error=recalibrated_error(model, train, test, device, args.seed * 13 + epoch, False),
            )
        epochs.append(metrics)
        print(args.model, args.seed, epoch + 1, epochs[-1], file=sys.stderr, flush=True)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_description(device)
    return dict(
        model=args.model,
        seed=args.seed,
        params=count_parameters(model),
        widths=args.widths,
        epochs=epochs,
        machine=f"{machine}, torch {torch.__version__}" if device.type == "cuda" else machine,
    )


def pm(values: List[float]) -> str:
    mean = 100 * statistics.mean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def summarize(results: List[dict], epochs: int) -> str:
    rows = {}
    for name in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == name]
        row = {"params": f"{runs[0]['params']:,}"}
        for e in range(epochs):
            row[f"test err ep {e + 1} (%)"] = pm([r["epochs"][e]["test_error"] for r in runs])
        row["batch-stat test err (%)"] = pm([r["epochs"][-1]["batch_stats_error"] for r in runs])
        if all("recalibrated_error" in r["epochs"][-1] for r in runs):
            row["BN re-estimated, augmented (%)"] = pm([r["epochs"][-1]["recalibrated_error"] for r in runs])
        if all("recalibrated_stored_error" in r["epochs"][-1] for r in runs):
            row["BN re-estimated, stored (%)"] = pm([r["epochs"][-1]["recalibrated_stored_error"] for r in runs])
        row["train err (%)"] = pm([r["epochs"][-1]["train_error"] for r in runs])
        row["s / epoch"] = f"{statistics.mean(e['seconds'] for r in runs for e in r['epochs']):.1f}"
        rows[name] = row
    return markdown_table(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="epdo,epdo-l1,pdo,escnn,cnn")
    parser.add_argument("--train", type=int, default=6000, help="training images (of the 12,000)")
    parser.add_argument("--test", type=int, default=5000, help="test images (of the 10,000)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--compress-schedule", action="store_true", help="the paper's schedule over --epochs")
    parser.add_argument(
        "--no-augment", dest="augment", action="store_false", help="train on the stored images (no rotation)"
    )
    parser.add_argument("--workers", type=int, default=1, help="jobs in parallel")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per job")
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of every job (appended)")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--title", default="Accuracy per parameter")
    parser.add_argument("--from-results", type=Path, default=None, help="summarize/record a finished run's JSON lines")
    parser.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--widths", type=int, nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(args)), flush=True)
        return
    names = args.models.split(",")
    unknown = [n for n in names if variant(n) not in VARIANTS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(VARIANTS)}")
    if args.from_results:
        results = [json.loads(line) for line in args.from_results.read_text().splitlines() if line.strip()]
        results = [r for r in results if r["model"] in names]
    else:
        results = run_jobs(args, names)
    results.sort(key=lambda r: (names.index(r["model"]), r["seed"]))
    table = summarize(results, args.epochs)
    print(table)
    if args.record:
        command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
        command = command.split(" --from-results")[0].replace(" --record", "")
        schedule = "the paper's schedule compressed to" if args.compress_schedule else "Adam 2e-3 for all"
        schedule = schedule if args.augment else "no augmentation, " + schedule
        widths = {r["model"]: r["widths"] for r in results}
        setup = (
            f"fashion-rot, first {args.train} training / {args.test} test images, {schedule} {args.epochs} epochs, "
            f"batch 64, C8, seeds 0..{args.seeds - 1}, mean ± std; widths: "
            + ", ".join(f"{n} {','.join(map(str, w))}" for n, w in widths.items())
        )
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        record(args.title, command, device, setup + "\n\n" + table, machine=results[0]["machine"])


def run_jobs(args: argparse.Namespace, names: List[str]) -> List[dict]:
    """Every (model, seed) in its own process, ``args.workers`` at a time; a failed job is reported and skipped."""
    target = count_parameters(build("epdo", BASE_WIDTHS))
    matched = {name: widths_for(name, target) for name in dict.fromkeys(map(variant, names))}
    widths = {name: matched[variant(name)] for name in names}
    for seed in range(args.seeds):  # build the dataset caches once, before the workers start
        load_dataset("fashion-rot", seed=seed)
    shared = ["--train", str(args.train), "--test", str(args.test), "--epochs", str(args.epochs)]
    shared += ["--threads", str(args.threads)] + (["--compress-schedule"] if args.compress_schedule else [])
    shared += [] if args.augment else ["--no-augment"]
    shared += ["--device", args.device] if args.device else []

    def launch(job) -> Optional[dict]:
        name, seed = job
        command = [sys.executable, __file__, "--job", "--model", name, "--seed", str(seed), *shared]
        command += ["--widths", *map(str, widths[name])]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            print(f"job {name} seed {seed} failed (exit {done.returncode})", file=sys.stderr, flush=True)
            return None
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(result) + "\n")
        return result

    jobs = [(name, seed) for seed in range(args.seeds) for name in names]
    with ThreadPoolExecutor(args.workers) as pool:
        return [r for r in pool.map(launch, jobs) if r is not None]


if __name__ == "__main__":
    main()
