import csv
import os
import subprocess
import sys

import pytest
import torch
from escnn import nn

import epdo.train as train_module
from epdo.checkpoint import load_checkpoint, read_checkpoint
from epdo.data import load_dataset
from epdo.evaluate import main as evaluate_main
from epdo.evaluate import parse_angles
from epdo.kernels import PDOBasis
from epdo.models import ModelConfig, build_model
from epdo.nn import batch_norms
from epdo.train import build_parser, model_config, training_config
from epdo.train import main as train_main
from epdo.training import TrainingConfig, learning_rate, reestimate_batch_norm

TINY = [
    "--dataset", "synthetic", "--group-order", "4", "--widths", "4,4,4,4,4,4",
    "--limit-train", "64", "--limit-test", "32", "--batch-size", "16", "--no-progress", "--threads", "1",
]  # fmt: skip


def metrics(path):
    with open(path / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_schedule():
    assert [learning_rate(e) for e in (0, 59, 60, 119, 120, 150, 180, 199)] == [
        2e-3, 2e-3, 2e-4, 2e-4, 1e-4, 5e-5, 2.5e-5, 2.5e-5
    ]  # fmt: skip


def test_outputs_and_exact_resume(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train_main([*TINY, "--epochs", "2", "--out", str(straight)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("final test error:") and "after 2 epochs" in last
    assert {p.name for p in straight.iterdir()} >= {"metrics.csv", "checkpoint.pt", "curves.png"}
    assert train_main([*TINY, "--epochs", "1", "--out", str(split)]) == 0
    assert train_main([*TINY, "--epochs", "2", "--out", str(split), "--resume"]) == 0
    assert metrics(split) == metrics(straight)
    assert len(metrics(straight)) == 2
    checkpoint = read_checkpoint(straight / "checkpoint.pt")
    assert checkpoint.epoch == 2 and {"torch", "numpy", "python"} <= set(checkpoint.rng)
    assert checkpoint.model_config == model_config(build_parser().parse_args(TINY))
    assert checkpoint.training == training_config(build_parser().parse_args([*TINY, "--epochs", "2"]))


def test_the_model_line_names_a_coefficient_form_other_than_auto(tmp_path, capsys):
    assert train_main([*TINY, "--epochs", "1", "--out", str(tmp_path / "auto")]) == 0
    assert " form)" not in capsys.readouterr().out.splitlines()[0]
    assert train_main([*TINY, "--epochs", "1", "--form", "commutant", "--out", str(tmp_path / "commutant")]) == 0
    assert "model Neural ePDO (commutant form) regular on C4" in capsys.readouterr().out.splitlines()[0]


def test_batch_norm_is_reestimated_on_the_stored_training_images(tmp_path):
    """What ``epdo-train`` evaluates with: BatchNorm statistics of the final weights on the stored (not augmented)
    training images, exactly :func:`epdo.training.reestimate_batch_norm`'s."""
    out = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "1", "--out", str(out), "--bn-batches", "2"]) == 0
    model, _ = load_checkpoint(out / "checkpoint.pt")
    saved = [m.running_var.clone() for m in batch_norms(model)]
    train, _ = load_dataset("synthetic", seed=0)
    reestimate_batch_norm(model, train.limit(64).images, batches=2, batch_size=16, seed=0 * 100003 + 0 * 104729 + 1)
    for m, expected in zip(batch_norms(model), saved):
        torch.testing.assert_close(m.running_var, expected)


class _NaNAfter(torch.nn.Module):
    """Wraps a model; its training forward returns NaN from the ``after``-th call on."""

    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                return out * float("nan")
        return out


def test_non_finite_loss_stops_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda config: _NaNAfter(build(config), after=6))  # epoch 2
    out = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "3", "--out", str(out)]) == 3
    assert "stopping at epoch 2: non-finite loss" in capsys.readouterr().err
    assert read_checkpoint(out / "checkpoint.pt").epoch == 1
    assert len(metrics(out)) == 1


def test_missing_data_gives_a_message_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "mnist_all_rotation_normalized_float_train_valid.amat").write_text("1 2 3\n")
    (bad / "mnist_all_rotation_normalized_float_test.amat").write_text("1 2 3\n")
    code = train_main(["--dataset", "mnist-rot", "--data-dir", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "line 1: expected 785 numbers" in err and "Traceback" not in err


@pytest.mark.parametrize("layer", ["epdo", "escnn"])
def test_evaluate_rotation_table(tmp_path, capsys, layer):
    out = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "1", "--out", str(out), "--layer", layer]) == 0
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(out / "checkpoint.pt"), "--rotations", "0:360:90"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines[1:5]]
    assert [float(r[0]) for r in rows] == [0, 90, 180, 270]
    assert len({r[1] for r in rows}) == 1  # 90-degree turns: the same error (the model is C4-invariant)
    assert (out / "rotation_errors.png").exists()
    assert parse_angles("0:45:15") == [0, 15, 30]


