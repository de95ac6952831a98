"""``epdo-train``: train the default Neural ePDO network, a paper model or a baseline on MNIST-rot, rotated
Fashion-MNIST, rotated MNIST digits or synthetic data, and report the final epoch's eval-mode test error.

The recipe (:mod:`epdo.training`): Adam, batch 64, weight decay 1e-4, the paper's step schedule (2e-3 / 2e-4 / 1e-4 /
5e-5 / 2.5e-5 from epochs 0 / 60 / 120 / 150 / 180), random-rotation augmentation, and before each evaluation every
BatchNorm's statistics re-estimated on the stored training images.  A checkpoint after every epoch
(:mod:`epdo.checkpoint`); ``--resume`` continues that run, with the model and training configuration it stores.  Several
processes: ``torchrun --nproc_per_node=K -m epdo.train -- ...`` (the ``--`` keeps torchrun from reading ``--s``/``--g``
as its own options); rank 0 writes.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from epdo.atomic import atomic_path
from epdo.checkpoint import (
    Checkpoint,
    load_optimizer_state,
    load_weights,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from epdo.cli import (
    kernel_size,
    max_frequency,
    max_order,
    non_negative_float,
    non_negative_int,
    one_line_warnings,
    optional_bandwidth,
    positive_float,
    positive_int,
    widths,
)
from epdo.data import DATASETS, DatasetError, load_dataset
from epdo.diffops import DISCRETIZATIONS
from epdo.models import LAYERS, NONLINEARITIES, PRESETS, SKELETONS, ModelConfig, build_model, count_parameters, preset
from epdo.nn.neural_epdo import FORMS
from epdo.plots import plot_curves
from epdo.training import (
    NonFiniteLoss,
    ProcessGroup,
    TrainingConfig,
    evaluate,
    learning_rate,
    reestimate_batch_norm,
    state_dict,
    train_epoch,
    unwrap,
)

METRICS = ("epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "seconds")

MODEL_FLAGS = {
    "layer": "--layer", "fields": "--model", "group_order": "--group-order", "flip": "--flip", "widths": "--widths",
    "basis.discretization": "--dis", "basis.max_frequency": "--max-frequency", "basis.bandwidth": "--bandwidth",
    "basis.size": "--kernel-size", "basis.max_order": "--max-order",
    "g": "--g", "s": "--s", "reduction": "--reduction", "dropout": "--dropout", "head": "--head",
    "field_frequency": "--field-frequency", "nonlinearity": "--nonlinearity", "skeleton": "--skeleton",
    "form": "--form",
}  # fmt: skip
"""The flag that sets each field of :class:`epdo.models.ModelConfig` (``basis.*``: of its :class:`PDOBasis`)."""

TRAINING_FLAGS = {
    "dataset": "--dataset", "seed": "--seed", "data_seed": "--data-seed", "init_seed": "--init-seed",
    "limit_train": "--limit-train", "limit_test": "--limit-test", "augment": "--no-augment", "epochs": "--epochs",
    "batch_size": "--batch-size", "weight_decay": "--weight-decay", "lr_scale": "--lr-scale",
    "bn_batches": "--bn-batches", "reset_optimizer_each_epoch": "--reset-optimizer-each-epoch", "amp": "--amp",
}  # fmt: skip
"""The flag that sets each field of :class:`epdo.training.TrainingConfig`."""


def build_parser() -> argparse.ArgumentParser:
    """The parser; model and training flags left out are absent from the namespace (their values come from the
    preset, :class:`epdo.training.TrainingConfig`'s defaults or, with ``--resume``, the checkpoint)."""
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
        "--max-order", type=max_order, help="highest derivative order of the PDOs: 0..4, below the stencils' width"
    )
    model.add_argument(
        "--max-frequency", type=max_frequency, help="highest angular frequency of the PDOs: 'none' or 0..4"
    )
    model.add_argument(
        "--bandwidth", type=optional_bandwidth, help="band limit of the PDO bases: 'none' or cycles/pixel"
    )
    model.add_argument(
        "--kernel-size", type=kernel_size, help="width of every layer's stencils (R2Conv's kernel size), odd; default 5"
    )
    model.add_argument("--dropout", type=float, help="field dropout of layers 3-6")
    model.add_argument("--head", type=non_negative_int, help="hidden units of the classifier (0: one linear map)")
    model.add_argument("--field-frequency", type=positive_int, help="highest frequency of SO(2) fields (preset so2)")
    model.add_argument(
        "--nonlinearity", choices=NONLINEARITIES, help="pointwise (ReLU; Fourier ReLU on SO(2)), gated or norm (SO(2))"
    )
    model.add_argument("--form", choices=FORMS, help="coefficient form of the Neural ePDOs (default: auto)")
    model.add_argument(
        "--skeleton", choices=SKELETONS, help="paper (the default) or tutorial (the shape of escnn's tutorial model)"
    )
    default = TrainingConfig()
    data = p.add_argument_group("data (with --resume: the run's)", argument_default=argparse.SUPPRESS)
    data.add_argument("--dataset", choices=DATASETS, help=f"default: {default.dataset}")
    data.add_argument("--data-dir", type=Path, default=None, help="dataset cache (default $EPDO_DATA or ~/.cache/epdo)")
    data.add_argument(
        "--data-seed",
        type=int,
        help="draw the dataset (fashion-rot's sample and angles, synthetic) from this seed (default: --seed)",
    )
    data.add_argument("--limit-train", type=positive_int, help="the first N training images (default: all)")
    data.add_argument("--limit-test", type=positive_int, help="the first N test images (default: all)")
    data.add_argument(
        "--no-augment", dest="augment", action="store_false", help="skip the random-rotation augmentation"
    )
    run = p.add_argument_group("training (with --resume: the run's; --epochs may raise it)",
                               argument_default=argparse.SUPPRESS)  # fmt: skip
    run.add_argument("--epochs", type=positive_int, help=f"default: {default.epochs}")
    run.add_argument("--batch-size", type=positive_int, help=f"default: {default.batch_size}")
    run.add_argument("--weight-decay", type=non_negative_float, help=f"default: {default.weight_decay}")
    run.add_argument("--lr-scale", type=positive_float, help="multiply the schedule's rates (default: 1)")
    run.add_argument("--seed", type=int, help=f"default: {default.seed}")
    run.add_argument("--init-seed", type=int, help="draw the initial weights from this seed (default: --seed's stream)")
    run.add_argument(
        "--bn-batches",
        type=non_negative_int,
        help="before each evaluation, re-estimate BatchNorm statistics over this many batches of the stored training "
        f"images with the epoch's final weights, dropout off (0: keep the running averages, as the reference does; "
        f"default: {default.bn_batches})",
    )
    run.add_argument(
        "--reset-optimizer-each-epoch", action="store_true", help="re-create Adam every epoch (as the reference does)"
    )
    run.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    session = p.add_argument_group("this process (free on --resume)")
    session.add_argument("--out", type=Path, default=Path("runs/latest"), help="default: runs/latest")
    session.add_argument("--resume", action="store_true", help="continue the run in --out (its checkpoint.pt)")
    session.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    session.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    session.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def model_config(args: argparse.Namespace, base: Optional[ModelConfig] = None) -> ModelConfig:
    """The model of parsed ``epdo-train`` arguments: the preset (``--preset``; else the paper model that the seed's
    ``--model/--flip/--dis`` name; else ``base``, by default the preset ``default``) with every model flag given
    applied."""
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
    config = preset(name) if name else base or preset("default")
    basis = {
        "discretization": "dis",
        "max_order": "max_order",
        "max_frequency": "max_frequency",
        "bandwidth": "bandwidth",
    }
    names = ("layer", "flip", "g", "s", "reduction", "group_order", "widths", "dropout", "head", "field_frequency",
             "nonlinearity", "skeleton", "form")  # fmt: skip
    changes = {k: given[k] for k in names if k in given}
    if "model" in given:
        changes["fields"] = {"R": "regular", "Q": "quotient"}[given["model"]]
    basis_changes = {k: given[flag] for k, flag in basis.items() if flag in given}
    changed = replace(config.basis, **basis_changes)
    if "kernel_size" in given:  # the orders the width holds (3: <= 2)
        changed = changed.of_width(given["kernel_size"])
    return replace(config, basis=changed, **changes)


