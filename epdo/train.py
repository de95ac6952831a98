"""``epdo-train``: train the default Neural ePDO network, a paper model or a baseline on MNIST-rot, rotated
Fashion-MNIST, rotated MNIST digits or synthetic data, and report the final epoch's eval-mode test error.

The recipe (:mod:`epdo.training`): Adam, batch 64, weight decay 1e-4, the paper's step schedule (2e-3 / 2e-4 / 1e-4 /
5e-5 / 2.5e-5 from epochs 0 / 60 / 120 / 150 / 180), random-rotation augmentation, and before each evaluation every
BatchNorm's statistics re-estimated on the stored training images.  Several processes: ``torchrun --nproc_per_node=K
-m epdo.train -- ...`` (the ``--`` keeps torchrun from reading ``--s``/``--g`` as its own options); rank 0 writes.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from epdo.atomic import atomic_path
from epdo.cli import max_frequency, non_negative_int, optional_bandwidth, positive_float, positive_int, widths
from epdo.data import DATASETS, DatasetError, load_dataset
from epdo.diffops import DISCRETIZATIONS
from epdo.models import LAYERS, PRESETS, ModelConfig, build_model, count_parameters, preset
from epdo.plots import plot_curves
from epdo.training import (
    NonFiniteLoss,
    ProcessGroup,
    evaluate,
    learning_rate,
    reestimate_batch_norm,
    save_checkpoint,
    state_dict,
    train_epoch,
    unwrap,
)

METRICS = ("epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "seconds")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="epdo-train", description=__doc__.splitlines()[0])
    model = p.add_argument_group("model (a flag left out keeps the preset's value)", argument_default=argparse.SUPPRESS)
    model.add_argument("--preset", choices=list(PRESETS), help="a named configuration (default: default)")
    model.add_argument(
        "--model",
        choices=["R", "Q"],
        help="the paper's model with regular (R) or regular+quotient (Q) fields; with --flip and --dis it picks the "
        "paper preset (R + fd, R + gauss, Q + gauss, R + gauss + --flip)",
    )
    model.add_argument("--dis", choices=DISCRETIZATIONS, help="derivative stencils")
    model.add_argument("--flip", action=argparse.BooleanOptionalAction, help="the D_N|5C_N model")
    model.add_argument("--g", type=positive_int, help="fields per partition")
    model.add_argument("--s", type=positive_int, help="groups of the generator's output map")
    model.add_argument("--reduction", type=positive_int, help="hidden width reduction of the generator")
    model.add_argument("--layer", choices=LAYERS, help="layers 2-6: epdo, reference, or a baseline (pdo, escnn, cnn)")
    model.add_argument("--group-order", type=positive_int, help="N of C_N / D_N")
    model.add_argument("--widths", type=widths, help="fields of layers 1-6, e.g. 14,14,21,21,28,28")
    model.add_argument(
        "--max-frequency", type=max_frequency, help="highest angular frequency of the PDOs: 'none' or 0..4"
    )
    model.add_argument(
        "--bandwidth", type=optional_bandwidth, help="band limit of the PDO bases: 'none' or cycles/pixel"
    )
    model.add_argument("--dropout", type=float, help="field dropout of layers 3-6")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, default="mnist-rot")
    data.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default $EPDO_DATA or ~/.cache/epdo)")
    data.add_argument("--limit-train", type=positive_int, default=None)
    data.add_argument("--limit-test", type=positive_int, default=None)
    data.add_argument("--no-augment", action="store_true", help="skip the random-rotation augmentation")
    run = p.add_argument_group("training")
    run.add_argument("--epochs", type=positive_int, default=200)
    run.add_argument("--batch-size", type=positive_int, default=64)
    run.add_argument("--weight-decay", type=float, default=1e-4)
    run.add_argument("--lr-scale", type=positive_float, default=1.0, help="multiply the schedule's rates")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument(
        "--bn-batches",
        type=non_negative_int,
        default=30,
        help="before each evaluation, re-estimate BatchNorm statistics over this many batches of the stored training "
        "images with the epoch's final weights, dropout off (0: keep the running averages, as the reference does)",
    )
    run.add_argument(
        "--reset-optimizer-each-epoch", action="store_true", help="re-create Adam every epoch (as the reference does)"
    )
    run.add_argument("--out", type=Path, default=Path("runs/latest"))
    run.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    run.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    run.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The model of parsed ``epdo-train`` arguments: the preset (``--preset``; else the paper model that the seed's
    ``--model/--flip/--dis`` name; else ``default``) with every model flag given applied."""
    given = vars(args)
    name = given.get("preset")
    if name is None and "model" in given:
        if given.get("flip"):
            name = "paper-D16-5C16"
        else:
            name = (
                "paper-Q-gauss"
                if given["model"] == "Q"
                else f"paper-R-{'gauss' if given.get('dis') == 'gauss' else 'fd'}"
            )
    config = preset(name or "default")
    basis = {"discretization": "dis", "max_frequency": "max_frequency", "bandwidth": "bandwidth"}
    fields = ("layer", "flip", "g", "s", "reduction", "group_order", "widths", "dropout")
    changes = {k: given[k] for k in fields if k in given}
    if "model" in given:
        changes["fields"] = {"R": "regular", "Q": "quotient"}[given["model"]]
    basis_changes = {k: given[flag] for k, flag in basis.items() if flag in given}
    return replace(config, basis=replace(config.basis, **basis_changes), **changes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m epdo.train -- --s 4: keeps torchrun from taking --s/--g as its own
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = model_config(args)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    group = ProcessGroup.from_environment(args.device)
    if args.amp and group.device.type != "cuda":
        print("epdo-train: --amp needs a CUDA device", file=sys.stderr)
        group.close()
        return group.finish(2)
    try:
        status = _train(args, config, group)
    except DatasetError as err:
        print(f"epdo-train: {err}", file=sys.stderr)
        status = 1
    except ValueError as err:  # a model its layers refuse (e.g. g that does not divide a width): message, no traceback
        print(f"epdo-train: {err}", file=sys.stderr)
        status = 2
    finally:
        group.close()
    return group.finish(status)


def _train(args: argparse.Namespace, config: ModelConfig, group: ProcessGroup) -> int:
    random.seed(args.seed)
    np.random.seed(args.seed % 2**32)
    torch.manual_seed(args.seed)
    train, test = load_dataset(args.dataset, args.data_dir, seed=args.seed)
    train, test = train.limit(args.limit_train), test.limit(args.limit_test)
    start_time = time.perf_counter()
    model = build_model(config).to(group.device)
    build_seconds = time.perf_counter() - start_time
    if group.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=learning_rate(0) * args.lr_scale, weight_decay=args.weight_decay
    )
    checkpoint = args.out / "checkpoint.pt"
    rows: List[Dict[str, float]] = []
    first_epoch = 0
    if args.resume:
        if not checkpoint.exists():
            print(f"epdo-train: --resume given but {checkpoint} does not exist", file=sys.stderr)
            return 2
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rows, first_epoch = state["metrics"], state["epoch"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
    if group.main:
        args.out.mkdir(parents=True, exist_ok=True)
        print(
            f"{args.dataset}: {len(train)} train / {len(test)} test images; model {_describe(config)}: "
            f"{count_parameters(unwrap(model)):,} parameters, built in {build_seconds:.1f} s; device {group.device}"
            f" x {group.world}",
            flush=True,
        )
    for epoch in range(first_epoch, args.epochs):
        lr = learning_rate(epoch) * args.lr_scale
        if args.reset_optimizer_each_epoch:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=args.weight_decay)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        tic = time.perf_counter()
        progress = None if args.no_progress or not group.main else f"epoch {epoch + 1}/{args.epochs}"
        try:
            train_loss, train_error = train_epoch(
                model, optimizer, train, batch_size=args.batch_size, seed=args.seed * 100003 + epoch,
                augment=not args.no_augment, group=group, autocast=args.amp, progress=progress,
            )  # fmt: skip
        except NonFiniteLoss as err:
            kept = f"the last good checkpoint ({checkpoint}) is kept" if checkpoint.exists() else "no checkpoint yet"
            print(f"epdo-train: stopping at epoch {epoch + 1}: {err}; {kept}", file=sys.stderr)
            return 3
        seed = args.seed * 100003 + epoch * 104729 + 1  # the same batches on every rank: all ranks agree
        reestimate_batch_norm(
            unwrap(model), train.images, batches=args.bn_batches, batch_size=args.batch_size, seed=seed
        )
        test_loss, test_error = evaluate(
            model, test, batch_size=max(args.batch_size, 256), group=group, autocast=args.amp
        )
        row = dict(
            epoch=epoch + 1,
            lr=lr,
            train_loss=train_loss,
            train_error=train_error,
            test_loss=test_loss,
            test_error=test_error,
            seconds=time.perf_counter() - tic,
        )
        rows.append(row)
        if group.main:
            print(
                f"epoch {epoch + 1:3d}/{args.epochs}  lr {lr:.2e}  train loss {train_loss:.4f} error "
                f"{100 * train_error:.2f}%  test loss {test_loss:.4f} error {100 * test_error:.2f}%  "
                f"({row['seconds']:.1f} s)",
                flush=True,
            )
            _write_metrics(rows, args.out / "metrics.csv")
            save_checkpoint(
                checkpoint,
                model=state_dict(unwrap(model)),
                optimizer=optimizer.state_dict(),
                epoch=epoch + 1,
                metrics=rows,
                config=config.as_dict(),
                data=dict(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed, limit_test=args.limit_test),
                rng=dict(torch=torch.get_rng_state(), numpy=np.random.get_state(), python=random.getstate()),
            )
            plot_curves(rows, args.out / "curves.png")
    if group.main and rows:
        best = min(rows, key=lambda r: r["test_error"])
        print(
            f"best test error {100 * best['test_error']:.2f}% at epoch {best['epoch']} "
            "(selected on the test set: not a fair estimate)"
        )
        print(f"final test error: {100 * rows[-1]['test_error']:.2f}% after {rows[-1]['epoch']} epochs")
    return 0


def _write_metrics(rows: List[Dict[str, float]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRICS)
        writer.writeheader()
        writer.writerows(rows)


def _describe(config: ModelConfig) -> str:
    group = f"{'D' if config.flip else 'C'}{config.group_order}{'|5C' + str(config.group_order) if config.flip else ''}"
    widths = ",".join(map(str, config.widths))
    if config.layer in ("escnn", "cnn", "pdo"):
        return f"{config.layer} baseline on {group}, widths {widths}"
    basis = config.basis
    kind = "reference Neural ePDO" if config.layer == "reference" else "Neural ePDO"
    return (
        f"{kind} {config.fields} on {group}, widths {widths}, "
        f"g={config.g} s={config.s} reduction={config.reduction}, {basis.discretization} stencils, "
        f"max frequency {basis.max_frequency}, bandwidth {basis.bandwidth}"
    )


if __name__ == "__main__":
    sys.exit(main())
