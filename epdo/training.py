"""Training and evaluation for your own loop and for ``epdo-train``: a run's configuration, the paper's learning-rate
schedule, one epoch of Adam on (augmented) images, evaluation, BatchNorm re-estimation, rotated-test errors, several
processes.

Every function takes plain modules (``torch.nn.Module``) and image sets (:class:`epdo.data.ImageSet`); nothing here
parses arguments or prints.  :class:`ProcessGroup` shards work across ``torchrun`` processes (one process: no
communication).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from epdo.data import DATASETS, ImageSet, random_rotation, rotate_batch
from epdo.nn import batch_norms
from epdo.records import checked_fields

SCHEDULE: Sequence[Tuple[int, float]] = ((0, 2e-3), (60, 2e-4), (120, 1e-4), (150, 5e-5), (180, 2.5e-5))
"""The paper's step schedule, ``(first epoch, learning rate)`` pairs (200 epochs in the paper)."""


@dataclass(frozen=True)
class TrainingConfig:
    """How a run trains: its data, budget and recipe, everything but the model that decides its figures (stored in
    checkpoints: a resumed run keeps it, with ``epochs`` the one value it may raise).

    Args:
        dataset: one of ``epdo.data.DATASETS``.
        seed: the batch order, augmentation and dropout, and the data and the initialization unless ``data_seed`` /
            ``init_seed``.
        data_seed: the dataset's draw (``fashion-rot``: its training sample and every image's angle; ``synthetic``:
            its images) from a seed of its own (``None``: ``seed``); ``mnist-rot`` is one fixed set.
        init_seed: the weights' initialization from a seed of its own, the training's draws then starting from
            ``seed`` as if the build drew nothing (``None``: the weights are ``seed``'s first draws).
        limit_train, limit_test: the first images of each split (``None``: all).
        augment: random rotations of the training images (:func:`epdo.data.random_rotation`).
        epochs: epochs to train.
        batch_size: images per step.
        weight_decay: Adam's weight decay.
        lr_scale: the schedule's rates (:data:`SCHEDULE`) multiplied by this.
        bn_batches: batches of the stored training images over which BatchNorm statistics are re-estimated before
            each evaluation (0: the running averages).
        reset_optimizer_each_epoch: a new Adam every epoch (as the reference implementation does).
        amp: bfloat16 autocast (CUDA).
    """

    dataset: str = "mnist-rot"
    seed: int = 0
    data_seed: Optional[int] = None
    init_seed: Optional[int] = None
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    augment: bool = True
    epochs: int = 200
    batch_size: int = 64
    weight_decay: float = 1e-4
    lr_scale: float = 1.0
    bn_batches: int = 30
    reset_optimizer_each_epoch: bool = False
    amp: bool = False

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        for name in ("limit_train", "limit_test", "epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if self.bn_batches < 0 or self.weight_decay < 0 or not 0 < self.lr_scale < float("inf"):
            raise ValueError(
                f"expected bn_batches >= 0, weight_decay >= 0 and a finite lr_scale > 0, got {self.bn_batches}, "
                f"{self.weight_decay} and {self.lr_scale}"
            )

    @property
    def dataset_seed(self) -> int:
        """The seed the dataset is drawn from (``data_seed``, else ``seed``)."""
        return self.seed if self.data_seed is None else self.data_seed

    def as_dict(self) -> Dict[str, Any]:
        """A plain dictionary, as stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> TrainingConfig:
        """The inverse of :meth:`as_dict`; raises ``ValueError`` naming a missing, unknown or ill-typed field.  A
        dictionary without ``data_seed`` / ``init_seed`` (written before they existed) draws its data / weights from
        ``seed``."""
        if isinstance(values, dict):
            values = {"data_seed": None, "init_seed": None, **values}
        return cls(**checked_fields("training configuration", values, _TRAINING_KINDS))


_TRAINING_KINDS = dict(dataset=str, seed=int, data_seed=(int, None), init_seed=(int, None),
                       limit_train=(int, None), limit_test=(int, None), augment=bool, epochs=int, batch_size=int,
                       weight_decay=float, lr_scale=float, bn_batches=int, reset_optimizer_each_epoch=bool,
                       amp=bool)  # fmt: skip


def learning_rate(epoch: int, schedule: Sequence[Tuple[int, float]] = SCHEDULE) -> float:
    """The step schedule's rate at ``epoch`` (0-based)."""
    return [lr for start, lr in schedule if epoch >= start][-1]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


class ProcessGroup:
    """Rank, world size and device of this process, and sums of numbers across processes.  ``ProcessGroup()`` is
    one process; :meth:`from_environment` joins ``torchrun``'s group (gloo on CPU, nccl on CUDA)."""

    def __init__(self, device: Any = "cpu", rank: int = 0, world: int = 1) -> None:
        self.device, self.rank, self.world = torch.device(device), rank, world

    @classmethod
    def from_environment(cls, device: Optional[str] = None) -> ProcessGroup:
        """The group ``torchrun`` describes in ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (one process without
        them); ``device`` defaults to this process's GPU when there is one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        group = cls(device, int(os.environ.get("RANK", "0")), world)
        if world > 1:
            dist.init_process_group("nccl" if group.device.type == "cuda" else "gloo")
        return group

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the process that reports and writes files)."""
        return self.rank == 0

    def sum(self, values: List[float]) -> List[float]:
        """Element-wise sum of ``values`` over all processes."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        """Leave the process group together (a rank that leaves while rank 0 still writes can abort it)."""
        if self.world > 1:
            dist.barrier()
            dist.destroy_process_group()

    def finish(self, status: int) -> int:
        """``status``, returned; a distributed worker ends its process here instead, skipping the interpreter's
        teardown, in which torch's native objects occasionally aborted a finished run ("terminate called without an
        active exception")."""
        if self.world == 1:
            return status
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside ``DistributedDataParallel``, or ``model``."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: ImageSet,
    *,
    batch_size: int,
    seed: int,
    augment: bool = True,
    group: Optional[ProcessGroup] = None,
    autocast: bool = False,
    progress: Optional[str] = None,
) -> Tuple[float, float]:
    """One epoch of ``optimizer`` steps on shuffled batches of ``data`` (randomly rotated with ``augment``,
    :func:`epdo.data.random_rotation`); returns ``(mean loss, error)`` on the batches as trained.

    Order, augmentation and dropout follow from ``seed`` (and the rank) alone; the global random state is left as it
    was.  ``autocast``: bfloat16 (CUDA); ``progress``: a progress bar's description on stderr.  Raises
    :class:`NonFiniteLoss` on a NaN or infinite loss.
    """
    group = group or ProcessGroup(_device(model))
    model.train()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[group.rank :: group.world]
    rotations = torch.Generator().manual_seed(seed * 7919 + group.rank)
    loss_sum = wrong = count = 0.0
    batches = range(0, len(order), batch_size)
    if progress is not None:
        from tqdm import tqdm

        batches = tqdm(batches, desc=progress, leave=False, file=sys.stderr)
    cuda = [group.device.index or 0] if group.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # dropout draws from the seed; the caller's generators are restored
        torch.manual_seed(seed * 31 + group.rank)
        for start in batches:
            index = order[start : start + batch_size]
            x, y = data.images[index], data.labels[index]
            if augment:
                x = random_rotation(x, rotations)
            x, y = x.to(group.device, non_blocking=True), y.to(group.device, non_blocking=True)
            with torch.autocast(group.device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(x).float()
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite loss ({loss.item()}) at batch {start // batch_size}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            wrong += float((logits.argmax(1) != y).sum())
            count += len(y)
    loss_sum, wrong, count = group.sum([loss_sum, wrong, count])
    return loss_sum / count, wrong / count


def evaluate(
    model: torch.nn.Module,
    data: ImageSet,
    *,
    batch_size: int = 256,
    group: Optional[ProcessGroup] = None,
    autocast: bool = False,
) -> Tuple[float, float]:
    """``(mean cross-entropy, error)`` of ``model`` in eval mode over ``data`` (sharded across processes)."""
    group = group or ProcessGroup(_device(model))
    model.eval()
    loss_sum = wrong = 0.0
    with torch.no_grad():
        indices = torch.arange(group.rank, len(data), group.world)
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            x, y = data.images[batch].to(group.device), data.labels[batch].to(group.device)
            with torch.autocast(group.device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            wrong += float((logits.argmax(1) != y).sum())
    loss_sum, wrong = group.sum([loss_sum, wrong])
    return loss_sum / len(data), wrong / len(data)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def reestimate_batch_norm(
    model: torch.nn.Module, images: torch.Tensor, *, batches: int = 30, batch_size: int = 64, seed: int = 0
) -> None:
    """Set every BatchNorm's running statistics to the exact average over ``batches`` batches drawn (from ``seed``)
    from ``images`` ``(N, 1, H, W)``, under the current weights, with dropout off; leaves the model in eval mode.

    Pass the images as the test data looks: the stored training images, not augmented ones (augmentation rotates
    already rotated images once more and blurs them, which shifts the features' statistics).  Eval mode then
    normalizes with statistics of the weights it evaluates and of test-like inputs, instead of a momentum average
    that lags weights still moving and was taken with dropout on.
    """
    norms = batch_norms(model)
    model.eval()
    if not norms or batches == 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: exact over the batches
        m.train()
    device = _device(model)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[: batches * batch_size]
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            model(images[order[start : start + batch_size]].to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.eval()


def rotation_errors(
    model: torch.nn.Module,
    data: ImageSet,
    angles: Sequence[float],
    *,
    batch_size: int = 256,
    progress: bool = False,
) -> List[Tuple[float, float]]:
    """``[(angle, error)]``: eval-mode error on ``data``'s images rotated by ``angle`` degrees counter-clockwise
    (bilinear; multiples of 90 degrees exact).  ``progress``: a progress bar per angle on stderr."""
    model.eval()
    device = _device(model)
    results = []
    with torch.no_grad():
        for index, angle in enumerate(angles):
            wrong = 0
            batches = range(0, len(data), batch_size)
            if progress:
                from tqdm import tqdm

                desc = f"angle {angle:g} deg ({index + 1}/{len(angles)})"
                batches = tqdm(batches, desc=desc, leave=False, file=sys.stderr)
            for start in batches:
                x = data.images[start : start + batch_size]
                quarter = angle / 90.0
                if abs(quarter - round(quarter)) < 1e-9:
                    x = torch.rot90(x, int(round(quarter)) % 4, dims=(2, 3))
                else:
                    x = rotate_batch(x, torch.full((len(x),), math.radians(angle)), mode="bilinear")
                wrong += int((model(x.to(device)).argmax(1).cpu() != data.labels[start : start + batch_size]).sum())
            results.append((angle, wrong / len(data)))
    return results


def state_dict(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Parameters and buffers as training mode has them (escnn's ``R2Conv`` adds eval-only buffers), on the CPU."""
    training = model.training
    model.train()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model.train(training)
    return state
