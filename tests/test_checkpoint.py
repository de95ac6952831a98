"""Checkpoints: nothing in a file runs, every bad file is one clear line, a resume continues the same run, and a killed
run loses nothing."""

import os
import random
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import torch

from epdo.checkpoint import (
    FORMAT,
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    rng_state,
    set_rng_state,
)
from epdo.data import load_dataset
from epdo.evaluate import main as evaluate_main
from epdo.models import ModelConfig
from epdo.models.config import _BASIS_KINDS, _MODEL_KINDS
from epdo.train import main as train_main
from epdo.training import _TRAINING_KINDS, TrainingConfig

TINY = [
    "--dataset", "synthetic", "--group-order", "4", "--widths", "4,4,4,4,4,4",
    "--limit-train", "64", "--limit-test", "32", "--batch-size", "16", "--no-progress", "--threads", "1",
]  # fmt: skip


class RunsCode:
    """Unpickling this object calls ``os.system``: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run's directory (its checkpoint.pt is copied, never changed)."""
    out = tmp_path_factory.mktemp("run")
    assert train_main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def content(path):
    return torch.load(path, weights_only=True)


def test_the_kinds_checked_are_the_configurations_fields():
    assert list(_MODEL_KINDS) == [f.name for f in fields(ModelConfig)]
    assert list(_TRAINING_KINDS) == [f.name for f in fields(TrainingConfig)]
    assert list(_BASIS_KINDS) == [f.name for f in fields(ModelConfig().basis)]


