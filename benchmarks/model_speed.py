"""Training-step time (forward + backward + Adam step) and peak memory of whole networks, timed in interleaved rounds
in one plain process (every network runs one step per round), with the ratio to escnn's R2Conv network of the same
size class.

Sizes: ``equal`` (the default Neural ePDO network against escnn's R2Conv 5x5 network at the same parameter count, C8,
batch 64: the comparison a user makes), ``paper`` (the paper's four models and the escnn baseline at paper widths),
``so2`` / ``o2`` (the SO(2) / O(2) networks of ``benchmarks/accuracy.py`` and the preset ``so2-sampled``, against
``so2-escnn`` / ``o2-escnn``; the sampled forms and R2Conv also with escnn's own ``FourierPointwise`` ReLU and
``IIDBatchNorm2d`` in place of epdo's ``FourierReLU`` and ``IIDBatchNorm``, which compute the same: R2Conv's so is the
network escnn builds) and ``tutorial`` (escnn's tutorial shape, ``tutorial-epdo`` against ``tutorial-escnn``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Callable, Union

import torch
from common import (
    interleaved_median_seconds,
    markdown_table,
    peak_bytes,
    peak_bytes_in_fresh_process,
    record,
    training_step,
)
from escnn import nn

from epdo.kernels import PDOBasis
from epdo.models import PRESETS, ModelConfig, build_model, count_parameters
from epdo.nn import FourierReLU, IIDBatchNorm


class EscnnModules:
    """``config``'s network with escnn's ``FourierPointwise`` and ``IIDBatchNorm2d`` where it has epdo's
    ``FourierReLU`` and ``IIDBatchNorm`` (their base classes: the same state, escnn's forward)."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def build(self) -> torch.nn.Module:
        model = build_model(self.config)
        for module in model.modules():
            if isinstance(module, FourierReLU):
                module.__class__ = nn.FourierPointwise
            elif isinstance(module, IIDBatchNorm):
                module.__class__ = nn.IIDBatchNorm2d
        return model


def build(entry: Union[ModelConfig, EscnnModules]) -> torch.nn.Module:
    """The network of a :data:`SIZES` entry."""
    return entry.build() if isinstance(entry, EscnnModules) else build_model(entry)


SO2_SAMPLED = replace(PRESETS["so2"], form="sampled")
O2_SAMPLED = replace(PRESETS["so2"], flip=True, form="sampled", widths=(13, 13, 19, 19, 25, 25))
SO2_ESCNN = replace(PRESETS["so2"], layer="escnn", widths=(7, 7, 11, 11, 14, 14))
O2_ESCNN = replace(PRESETS["so2"], flip=True, layer="escnn", widths=(5, 5, 8, 8, 10, 9))
SIZES = {
    "equal": {
        "Neural ePDO (default)": ModelConfig(),
        "Neural ePDO, half the parameters": ModelConfig(widths=(9, 10, 14, 14, 19, 19)),
        "Neural ePDO, preset half": PRESETS["half"],
        "escnn R2Conv 5x5": ModelConfig(layer="escnn", widths=(5, 5, 7, 7, 10, 11)),
    },
    "paper": {
        **{name: PRESETS[name] for name in ("paper-R-fd", "paper-R-gauss", "paper-Q-gauss", "paper-D16-5C16")},
        "escnn R2Conv 5x5": replace(PRESETS["paper-R-fd"], layer="escnn"),
    },
    "so2": {
        "Neural ePDO, preset so2": PRESETS["so2"],
        "Neural ePDO, so2, sampled form": SO2_SAMPLED,
        "Neural ePDO, preset so2-sampled (sampled form, generator 2x as wide, gauss-exact)": PRESETS["so2-sampled"],
        "Neural ePDO, preset so2-sampled on Gaussian stencils": replace(PRESETS["so2-sampled"], basis=PDOBasis()),
        "Neural ePDO, so2, sampled form, escnn's ReLU and batch norm": EscnnModules(SO2_SAMPLED),
        "escnn R2Conv 5x5": SO2_ESCNN,
        "escnn R2Conv 5x5, escnn's ReLU and batch norm": EscnnModules(SO2_ESCNN),
    },
    "o2": {
        "Neural ePDO, O(2)": replace(PRESETS["so2"], flip=True, widths=(12, 12, 19, 19, 25, 25)),
        "Neural ePDO, O(2), sampled form": O2_SAMPLED,
        "Neural ePDO, O(2), sampled form, escnn's ReLU and batch norm": EscnnModules(O2_SAMPLED),
        "escnn R2Conv 5x5": O2_ESCNN,
        "escnn R2Conv 5x5, escnn's ReLU and batch norm": EscnnModules(O2_ESCNN),
    },
    "tutorial": {
        "Neural ePDO, tutorial skeleton": ModelConfig(skeleton="tutorial", dropout=0.0, widths=(8, 17, 17, 34, 34, 22)),
        "escnn R2Conv 7x7, 5x5": ModelConfig(
            skeleton="tutorial", dropout=0.0, layer="escnn", widths=(3, 6, 6, 12, 12, 8)
        ),
    },
}


def random_batch_step(model: torch.nn.Module, device: torch.device, batch: int) -> Callable[[], None]:
    """A training step of ``model`` (Adam) on a fixed random batch of ``batch`` 28x28 images."""
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    return training_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), x, y)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sizes", default="equal", help=f"some of {', '.join(SIZES)} (comma-separated)")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--memory-only", default=None, help=argparse.SUPPRESS)  # internal: "size:name"
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_only is not None:  # a fresh process: one network's step after a batch-2 warm-up
        size, name = args.memory_only.split(":", 1)
        model = build(SIZES[size][name]).to(device)
        random_batch_step(model, device, 2)()
        print(peak_bytes(random_batch_step(model, device, args.batch), device))
        return
    torch.manual_seed(0)
    rows = {}
    for size in args.sizes.split(","):
        models = {}
        for name, entry in SIZES[size].items():
            start = time.perf_counter()
            models[name] = build(entry).to(device)
            print(f"{name}: built in {time.perf_counter() - start:.1f} s", flush=True)
        steps = {name: random_batch_step(model, device, args.batch) for name, model in models.items()}
        seconds = interleaved_median_seconds(steps, device, args.repeats, warmup=2)
        reference = next(seconds[name] for name in seconds if name.startswith("escnn"))
        for name, model in models.items():
            if device.type == "cuda":
                memory = peak_bytes(random_batch_step(model, device, args.batch), device)
            else:
                memory = peak_bytes_in_fresh_process(__file__, argv, f"{size}:{name}")
            rows[f"{name} [{size}]"] = dict(
                params=f"{count_parameters(model):,}",
                step_ms=f"{seconds[name] * 1e3:.0f}",
                images_per_s=f"{args.batch / seconds[name]:.0f}",
                peak_MiB=f"{memory / 2**20:.0f}",
                step_over_escnn=f"{seconds[name] / reference:.3f}",
            )
            print(f"{name:>36} [{size}]: {rows[f'{name} [{size}]']}", flush=True)
    if args.record:
        command = "python benchmarks/model_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
        title = f"Training step, batch {args.batch}, {device.type}, median of {args.repeats} interleaved rounds"
        record(title, command, device, markdown_table(rows))


if __name__ == "__main__":
    main()