def test_evaluate_refuses_other_files(tmp_path, capsys):
    torch.save(dict(model={}), tmp_path / "foreign.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "foreign.pt"), "--no-progress"]) == 2
    assert "not an epdo-train checkpoint of format 1 (found ['model'])" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [("--epochs", "-1"), ("--batch-size", "0"), ("--limit-train", "0"), ("--limit-test", "-5"), ("--lr-scale", "0"),
     ("--group-order", "0"), ("--g", "0"), ("--s", "-2"), ("--reduction", "0"), ("--threads", "0"),
     ("--widths", "4,4,0,4,4,4"), ("--epochs", "two"), ("--weight-decay", "-1"), ("--bandwidth", "0"),
     ("--bandwidth", "1.5"), ("--bandwidth", "wide"), ("--kernel-size", "4"), ("--kernel-size", "1"),
     ("--max-frequency", "-1"), ("--max-frequency", "low"), ("--max-order", "5"), ("--max-order", "-1"),
     ("--preset", "R-fd")],
)  # fmt: skip
def test_cli_refuses_bad_values(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main([*TINY, flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err
    if flag == "--bandwidth":
        assert "expected 'none' or a number in [0.1, 1]" in err
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", "x.pt", "--limit-test", "0"])
    assert "argument --limit-test: must be a positive integer, got 0" in capsys.readouterr().err


def test_cli_refuses_a_model_its_layers_refuse(tmp_path, capsys):
    assert train_main([*TINY, "--g", "3", "--out", str(tmp_path / "o")]) == 2
    assert "g=3 must divide the number of input fields z=4" in capsys.readouterr().err


def test_cli_model_flags_reach_the_model_configuration():
    parse = build_parser().parse_args
    assert model_config(parse([])) == ModelConfig()
    assert training_config(parse([])) == TrainingConfig()
    assert training_config(parse(["--no-augment", "--amp", "--weight-decay", "0"])) == TrainingConfig(
        augment=False, amp=True, weight_decay=0.0
    )
    assert training_config(parse(["--seed", "4", "--data-seed", "1"])) == TrainingConfig(seed=4, data_seed=1)
    assert model_config(parse(["--bandwidth", "None"])).basis.bandwidth is None
    assert model_config(parse(["--bandwidth", "0.15", "--max-frequency", "none"])).basis == PDOBasis(
        max_frequency=None, bandwidth=0.15
    )
    assert model_config(parse(["--dis", "fd", "--g", "2", "--reduction", "2"])) == ModelConfig(
        basis=PDOBasis("fd"), g=2, reduction=2
    )
    assert model_config(parse(["--layer", "escnn", "--widths", "5,5,7,7,10,11"])).widths == (5, 5, 7, 7, 10, 11)
    assert model_config(parse(["--kernel-size", "7"])).basis == PDOBasis(size=7)
    assert model_config(parse(["--max-order", "3", "--dis", "fd"])).basis == PDOBasis("fd", max_order=3)
    assert model_config(parse(["--max-order", "4", "--kernel-size", "3"])).basis == PDOBasis(max_order=2, size=3)
    assert model_config(parse(["--kernel-size", "3", "--dis", "fd"])).basis == PDOBasis("fd", max_order=2, size=3)
    escnn = build_model(model_config(parse(["--layer", "escnn", "--kernel-size", "3", *TINY[2:6]])))
    assert {m.kernel_size for m in escnn.modules() if isinstance(m, nn.R2Conv)} == {3}


@pytest.mark.skipif(sys.platform != "linux", reason="uses torchrun with gloo")
def test_two_process_ddp(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "epdo.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, "--", *TINY, "--epochs", "1", "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final test error:") == 1  # rank 0 alone reports and writes
    assert "x 2" in result.stdout
    assert len(metrics(out)) == 1


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(group_order=4, widths=(4,) * 6, dropout=0.5),
        ModelConfig(group_order=-1, fields="fourier", widths=(2,) * 6, dropout=0.5),  # escnn's IIDBatchNorm2d
    ],
    ids=["C4", "SO(2)"],
)
def test_reestimated_batch_norm_uses_the_exact_statistics_with_dropout_off(config):
    """After re-estimation over one batch, eval mode on that batch equals the batch-statistics forward with dropout
    off (up to BN's unbiased running variance); a momentum average, or statistics taken with dropout on, differ."""
    torch.manual_seed(0)
    model = build_model(config)
    images = torch.rand(32, 1, 28, 28)
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 1, 28, 28) * 3)  # running statistics of other inputs
    reestimate_batch_norm(model, images, batches=1, batch_size=32, seed=0)
    assert not model.training
    norms = batch_norms(model)
    assert len(norms) == 7 and all(m.momentum == 0.1 for m in norms)  # restored
    with torch.no_grad():
        evaluated = model(images)
        for m in norms:
            m.train()
        batch_statistics = model(images)  # dropout modules stay in eval mode
    torch.testing.assert_close(evaluated, batch_statistics, rtol=0.05, atol=0.05)
    assert float((evaluated - batch_statistics).abs().max()) < 0.02 * float(evaluated.abs().max())