def test_a_checkpoint_is_tensors_and_plain_data(trained):
    checkpoint = read_checkpoint(trained / "checkpoint.pt")
    assert content(trained / "checkpoint.pt")["format"] == FORMAT
    assert checkpoint.epoch == 1 and len(checkpoint.metrics) == 1
    assert checkpoint.training == TrainingConfig(
        dataset="synthetic", limit_train=64, limit_test=32, epochs=1, batch_size=16
    )
    assert checkpoint.model_config == ModelConfig(group_order=4, widths=(4,) * 6)
    model, again = load_checkpoint(trained / "checkpoint.pt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in checkpoint.model.items())


def test_generator_states_round_trip():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    state = rng_state()
    expected = (torch.rand(3), np.random.standard_normal(4), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    set_rng_state(state)
    again = (torch.rand(3), np.random.standard_normal(4), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_checkpoint_carrying_a_callable_is_refused_and_nothing_runs(trained, tmp_path, capsys):
    marker = tmp_path / "ran"
    hostile = content(trained / "checkpoint.pt")
    hostile["extra"] = RunsCode(marker)
    path = tmp_path / "model.pt"
    torch.save(hostile, path)
    with pytest.raises(CheckpointError, match=r"refused: it holds Python objects \(posix.system\)"):
        load_checkpoint(path)
    assert evaluate_main(["--checkpoint", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refused" in err and "Traceback" not in err
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    os.replace(path, resumed / "checkpoint.pt")
    assert train_main([*TINY, "--epochs", "2", "--out", str(resumed), "--resume"]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()  # nothing ran, through the library or either command


def test_the_command_refuses_a_hostile_file_in_one_line_in_a_fresh_process(trained, tmp_path):
    marker = tmp_path / "ran"
    hostile = content(trained / "checkpoint.pt")
    hostile["model"] = {"weight": RunsCode(marker)}
    torch.save(hostile, tmp_path / "model.pt")
    done = subprocess.run(
        [sys.executable, "-m", "epdo.evaluate", "--checkpoint", str(tmp_path / "model.pt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and not marker.exists()
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("epdo-evaluate: ") and "refused" in done.stderr


def _edited(trained, edit):
    state = content(trained / "checkpoint.pt")
    edit(state)
    return state


BAD_CONTENT = {
    "a tensor, not a dictionary": (lambda s: torch.zeros(3), "not an epdo-train checkpoint of format 1"),
    "no format number": (lambda s: {k: v for k, v in s.items() if k != "format"}, "not an epdo-train checkpoint"),
    "another format": (lambda s: {**s, "format": 7}, "a checkpoint of format 7; this epdo reads format 1 only"),
    "a field missing": (lambda s: {k: v for k, v in s.items() if k != "training"}, r"missing \['training'\]"),
    "an unknown field": (lambda s: {**s, "notes": "x"}, r"unknown \['notes'\]"),
    "an ill-typed epoch": (lambda s: {**s, "epoch": "1"}, "field 'epoch' must be an integer, got str"),
    "a model configuration without basis": (
        lambda s: {**s, "model_config": {k: v for k, v in s["model_config"].items() if k != "basis"}},
        r"model configuration: fields missing \['basis'\]",
    ),
    "ill-typed widths": (
        lambda s: {**s, "model_config": {**s["model_config"], "widths": "4,4,4,4,4,4"}},
        "field 'widths' must be a list of integers, got str",
    ),
    "a refused model configuration": (
        lambda s: {**s, "model_config": {**s["model_config"], "layer": "transformer"}},
        "layer must be one of",
    ),
    "an ill-typed training field": (
        lambda s: {**s, "training": {**s["training"], "seed": 1.5}},
        "training configuration: field 'seed' must be an integer, got float",
    ),
    "weights of another shape": (
        lambda s: {**s, "model": {**s["model"], "classifier.3.bias": torch.zeros(7)}},
        r"weights do not fit .* 1 of another shape \(first 'classifier.3.bias': \(7,\) where the model has \(10,\)\)",
    ),
    "a weight missing": (
        lambda s: {**s, "model": {k: v for k, v in s["model"].items() if k != "classifier.3.bias"}},
        r"1 missing \(first 'classifier.3.bias'\)",
    ),
    "metrics and epoch disagree": (lambda s: {**s, "epoch": 2}, "epoch 2 with 1 rows of metrics"),
    "a damaged generator state": (
        lambda s: {**s, "rng": {**s["rng"], "torch": torch.zeros(3, dtype=torch.uint8)}},
        "rng.torch must be a torch.uint8 tensor of shape",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONTENT))
def test_every_bad_checkpoint_is_one_clear_line(trained, tmp_path, capsys, case):
    make, message = BAD_CONTENT[case]
    path = tmp_path / "checkpoint.pt"
    torch.save(make(content(trained / "checkpoint.pt")), path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert evaluate_main(["--checkpoint", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


@pytest.mark.parametrize(
    "case, data, message",
    [
        ("truncated", lambda good: good[:5000], "not the zip archive torch.save writes (truncated, damaged, or"),
        ("empty", lambda good: b"", "the file is empty"),
        ("text", lambda good: b"hello\n", "not the zip archive torch.save writes"),
        ("one byte flipped", lambda good: good[:4000] + bytes([good[4000] ^ 0xFF]) + good[4001:], "checkpoint"),
    ],
)
def test_damaged_files_are_one_clear_line(trained, tmp_path, capsys, case, data, message):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data((trained / "checkpoint.pt").read_bytes()))
    try:
        load_checkpoint(path)
    except CheckpointError as error:
        assert message in str(error) and str(path) in str(error) and "\n" not in str(error)
    else:  # a flipped byte inside a tensor's values is not detectable: the file is then a valid checkpoint
        assert case == "one byte flipped"
    code = evaluate_main(["--checkpoint", str(path), "--no-progress", "--rotations", "0"])
    err = capsys.readouterr().err
    assert "Traceback" not in err and (code == 0 or (code == 2 and err.count("\n") == 1))
    assert evaluate_main(["--checkpoint", str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt: no such checkpoint file" in capsys.readouterr().err


def test_a_resume_refuses_flags_that_contradict_the_run(trained, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((trained / "checkpoint.pt").read_bytes())
    given = ["--widths", "8,8,8,8,8,8", "--seed", "3", "--data-seed", "5", "--lr-scale", "2", "--no-augment"]
    given += ["--dis", "fd"]
    assert train_main(["--out", str(out), "--resume", "--epochs", "2", *given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for shown in ("--widths 8,8,8,8,8,8 (the run's widths: 4,4,4,4,4,4)", "--seed 3 (the run's seed: 0)",
                  "--data-seed 5 (the run's data_seed: None)",
                  "--lr-scale 2.0 (the run's lr_scale: 1.0)", "--no-augment (the run's augment: True)",
                  "--dis fd (the run's basis.discretization: gauss)"):  # fmt: skip
        assert shown in err
    assert train_main(["--out", str(out), "--resume", "--preset", "paper-R-fd"]) == 2
    assert "--preset paper-R-fd sets group_order 16 (the run's: 4)" in capsys.readouterr().err
    # the run's own values, --epochs raised, and this process's flags are accepted
    free = ["--threads", "1", "--no-progress", "--device", "cpu", "--widths", "4,4,4,4,4,4", "--seed", "0"]
    assert train_main(["--out", str(out), "--resume", "--epochs", "2", *free]) == 0
    assert read_checkpoint(out / "checkpoint.pt").training.epochs == 2
    assert train_main(["--out", str(out), "--resume", "--epochs", "1"]) == 2
    assert "--epochs 1: the run in" in capsys.readouterr().err and "has already completed 2 epochs"


KILLER = """
import os, signal, sys
import torch
import epdo.checkpoint, epdo.train
when, at = sys.argv[1], int(sys.argv[2])
calls = [0]
if when == "step":
    step = torch.optim.Adam.step
    def killing_step(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, *args, **kwargs)
    torch.optim.Adam.step = killing_step
else:
    save = torch.save
    def killing_save(obj, path, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            with open(path, "wb") as f:
                f.write(b"PK half a checkpoint")
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, path, *args, **kwargs)
    epdo.checkpoint.torch.save = killing_save
sys.exit(epdo.train.main(sys.argv[3:]))
"""


KILLED_RUN = [*TINY, "--epochs", "3", "--dropout", "0.3"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The checkpoint of the run :func:`test_a_killed_run_resumes_to_the_same_weights_bit_for_bit` kills, straight."""
    out = tmp_path_factory.mktemp("straight")
    assert train_main([*KILLED_RUN, "--out", str(out)]) == 0
    return read_checkpoint(out / "checkpoint.pt")


@pytest.mark.parametrize("when, at", [("step", 6), ("write", 2)])  # 4 steps an epoch: during epoch 2, or its write
def test_a_killed_run_resumes_to_the_same_weights_bit_for_bit(tmp_path, uninterrupted, when, at):
    run = KILLED_RUN
    killed = tmp_path / "killed"
    done = subprocess.run(
        [sys.executable, "-c", KILLER, when, str(at), *run, "--out", str(killed)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == -9, done.stderr[-2000:]
    survivor = read_checkpoint(killed / "checkpoint.pt")  # the previous checkpoint, whole
    assert survivor.epoch == 1
    assert train_main(["--out", str(killed), "--resume", "--no-progress", "--threads", "1"]) == 0
    expected, resumed = uninterrupted, read_checkpoint(killed / "checkpoint.pt")
    assert resumed.epoch == 3 and expected.model.keys() == resumed.model.keys()
    assert all(torch.equal(expected.model[k], resumed.model[k]) for k in expected.model)
    for a, b in zip(expected.optimizer["state"].values(), resumed.optimizer["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    drop = {"seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in expected.metrics] == [
        {k: v for k, v in r.items() if k not in drop} for r in resumed.metrics
    ]


def test_fuzzed_files_give_checkpoint_errors_only(trained, tmp_path):
    """Random bytes, damaged copies of a good file and malformed dictionaries: only :class:`CheckpointError`."""
    rng = np.random.default_rng(0)
    good = (trained / "checkpoint.pt").read_bytes()
    state = content(trained / "checkpoint.pt")
    path = tmp_path / "fuzz.pt"
    values = [None, 0, -1, 1.5, "x", [], {}, [1, "a"], {"a": 1}, torch.zeros(2), True, (1, 2)]
    outcomes = {"refused": 0, "read": 0}
    for trial in range(300):
        kind = trial % 3
        if kind == 0:
            path.write_bytes(rng.integers(0, 256, int(rng.integers(0, 2000)), dtype=np.uint8).tobytes())
        elif kind == 1:
            data = bytearray(good[: int(rng.integers(1, len(good)))] if rng.random() < 0.5 else good)
            for position in rng.integers(0, len(data), int(rng.integers(1, 8))):
                data[position] = int(rng.integers(0, 256))
            path.write_bytes(bytes(data))
        else:
            broken = dict(state)
            target = broken
            key = list(state)[int(rng.integers(0, len(state)))]
            if isinstance(state[key], dict) and state[key] and rng.random() < 0.7:
                target = broken[key] = dict(state[key])
                key = list(target)[int(rng.integers(0, len(target)))]
            target[key] = values[int(rng.integers(0, len(values)))]
            torch.save(broken, path)
        try:
            load_checkpoint(path)
            outcomes["read"] += 1  # a damaged tensor value, or a malformed entry of the same meaning
        except CheckpointError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 250


def test_a_model_configuration_written_before_the_stencil_scale_existed_reads_with_the_default():
    from epdo.models import ModelConfig

    values = ModelConfig().as_dict()
    del values["basis"]["scale"]
    assert ModelConfig.from_dict(values) == ModelConfig()


def test_a_training_configuration_written_before_the_data_and_init_seeds_existed_draws_from_the_seed():
    values = TrainingConfig(seed=3).as_dict()
    del values["data_seed"], values["init_seed"]
    assert TrainingConfig.from_dict(values) == TrainingConfig(seed=3)
    assert TrainingConfig.from_dict(values).dataset_seed == 3


def test_the_data_seed_draws_the_runs_data(trained, tmp_path):
    state = content(trained / "checkpoint.pt")
    state["training"]["data_seed"] = 1
    torch.save(state, tmp_path / "other.pt")
    own_train, own_test = read_checkpoint(trained / "checkpoint.pt").run_data()
    other_train, other_test = read_checkpoint(tmp_path / "other.pt").run_data()
    drawn_train, _ = load_dataset("synthetic", seed=1)
    assert torch.equal(torch.as_tensor(other_train.images), torch.as_tensor(drawn_train.limit(64).images))
    assert not torch.equal(torch.as_tensor(own_train.images), torch.as_tensor(other_train.images))
