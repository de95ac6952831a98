"""``epdo-train`` checkpoints: tensors and plain data only (format :data:`FORMAT`), written atomically, read back
with ``torch.load(weights_only=True)`` (nothing in the file can run code) and checked field by field, so that a bad
file is one :class:`CheckpointError` naming the file and what is wrong with it."""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from epdo.atomic import atomic_path
from epdo.data import ImageSet, load_dataset
from epdo.models import ModelConfig, build_model
from epdo.records import checked_fields
from epdo.training import TrainingConfig

FORMAT = 1
"""The layout this version writes and reads; every checkpoint stores it under ``"format"``."""

_FIELDS = dict(format=int, model=dict, optimizer=dict, epoch=int, metrics=list, model_config=dict,
               training=dict, data_dir=(str, None), rng=dict)  # fmt: skip


class CheckpointError(ValueError):
    """A file that is not a readable ``epdo-train`` checkpoint of :data:`FORMAT`: missing, truncated, damaged, of
    another format, holding Python objects other than tensors and plain data, or with a missing or ill-typed field.
    The message is one line that names the file."""


@dataclass
class Checkpoint:
    """What an ``epdo-train`` checkpoint holds after ``epoch`` epochs.

    Args:
        model: parameters and buffers as training mode has them, on the CPU (:func:`epdo.training.state_dict`).
        optimizer: the optimizer's ``state_dict()``.
        epoch: epochs completed.
        metrics: one row per completed epoch (``{"epoch": 1.0, "test_error": 0.25, ...}``).
        model_config: the network (:func:`epdo.models.build_model`).
        training: the run's data, budget and recipe.
        data_dir: where the data was read from (``None``: the default directory).
        rng: the torch, numpy and python generators' states (:func:`rng_state`).
    """

    model: Dict[str, torch.Tensor]
    optimizer: Dict[str, Any]
    epoch: int
    metrics: List[Dict[str, float]]
    model_config: ModelConfig
    training: TrainingConfig
    data_dir: Optional[str]
    rng: Dict[str, Any]

    def run_data(
        self, data_dir: Optional[os.PathLike] = None, limit_test: Optional[int] = None
    ) -> Tuple[ImageSet, ImageSet]:
        """The run's training and test images: its dataset, seed and limits (``limit_test`` replaces the run's), read
        from ``data_dir`` or the run's data directory.  Raises :class:`epdo.data.DatasetError`."""
        training = self.training
        train, test = load_dataset(training.dataset, data_dir or self.data_dir, seed=training.dataset_seed)
        return train.limit(training.limit_train), test.limit(limit_test or training.limit_test)

    def as_dict(self) -> Dict[str, Any]:
        """The file's content: tensors, numbers, strings, ``None``, lists and dictionaries of them."""
        return dict(
            format=FORMAT,
            model=self.model,
            optimizer=self.optimizer,
            epoch=self.epoch,
            metrics=self.metrics,
            model_config=self.model_config.as_dict(),
            training=self.training.as_dict(),
            data_dir=self.data_dir,
            rng=self.rng,
        )


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (``epdo.atomic.atomic_path``): a reader, or a run killed while
    writing, finds the previous file or the whole new one."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint.as_dict(), tmp)


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in ``path``, every field checked; nothing in the file runs (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, empty, truncated or damaged, not a checkpoint, of another format, holds
            other Python objects, or a field is missing or ill-typed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty, not a checkpoint")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure of the reader is a bad file; nothing in it ran
        if isinstance(error, pickle.UnpicklingError) and "Weights only load failed" in str(error):
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused: it holds Python objects{what} beside tensors and plain data, which could run code "
                f"when loaded (nothing in it ran); checkpoints of format {FORMAT} never do: this is an older epdo's "
                "checkpoint or another program's file"
            ) from None
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path}: not a readable checkpoint: not the zip archive torch.save writes (truncated, damaged, or "
                "another kind of file)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint, damaged ({_reason(error)})") from None
    if not isinstance(content, dict) or "format" not in content:
        found = sorted(map(str, content))[:8] if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{path}: not an epdo-train checkpoint of format {FORMAT} (found {found})")
    stored = content["format"]
    if type(stored) is not int or stored != FORMAT:
        shown = stored if type(stored) is int else f"{type(stored).__name__} {_reason(stored)[:40]}"
        raise CheckpointError(f"{path}: a checkpoint of format {shown}; this epdo reads format {FORMAT} only")
    try:
        fields = checked_fields("checkpoint", content, _FIELDS)
        checkpoint = Checkpoint(
            model=_tensors(fields["model"]),
            optimizer=_optimizer_state(fields["optimizer"]),
            epoch=fields["epoch"],
            metrics=_metrics(fields["metrics"]),
            model_config=ModelConfig.from_dict(fields["model_config"]),
            training=TrainingConfig.from_dict(fields["training"]),
            data_dir=fields["data_dir"],
            rng=_checked_rng(fields["rng"]),
        )
        if not 0 <= checkpoint.epoch == len(checkpoint.metrics):
            raise ValueError(f"epoch {checkpoint.epoch} with {len(checkpoint.metrics)} rows of metrics")
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {_reason(error)}") from None
    return checkpoint


