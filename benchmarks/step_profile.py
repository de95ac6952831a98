"""Where a network's training step goes: ``torch.profiler`` over training steps (forward, backward, Adam) of the
networks of one ``model_speed.py`` size, the self CPU time of each operator as a share of the step, largest first.
``--by module``: instead, forward + backward of each module of the network's body alone, on the input a forward
pass gives it (median of ``--steps``), summed by the module's class.

    python benchmarks/step_profile.py --size so2 --threads 1 --record
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import markdown_table, record
from escnn.nn import GeometricTensor
from model_speed import SIZES, build, random_batch_step

from epdo.models import count_parameters


def operator_shares(step, steps: int) -> tuple[float, list[tuple[str, float]]]:
    """Milliseconds per step and ``(operator, share of the self CPU time)``, largest first, over ``steps`` steps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(steps):
            step()
    events = [e for e in profile.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares = sorted(((e.key, e.self_cpu_time_total / total) for e in events), key=lambda item: -item[1])
    return total / 1e3 / steps, shares


def module_milliseconds(model: torch.nn.Module, batch: int, steps: int) -> dict:
    """``{class name: milliseconds}``: forward + backward (gradient of the sum) of each module of ``model.body`` on
    the input a forward pass of a random batch gives it, median of ``steps`` after one warm-up, summed by class."""
    model.train()
    h = GeometricTensor(torch.rand(batch, 1, 28, 28), model.body[0].in_type)
    totals: dict = {}
    for module in model.body:
        name = type(module).__name__
        totals[name] = totals.get(name, 0.0) + 1e3 * _forward_backward_seconds(module, h, steps)
        h = module(h)
    return totals


def _forward_backward_seconds(module: torch.nn.Module, given: GeometricTensor, steps: int) -> float:
    x = given.tensor.detach().requires_grad_(True)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        y = module(GeometricTensor(x, given.type)).tensor
        y.backward(torch.ones_like(y))
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="so2")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--by", choices=["operator", "module"], default="operator")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = {}
    for name, entry in SIZES[args.size].items():
        model = build(entry)
        if args.by == "module":
            totals = module_milliseconds(model, args.batch, args.steps)
            shares = sorted(totals.items(), key=lambda item: -item[1])
            rows[f"{name} ({count_parameters(model):,})"] = {
                "body, ms (fwd + bwd)": f"{sum(totals.values()):.0f}",
                "by module": ", ".join(f"`{k}` {v:.0f}" for k, v in shares[: args.top]),
            }
            continue
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
        title = (
            f"Where the training step goes, by {args.by} ({args.size}, batch {args.batch}, {args.threads} thread(s))"
        )
        record(title, command, torch.device("cpu"), table)


if __name__ == "__main__":
    main()
