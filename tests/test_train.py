import csv
import os
import subprocess
import sys

import pytest
import torch

import epdo.train as train_module
from epdo.evaluate import main as evaluate_main
from epdo.evaluate import parse_angles
from epdo.kernels import DEFAULT_BANDWIDTH
from epdo.models import ModelConfig, build_model, config_from_checkpoint
from epdo.nn import DEFAULT_MIX_GAIN
from epdo.train import build_parser, learning_rate, model_config
from epdo.train import main as train_main

TINY = [
    "--dataset", "synthetic", "--group-order", "4", "--widths", "4,4,4,4,4,4", "--g", "2", "--s", "1",
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
    state = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2 and {"torch", "numpy", "python"} <= set(state["rng"])


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
    assert "non-finite loss" in capsys.readouterr().err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
    assert len(metrics(out)) == 1


def test_missing_data_gives_a_message_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "mnist_all_rotation_normalized_float_train_valid.amat").write_text("1 2 3\n")
    (bad / "mnist_all_rotation_normalized_float_test.amat").write_text("1 2 3\n")
    code = train_main(["--dataset", "mnist-rot", "--data-dir", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "line 1: expected 785 numbers" in err and "Traceback" not in err


@pytest.mark.parametrize("baseline", ["none", "escnn"])
def test_evaluate_rotation_table(tmp_path, capsys, baseline):
    out = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "1", "--out", str(out), "--baseline", baseline]) == 0
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(out / "checkpoint.pt"), "--rotations", "0:360:90"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line.split() for line in lines[1:5]]
    assert [float(r[0]) for r in rows] == [0, 90, 180, 270]
    assert len({r[1] for r in rows}) == 1  # 90-degree turns: the same error (the model is C4-invariant)
    assert (out / "rotation_errors.png").exists()
    assert parse_angles("0:45:15") == [0, 15, 30]


def test_checkpoint_stores_the_model_configuration_and_old_checkpoints_load(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "1", "--out", str(out), "--model", "Q", "--reduction", "2"]) == 0
    path = out / "checkpoint.pt"
    state = torch.load(path, weights_only=False)
    assert "args" not in state
    config = config_from_checkpoint(state)
    assert config == ModelConfig(**state["config"])
    assert (config.fields, config.discretization, config.widths, config.normalization) == (
        "quotient", "fd", (4, 4, 4, 4, 4, 4), "rms"
    )  # fmt: skip
    # a checkpoint in the earlier format: the whole CLI namespace under "args", layers with L1 normalization
    old = dict(model="Q", dis="fd", flip=False, g=2, s=1, reduction=2, group_order=4, widths=[4] * 6, dropout=0.1,
               baseline="none", dataset="synthetic", data_dir=None, seed=0, limit_test=32, epochs=1)  # fmt: skip
    legacy = build_model(ModelConfig(**{**state["config"], "normalization": "l1", "generator_init": "reference"}))
    torch.save(dict(model=legacy.state_dict(), args=old), tmp_path / "old.pt")
    assert config_from_checkpoint(torch.load(tmp_path / "old.pt", weights_only=False)) == ModelConfig(
        fields="quotient", discretization="fd", g=2, s=1, reduction=2, group_order=4, widths=(4,) * 6,
        generator_init="reference", normalization="l1", bandwidth=None, mix_gain=1.0,
    )  # fmt: skip
    # a configuration from before the bandwidth option: its plain orthonormal bases, order_decay gone
    earlier = {k: v for k, v in state["config"].items() if k != "bandwidth"}
    assert config_from_checkpoint(dict(config={**earlier, "order_decay": None})).bandwidth is None
    with pytest.raises(ValueError, match="uses order_decay, an option epdo removed"):
        config_from_checkpoint(dict(config={**earlier, "order_decay": 0.5}))
    # a configuration from before the mix gain: the mix's parameters mean the ungained map
    assert state["config"]["mix_gain"] == DEFAULT_MIX_GAIN != 1.0
    before_gain = {k: v for k, v in state["config"].items() if k != "mix_gain"}
    assert config_from_checkpoint(dict(config=before_gain)).mix_gain == 1.0
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(tmp_path / "old.pt"), "--rotations", "0", "--no-progress"]) == 0
    torch.save(dict(model=legacy.state_dict()), tmp_path / "foreign.pt")
    assert evaluate_main(["--checkpoint", str(tmp_path / "foreign.pt"), "--no-progress"]) == 2
    assert "expected a 'config'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flag, value",
    [("--epochs", "-1"), ("--batch-size", "0"), ("--limit-train", "0"), ("--limit-test", "-5"), ("--lr-scale", "0"),
     ("--group-order", "0"), ("--g", "0"), ("--s", "-2"), ("--reduction", "0"), ("--threads", "0"),
     ("--widths", "4,4,0,4,4,4"), ("--epochs", "two"), ("--bandwidth", "0"), ("--bandwidth", "1.5"),
     ("--bandwidth", "wide"), ("--mix-gain", "0"), ("--max-frequency", "-1"), ("--max-frequency", "low")],
)  # fmt: skip
def test_cli_refuses_non_positive_numbers(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main([*TINY, flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err
    if flag == "--bandwidth":
        assert "expected 'none' or a number in (0, 1]" in err
    with pytest.raises(SystemExit):
        evaluate_main(["--checkpoint", "x.pt", "--limit-test", "0"])
    assert "argument --limit-test: must be a positive integer, got 0" in capsys.readouterr().err


def test_cli_bandwidth_and_mix_gain_reach_the_model_configuration():
    parse = build_parser().parse_args
    assert model_config(parse([])).bandwidth == DEFAULT_BANDWIDTH
    assert model_config(parse(["--bandwidth", "None"])).bandwidth is None
    assert model_config(parse(["--bandwidth", "0.15"])).bandwidth == 0.15
    assert model_config(parse([])).mix_gain == DEFAULT_MIX_GAIN
    assert model_config(parse(["--mix-gain", "1"])).mix_gain == 1.0
    assert model_config(parse([])).max_frequency is None
    assert model_config(parse(["--max-frequency", "2"])).max_frequency == 2
    assert model_config(parse(["--max-frequency", "None"])).max_frequency is None


@pytest.mark.skipif(sys.platform != "linux", reason="uses torchrun with gloo")
def test_two_process_ddp(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "epdo.train",
        "--",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*command, *TINY, "--epochs", "1", "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("final test error:") == 1  # rank 0 alone reports and writes
    assert "x 2" in result.stdout
    assert len(metrics(out)) == 1


def test_reestimated_batch_norm_uses_the_exact_statistics_with_dropout_off():
    """After re-estimation over one batch, eval mode on that batch equals the batch-statistics forward with dropout
    off (up to BN's unbiased running variance); a momentum average, or statistics taken with dropout on, differ."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(group_order=4, widths=(4,) * 6, g=2, s=1, dropout=0.5))
    images = torch.rand(32, 1, 28, 28)
    model.train()
    with torch.no_grad():
        model(torch.rand(32, 1, 28, 28) * 3)  # running statistics of other inputs
    train_module.reestimate_batch_norm(model, images, batches=1, batch_size=32, augment=False, seed=0)
    assert not model.training
    norms = train_module.batch_norms(model)
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
    assert parse([]).bn_batches == 30
    assert parse(["--bn-batches", "0"]).bn_batches == 0
    with pytest.raises(SystemExit):
        parse(["--bn-batches", "-1"])