def load_checkpoint(path: Path) -> Tuple[torch.nn.Module, Checkpoint]:
    """``(model, checkpoint)``: the network the checkpoint in ``path`` describes, on the CPU in training mode with its
    weights, and the checkpoint (:func:`read_checkpoint`).  Raises :class:`CheckpointError` for a bad file,
    including weights that do not fit the configuration."""
    checkpoint = read_checkpoint(path)
    try:
        model = build_model(checkpoint.model_config)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: its model configuration builds no network ({_reason(error)})") from None
    load_weights(model, checkpoint.model, path)
    return model, checkpoint


def load_weights(model: torch.nn.Module, weights: Dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(weights)`` after checking names and shapes: raises :class:`CheckpointError` naming the
    first name missing, unexpected or of another shape (``path`` names the file)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    resized = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or resized:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        if resized:
            key = resized[0]
            shapes = f"{tuple(weights[key].shape)} where the model has {tuple(expected[key].shape)}"
            parts.append(f"{len(resized)} of another shape (first {key!r}: {shapes})")
        raise CheckpointError(f"{path}: the weights do not fit the model of its configuration: {'; '.join(parts)}")
    model.load_state_dict(weights)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Dict[str, Any], path: Path) -> None:
    """``optimizer.load_state_dict(state)``, checking that every per-parameter tensor has its parameter's shape:
    raises :class:`CheckpointError` otherwise."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{path}: the optimizer state does not fit the model ({_reason(error)})") from None
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != parameter.shape:
                    raise CheckpointError(
                        f"{path}: the optimizer's {name!r} has shape {tuple(value.shape)} for a parameter of shape "
                        f"{tuple(parameter.shape)}"
                    )


def rng_state() -> Dict[str, Any]:
    """The torch, numpy (legacy global) and python generators' states as tensors and plain types."""
    numpy = np.random.get_state(legacy=False)
    version, words, gauss = random.getstate()
    return dict(
        torch=torch.get_rng_state(),
        numpy=dict(
            key=torch.from_numpy(numpy["state"]["key"].astype(np.int64)),
            pos=int(numpy["state"]["pos"]),
            has_gauss=int(numpy["has_gauss"]),
            gauss=float(numpy["gauss"]),
        ),
        python=dict(version=version, words=torch.tensor(words, dtype=torch.int64), gauss=gauss),
    )


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the generators from :func:`rng_state`'s result."""
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        dict(
            bit_generator="MT19937",
            state=dict(key=numpy["key"].numpy().astype(np.uint32), pos=numpy["pos"]),
            has_gauss=numpy["has_gauss"],
            gauss=numpy["gauss"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["words"].tolist()), python["gauss"]))


def _checked_rng(state: Any) -> Dict[str, Any]:
    state = checked_fields("checkpoint: rng", state, dict(torch=torch.Tensor, numpy=dict, python=dict))
    numpy = checked_fields("checkpoint: rng.numpy", state["numpy"], dict(key=torch.Tensor, pos=int, has_gauss=int,
                                                                          gauss=float))  # fmt: skip
    python = checked_fields("checkpoint: rng.python", state["python"], dict(version=int, words=torch.Tensor,
                                                                            gauss=(float, None)))  # fmt: skip
    reference = rng_state()
    for name, value, like in (
        ("rng.torch", state["torch"], reference["torch"]),
        ("rng.numpy.key", numpy["key"], reference["numpy"]["key"]),
        ("rng.python.words", python["words"], reference["python"]["words"]),
    ):
        if value.dtype != like.dtype or value.shape != like.shape:
            raise ValueError(
                f"{name} must be a {like.dtype} tensor of shape {tuple(like.shape)}, got {value.dtype} "
                f"{tuple(value.shape)}"
            )
    if not 0 <= numpy["pos"] <= 624 or python["version"] != reference["python"]["version"]:
        raise ValueError(f"rng: position {numpy['pos']} or python version {python['version']} out of range")
    if not (numpy["key"] >= 0).all() or not (numpy["key"] < 2**32).all():
        raise ValueError("rng.numpy.key: values outside 32 bits")
    return state


def _tensors(weights: Dict[Any, Any]) -> Dict[str, torch.Tensor]:
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"field 'model' must map names to tensors, got {type(key).__name__}: {type(value).__name__}"
            )
    return weights


def _optimizer_state(state: Dict[str, Any]) -> Dict[str, Any]:
    state = checked_fields("checkpoint: optimizer", state, dict(state=dict, param_groups=list))
    if not all(isinstance(group, dict) and isinstance(group.get("params"), list) for group in state["param_groups"]):
        raise ValueError("optimizer: every parameter group must be a dictionary with a list of 'params'")
    return state


def _metrics(rows: List[Any]) -> List[Dict[str, float]]:
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in row.items()
        ):
            raise ValueError(f"metrics: row {number} is not a dictionary of numbers")
    return rows


def _reason(error: BaseException) -> str:
    """An exception's message on one line, at most 300 characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."
