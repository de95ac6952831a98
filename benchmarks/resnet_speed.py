"""Training-step time (forward + backward + Adam step) of the equivariant wide ResNet (:func:`epdo.models.wide_resnet`:
stride-2 stages, strided 1x1 shortcuts) built from Neural ePDOs, static PDOs and escnn's R2Conv with the same
arguments, timed in interleaved rounds in one plain process, with the ratio to the R2Conv network of the same widths
and, for the Neural ePDO, at about its parameter count.

    python benchmarks/resnet_speed.py --repeats 9 --record
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved_median_seconds, report_table, training_step

from epdo.models import count_parameters, wide_resnet


def widths(text: str) -> tuple:
    """Comma-separated positive integers."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=widths, default=(8, 16, 32), help="regular fields per stage")
    parser.add_argument(
        "--equal-widths", type=widths, default=(16, 33, 66), help="the Neural ePDO at R2Conv's count (within 3%%)"
    )
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--group-order", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=29, help="image side (odd: exact quarter turns)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    configurations = {
        "escnn R2Conv": ("escnn", args.widths),
        "Neural ePDO, same widths": ("epdo", args.widths),
        "Neural ePDO, R2Conv's parameters": ("epdo", args.equal_widths),
        "static PDOs, same widths": ("pdo", args.widths),
    }
    x = torch.rand(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    models, steps = {}, {}
    for name, (layer, fields) in configurations.items():
        models[name] = wide_resnet(layer, fields, args.blocks, args.group_order)
        steps[name] = training_step(models[name], torch.optim.Adam(models[name].parameters(), 1e-3), x, y)
    seconds = interleaved_median_seconds(steps, torch.device("cpu"), args.repeats)
    baseline = seconds["escnn R2Conv"]
    rows = {
        name: {
            "widths": ",".join(map(str, configurations[name][1])),
            "params": f"{count_parameters(models[name]):,}",
            "step (ms)": f"{seconds[name] * 1e3:.1f}",
            "time / R2Conv's": f"{seconds[name] / baseline:.2f}",
        }
        for name in configurations
    }
    title = (
        f"Wide ResNet step: C{args.group_order}, {args.blocks} blocks per stage, batch {args.batch}, "
        f"{args.size}x{args.size}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds"
    )
    report_table(rows, title, __file__, argv, args.record)


if __name__ == "__main__":
    main()