def training_config(args: argparse.Namespace, base: Optional[TrainingConfig] = None) -> TrainingConfig:
    """``base`` (default: :class:`epdo.training.TrainingConfig`'s defaults) with every training flag given in parsed
    ``epdo-train`` arguments applied."""
    given = vars(args)
    changes = {f.name: given[f.name] for f in fields(TrainingConfig) if f.name in given}
    return replace(base or TrainingConfig(), **changes)


def resumed_configs(args: argparse.Namespace, checkpoint: Checkpoint) -> Tuple[ModelConfig, TrainingConfig]:
    """The model and training configuration of the run ``checkpoint`` continues: its own, with ``--epochs`` the one
    flag that may change them (to at least the epochs done).  Raises ``ValueError`` naming every flag given that
    contradicts the run, with the run's value."""
    given = vars(args)
    model = model_config(args, base=checkpoint.model_config)
    conflicts = []
    chosen = next((f"--{k} {given[k]}" for k in ("preset", "model") if k in given), None)
    stored_model, new_model = _flat(asdict(checkpoint.model_config)), _flat(asdict(model))
    for name, value in new_model.items():
        if value != stored_model[name]:
            flag = MODEL_FLAGS.get(name)  # basis.scale has none: only a preset sets it
            if flag is None or chosen and flag.lstrip("-").replace("-", "_") not in given:  # set by the preset
                conflicts.append(f"{chosen} sets {name} {_shown(value)} (the run's: {_shown(stored_model[name])})")
            else:
                conflicts.append(f"{flag} {_shown(value)} (the run's {name}: {_shown(stored_model[name])})")
    training = training_config(args, base=checkpoint.training)
    for name, value in asdict(training).items():
        stored = getattr(checkpoint.training, name)
        if name != "epochs" and value != stored:
            flag = TRAINING_FLAGS[name]
            shown = flag if isinstance(value, bool) else f"{flag} {_shown(value)}"
            conflicts.append(f"{shown} (the run's {name}: {_shown(stored)})")
    if conflicts:
        raise ValueError(
            f"the run in {args.out} keeps its own model and training configuration, and these flags contradict it: "
            f"{'; '.join(conflicts)}; leave them out, or start a new run in another --out"
        )
    epochs = given.get("epochs", checkpoint.training.epochs)
    if epochs < checkpoint.epoch:
        raise ValueError(f"--epochs {epochs}: the run in {args.out} has already completed {checkpoint.epoch} epochs")
    return model, replace(checkpoint.training, epochs=epochs)


