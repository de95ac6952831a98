"""Training and evaluation for your own loop and for ``epdo-train``: the paper's learning-rate schedule, one epoch of
Adam on (augmented) images, evaluation, BatchNorm re-estimation, rotated-test errors, checkpoints (saved and
loaded), several processes.

Every function takes plain modules (``torch.nn.Module``) and image sets (:class:`epdo.data.ImageSet`); nothing here
parses arguments or prints.  :class:`ProcessGroup` shards work across ``torchrun`` processes (one process: no
communication).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from epdo.atomic import atomic_path
from epdo.data import ImageSet, random_rotation, rotate_batch
from epdo.models import ModelConfig, build_model

SCHEDULE: Sequence[Tuple[int, float]] = ((0, 2e-3), (60, 2e-4), (120, 1e-4), (150, 5e-5), (180, 2.5e-5))
"""The paper's step schedule, ``(first epoch, learning rate)`` pairs (200 epochs in the paper)."""


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

    Order, augmentation and dropout follow from ``seed`` (and the rank) alone.  ``autocast``: bfloat16 (CUDA);
    ``progress``: a progress bar's description on stderr.  Raises :class:`NonFiniteLoss` on a NaN or infinite loss.
    """
    group = group or ProcessGroup(_device(model))
    model.train()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[group.rank :: group.world]
    rotations = torch.Generator().manual_seed(seed * 7919 + group.rank)
    torch.manual_seed(seed * 31 + group.rank)  # dropout
    loss_sum = wrong = count = 0.0
    batches = range(0, len(order), batch_size)
    if progress is not None:
        from tqdm import tqdm

        batches = tqdm(batches, desc=progress, leave=False, file=sys.stderr)
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


def batch_norms(model: torch.nn.Module) -> List[torch.nn.Module]:
    """Every ``BatchNorm1d/2d/3d`` of ``model`` (escnn's ``InnerBatchNorm`` holds a ``BatchNorm3d``)."""
    types = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    return [m for m in model.modules() if isinstance(m, types)]


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


def save_checkpoint(path: Path, **payload: Any) -> None:
    """``torch.save(payload)`` atomically (``epdo.atomic.atomic_path``)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """``(model, checkpoint)``: the network an ``epdo-train`` checkpoint describes (its ``config``), on the CPU with
    the saved weights, and the checkpoint's dictionary (``data`` names the dataset, seed and test limit).  Raises
    ``ValueError`` for a file that is not such a checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "config" not in state or "data" not in state:
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not an epdo-train checkpoint (found {found})")
    model = build_model(ModelConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    return model, state