def test_cli_bn_batches():
    parse = build_parser().parse_args
    assert training_config(parse([])).bn_batches == 30
    assert training_config(parse(["--bn-batches", "0"])).bn_batches == 0
    with pytest.raises(SystemExit):
        parse(["--bn-batches", "-1"])


def test_an_epoch_leaves_the_global_random_state_as_it_was():
    """Dropout draws from the epoch's seed; the caller's generator continues where it was, and the epoch's result
    does not depend on it."""
    from epdo.training import train_epoch

    train, _ = load_dataset("synthetic")
    results = []
    for caller_seed in (5, 6):
        torch.manual_seed(0)
        model = build_model(ModelConfig(group_order=4, widths=(4, 4, 4, 4, 4, 4)))
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        torch.manual_seed(caller_seed)
        before = torch.get_rng_state()
        results.append(train_epoch(model, optimizer, train.limit(32), batch_size=16, seed=3))
        assert torch.equal(torch.get_rng_state(), before)
    assert results[0] == results[1]


def test_resuming_with_a_preset_that_differs_in_a_field_not_flagged_is_one_line():
    """A preset that differs from the run in a field no flag given sets (``basis.max_order``) or that has no flag
    (``basis.scale``) is named."""
    from types import SimpleNamespace

    from epdo.train import resumed_configs

    args = build_parser().parse_args(["--preset", "default", "--resume"])
    for basis, message in ((PDOBasis(max_order=3), r"basis.max_order 4 \(the run's: 3\)"),
                           (PDOBasis(scale=0.9), r"basis.scale None \(the run's: 0.9\)")):  # fmt: skip
        stored = SimpleNamespace(model_config=ModelConfig(basis=basis), training=TrainingConfig(), epoch=1)
        with pytest.raises(ValueError, match="--preset default sets " + message):
            resumed_configs(args, stored)


def test_cli_draws_the_data_from_the_data_seed_and_the_rest_from_the_seed(tmp_path, monkeypatch):
    drawn, built = [], []
    monkeypatch.setattr(
        train_module, "load_dataset", lambda name, data_dir, seed: drawn.append(seed) or load_dataset(name, seed=seed)
    )
    monkeypatch.setattr(
        train_module, "build_model", lambda config: built.append(torch.random.get_rng_state()) or build_model(config)
    )
    for data_seed in ("1", "2"):
        run = ["--epochs", "1", "--seed", "4", "--data-seed", data_seed, "--out", str(tmp_path / data_seed)]
        assert train_main([*TINY, *run]) == 0
    assert drawn == [1, 2]
    assert torch.equal(built[0], built[1]) and torch.equal(built[0], torch.manual_seed(4).get_state())


def test_cli_draws_the_weights_from_the_init_seed_and_the_training_from_the_seed(tmp_path, monkeypatch):
    built, trained = [], []
    monkeypatch.setattr(
        train_module, "build_model", lambda config: built.append(torch.random.get_rng_state()) or build_model(config)
    )
    epoch = train_module.train_epoch
    monkeypatch.setattr(
        train_module, "train_epoch", lambda *a, **k: trained.append(torch.random.get_rng_state()) or epoch(*a, **k)
    )
    runs = {
        "own": ["--seed", "2"],
        "2 for 4": ["--seed", "4", "--init-seed", "2"],
        "2 for 5": ["--seed", "5", "--init-seed", "2"],
    }
    for name, flags in runs.items():
        assert train_main([*TINY, "--epochs", "1", *flags, "--out", str(tmp_path / name)]) == 0
    weights = [load_checkpoint(tmp_path / name / "checkpoint.pt")[0] for name in runs]
    assert all(torch.equal(b, torch.manual_seed(2).get_state()) for b in built)  # the same weights are drawn
    assert torch.equal(trained[1], torch.manual_seed(4).get_state())  # the training starts at --seed's stream
    assert torch.equal(trained[2], torch.manual_seed(5).get_state())
    assert not torch.equal(trained[0], torch.manual_seed(2).get_state())  # without: after the weights' draws
    differ = [not torch.equal(a, b) for a, b in zip(*(w.state_dict().values() for w in weights[1:]))]
    assert any(differ)  # other batches and dropout: other trained weights
