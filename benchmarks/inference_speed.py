"""Inference throughput (eval mode, no grad) of the default network and of escnn's R2Conv network at the same
parameter count, timed in interleaved rounds in one plain process, and a profile of where the default network's time
goes.  Each network as built (``model(x)``, which runs its exported form) and as exported (``model.export()``), and
both module by module (escnn's own forward; the default network's inference before it ran its exported form).

    python benchmarks/inference_speed.py --batches 1,64,256 --threads 1,2 --repeats 15
    python benchmarks/inference_speed.py --profile-only --batches 256 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict

import torch
from common import interleaved_median_seconds, markdown_table, record

from epdo.models import ModelConfig, build_model, count_parameters

MODELS = {
    "Neural ePDO (default)": ModelConfig(),
    "escnn R2Conv 5x5": ModelConfig(layer="escnn", widths=(5, 5, 7, 7, 10, 11)),
}
"""The networks compared: the default and escnn's at its parameter count (27,454 and 27,123)."""


def evaluated(config: ModelConfig) -> torch.nn.Module:
    """The network of ``config`` in eval mode, its batch norm statistics moved off their initial values."""
    model = build_model(config)
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(32, 1, 28, 28))
    return model.eval()


def inference(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad():
            model(x)

    return run


def module_by_module(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network's modules one by one (escnn's own forward; no exported form)."""
    return lambda x: model.classifier(model.features(x))


def profile(model: torch.nn.Module, x: torch.Tensor, rows: int = 14) -> str:
    """The ``rows`` operators with the most self CPU time over 5 calls, as a table."""
    for _ in range(2):
        inference(model, x)()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            inference(model, x)()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    table = {
        e.key: dict(
            self_ms_per_call=f"{e.self_cpu_time_total / 5e3:.1f}",
            share=f"{100 * e.self_cpu_time_total / total:.1f}%",
            calls_per_forward=f"{e.count // 5}",
        )
        for e in events[:rows]
    }
    return markdown_table(table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--profile-only", action="store_true", help="only the profiles (largest batch, last thread count)"
    )
    parser.add_argument("--record", action="store_true", help="append the tables to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    torch.manual_seed(0)
    built = {name: evaluated(config) for name, config in MODELS.items()}
    networks: Dict[str, torch.nn.Module] = {}
    networks["escnn R2Conv 5x5, escnn's forward"] = module_by_module(built["escnn R2Conv 5x5"])
    networks["Neural ePDO (default), module by module"] = module_by_module(built["Neural ePDO (default)"])
    for name, model in built.items():
        networks[f"{name}, built"] = model
        networks[f"{name}, exported"] = model.export()
        x = torch.rand(4, 1, 28, 28)
        with torch.no_grad():
            error = float((networks[f"{name}, exported"](x) - model(x)).abs().max())
        print(f"{name}: {count_parameters(model):,} parameters; exported logits within {error:.1e}", flush=True)
    rows = {}
    if not args.profile_only:
        for count in threads:
            torch.set_num_threads(count)
            for batch in batches:
                x = torch.rand(batch, 1, 28, 28)
                steps = {name: inference(network, x) for name, network in networks.items()}
                seconds = interleaved_median_seconds(steps, torch.device("cpu"), args.repeats, warmup=2)
                escnn = seconds["escnn R2Conv 5x5, escnn's forward"]
                for key, value in seconds.items():
                    rows[f"{key}, batch {batch}, {count} thread{'s' if count > 1 else ''}"] = dict(
                        images_per_s=f"{batch / value:.0f}",
                        ms=f"{value * 1e3:.2f}",
                        time_over_escnns_forward=f"{value / escnn:.3f}",
                    )
                print(f"batch {batch}, {count} thread(s): " + ", ".join(
                    f"{k} {batch / v:.0f}/s" for k, v in seconds.items()), flush=True)  # fmt: skip
        print(markdown_table(rows))
    torch.set_num_threads(threads[-1])
    x = torch.rand(batches[-1], 1, 28, 28)
    profiles = {kind: profile(networks[f"Neural ePDO (default), {kind}"], x) for kind in ("built", "exported")}
    for kind, table in profiles.items():
        print(f"\nWhere the default network's time goes ({kind}, batch {batches[-1]}, {threads[-1]} threads):\n{table}")
    if args.record:
        command = "python benchmarks/inference_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
        body = (markdown_table(rows) + "\n\n" if rows else "") + "\n\n".join(
            f"Profile of the default network, {kind} (batch {batches[-1]}, {threads[-1]} threads):\n\n{table}"
            for kind, table in profiles.items()
        )
        record(f"Inference, eval mode, median of {args.repeats} interleaved rounds", command, torch.device("cpu"), body)


if __name__ == "__main__":
    main()