def _flat(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m epdo.train -- --s 4: keeps torchrun from taking --s/--g as its own
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_warnings("epdo-train"):
        return _main(parser, args)


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    checkpoint = None
    if args.resume:
        try:
            checkpoint = read_checkpoint(args.out / "checkpoint.pt")
            config, training = resumed_configs(args, checkpoint)
        except ValueError as err:  # a bad checkpoint file (CheckpointError) or flags that contradict the run
            print(f"epdo-train: --resume: {err}", file=sys.stderr)
            return 2
    else:
        try:
            config, training = model_config(args), training_config(args)
        except (ValueError, TypeError) as err:
            parser.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    group = ProcessGroup.from_environment(args.device)
    if training.amp and group.device.type != "cuda":
        print("epdo-train: --amp needs a CUDA device", file=sys.stderr)
        group.close()
        return group.finish(2)
    try:
        status = _train(args, config, training, checkpoint, group)
    except DatasetError as err:
        print(f"epdo-train: {err}", file=sys.stderr)
        status = 1
    except ValueError as err:  # a model its layers refuse, weights that do not fit (CheckpointError): one line
        print(f"epdo-train: {err}", file=sys.stderr)
        status = 2
    finally:
        group.close()
    return group.finish(status)


def _train(
    args: argparse.Namespace,
    config: ModelConfig,
    training: TrainingConfig,
    resumed: Optional[Checkpoint],
    group: ProcessGroup,
) -> int:
    random.seed(training.seed)
    np.random.seed(training.seed % 2**32)
    torch.manual_seed(training.seed)
    train, test = load_dataset(training.dataset, args.data_dir, seed=training.dataset_seed)
    train, test = train.limit(training.limit_train), test.limit(training.limit_test)
    start_time = time.perf_counter()
    if training.init_seed is None:
        model = build_model(config)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(training.init_seed)
            model = build_model(config)
    model = model.to(group.device)
    build_seconds = time.perf_counter() - start_time
    if group.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=learning_rate(0) * training.lr_scale, weight_decay=training.weight_decay
    )
    path = args.out / "checkpoint.pt"
    rows: List[Dict[str, float]] = []
    first_epoch = 0
    if resumed is not None:
        load_weights(unwrap(model), resumed.model, path)
        load_optimizer_state(optimizer, resumed.optimizer, path)
        rows, first_epoch = list(resumed.metrics), resumed.epoch
        set_rng_state(resumed.rng)
    if group.main:
        args.out.mkdir(parents=True, exist_ok=True)
        print(
            f"{training.dataset}: {len(train)} train / {len(test)} test images; model {_describe(config)}: "
            f"{count_parameters(unwrap(model)):,} parameters, built in {build_seconds:.1f} s; device {group.device}"
            f" x {group.world}" + (f"; resumed after epoch {first_epoch}" if resumed is not None else ""),
            flush=True,
        )
    for epoch in range(first_epoch, training.epochs):
        lr = learning_rate(epoch) * training.lr_scale
        if training.reset_optimizer_each_epoch:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=training.weight_decay)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr
        tic = time.perf_counter()
        progress = None if args.no_progress or not group.main else f"epoch {epoch + 1}/{training.epochs}"
        try:
            train_loss, train_error = train_epoch(
                model, optimizer, train, batch_size=training.batch_size, seed=training.seed * 100003 + epoch,
                augment=training.augment, group=group, autocast=training.amp, progress=progress,
            )  # fmt: skip
        except NonFiniteLoss as err:
            kept = f"the last good checkpoint ({path}) is kept" if path.exists() else "no checkpoint yet"
            print(f"epdo-train: stopping at epoch {epoch + 1}: {err}; {kept}", file=sys.stderr)
            return 3
        seed = training.seed * 100003 + epoch * 104729 + 1  # the same batches on every rank: all ranks agree
        reestimate_batch_norm(
            unwrap(model), train.images, batches=training.bn_batches, batch_size=training.batch_size, seed=seed
        )
        test_loss, test_error = evaluate(
            model, test, batch_size=max(training.batch_size, 256), group=group, autocast=training.amp
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
                f"epoch {epoch + 1:3d}/{training.epochs}  lr {lr:.2e}  train loss {train_loss:.4f} error "
                f"{100 * train_error:.2f}%  test loss {test_loss:.4f} error {100 * test_error:.2f}%  "
                f"({row['seconds']:.1f} s)",
                flush=True,
            )
            save_checkpoint(
                path,
                Checkpoint(
                    model=state_dict(unwrap(model)),
                    optimizer=optimizer.state_dict(),
                    epoch=epoch + 1,
                    metrics=rows,
                    model_config=config,
                    training=training,
                    data_dir=None if args.data_dir is None else str(args.data_dir),
                    rng=rng_state(),
                ),
            )
            _write_metrics(rows, args.out / "metrics.csv")
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
    n = config.group_order
    if n == -1:
        group = "O(2)" if config.flip else "SO(2)"
    else:
        group = f"D{n}|5C{n}" if config.flip else f"C{n}"
    widths = ",".join(map(str, config.widths))
    if config.nonlinearity != "pointwise":
        widths += f", {config.nonlinearity} nonlinearity"
    if config.skeleton != "paper":
        widths += f", {config.skeleton} skeleton"
    if config.layer in ("escnn", "cnn", "pdo"):
        return f"{config.layer} baseline on {group}, widths {widths}"
    basis = config.basis
    kind = "reference Neural ePDO" if config.layer == "reference" else "Neural ePDO"
    if config.form != "auto":
        kind += f" ({config.form} form)"
    return (
        f"{kind} {config.fields} on {group}, widths {widths}, "
        f"g={config.g} s={config.s} reduction={config.reduction}, {basis.discretization} stencils, "
        f"max frequency {basis.max_frequency}, bandwidth {basis.bandwidth}, dropout {config.dropout}, "
        f"classifier {config.head or 'linear'}"
    )


if __name__ == "__main__":
    sys.exit(main())
