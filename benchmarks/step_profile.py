"""Where a network's training step goes: ``torch.profiler`` over training steps (forward, backward, Adam) of the
networks of one ``model_speed.py`` size, the self CPU time of each operator as a share of the step, largest first.

    python benchmarks/step_profile.py --size so2 --threads 1 --record
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import markdown_table, record
from model_speed import SIZES, random_batch_step

from epdo.models import build_model, count_parameters


def operator_shares(step, steps: int) -> tuple[float, list[tuple[str, float]]]:
    """Milliseconds per step and ``(operator, share of the self CPU time)``, largest first, over ``steps`` steps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(steps):
            step()
    events = [e for e in profile.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares = sorted(((e.key, e.self_cpu_time_total / total) for e in events), key=lambda item: -item[1])
    return total / 1e3 / steps, shares


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="so2")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = {}
    for name, config in SIZES[args.size].items():
        model = build_model(config)
        step = random_batch_step(model, torch.device("cpu"), args.batch)
        for _ in range(2):  # warm-up: compiled operators, allocator
            step()
        milliseconds, shares = operator_shares(step, args.steps)
        rows[f"{name} ({count_parameters(model):,})"] = {
            "ms per step (profiled)": f"{milliseconds:.0f}",
            "largest shares of self time": ", ".join(f"`{k}` {100 * v:.1f}%" for k, v in shares[: args.top]),
        }
        print(name, rows[f"{name} ({count_parameters(model):,})"], flush=True)
    table = markdown_table(rows)
    print(table)
    if args.record:
        command = "python benchmarks/step_profile.py " + " ".join(sys.argv[1:] if argv is None else argv)
        title = f"Where the training step goes ({args.size}, batch {args.batch}, {args.threads} thread(s))"
        record(title, command, torch.device("cpu"), table)


if __name__ == "__main__":
    main()
