"""Forward + backward of the SO(2) network's per-channel modules, epdo's against escnn's, on the first layer's shape
(18 band-limited regular fields of frequencies up to 2, 28x28, batch 64), interleaved in one plain process: the
Fourier ReLU (12 samples), the batch norm, and the sampled form's sampling of 13 O(2) fields (16 samples) by a
batched matrix product, by ``field_linear``, and by ``field_linear`` with its outputs' memory never kept.

    python benchmarks/field_map_speed.py --repeats 9 --record
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict

import torch
from common import interleaved_median_seconds, markdown_table, record
from escnn import gspaces, nn

from epdo.nn import FourierReLU, IIDBatchNorm, field_linear
from epdo.nn.native import OUTPUT_BUFFERS


def forward_backward(module: Callable, x: torch.Tensor) -> Callable[[], None]:
    """One forward and backward (the gradient of the sum) of ``module`` on ``x``."""

    def step() -> None:
        y = module(x.detach().requires_grad_())
        y.backward(torch.ones_like(y))

    return step


def without_kept_memory(step: Callable[[], None]) -> Callable[[], None]:
    """``step`` with :data:`epdo.nn.native.OUTPUT_BUFFERS` keeping no free memory (every output fresh)."""

    def unkept() -> None:
        limit, OUTPUT_BUFFERS.max_free_bytes = OUTPUT_BUFFERS.max_free_bytes, 0
        OUTPUT_BUFFERS.clear()
        try:
            step()
        finally:
            OUTPUT_BUFFERS.max_free_bytes = limit

    return unkept


def steps(batch: int) -> Dict[str, Dict[str, Callable[[], None]]]:
    """``{question: {implementation: step}}``, escnn's (or PyTorch's) first in each."""
    gspace = gspaces.rot2dOnR2(-1, maximum_frequency=4)
    irreps = gspace.fibergroup.bl_irreps(2)
    theirs = nn.FourierPointwise(gspace, 18, irreps, type="regular", N=12)
    ours = FourierReLU(gspace, 18, irreps, type="regular", N=12)
    ftype = ours.in_type
    x = torch.randn(batch, ftype.size, 28, 28)

    def on_fields(module):
        return lambda t: module(nn.GeometricTensor(t, ftype)).tensor

    o2 = gspaces.flipRot2dOnR2(-1, maximum_frequency=4)
    sampling = nn.FourierPointwise(o2, 1, o2.fibergroup.bl_irreps(2), type="regular", N=8).A  # (16, 10)
    planes = torch.randn(batch * 13, sampling.shape[1], 28 * 28)
    linear = forward_backward(lambda t: field_linear(t, sampling), planes)
    return {
        "Fourier ReLU": {
            "escnn FourierPointwise": forward_backward(on_fields(theirs), x),
            "epdo FourierReLU": forward_backward(on_fields(ours), x),
        },
        "batch norm": {
            "escnn IIDBatchNorm2d": forward_backward(on_fields(nn.IIDBatchNorm2d(ftype)), x),
            "epdo IIDBatchNorm": forward_backward(on_fields(IIDBatchNorm(ftype)), x),
        },
        "sampling (O(2))": {
            "torch.matmul": forward_backward(lambda t: torch.matmul(sampling, t), planes),
            "field_linear, outputs never kept": without_kept_memory(linear),
            "field_linear": linear,
        },
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    for question, implementations in steps(args.batch).items():
        seconds = interleaved_median_seconds(implementations, torch.device("cpu"), args.repeats)
        baseline = next(iter(seconds.values()))
        for name, value in seconds.items():
            rows[f"{question}: {name}"] = {"ms": f"{1e3 * value:.1f}", "time / the first's": f"{value / baseline:.2f}"}
    table = markdown_table(rows)
    print(table)
    if args.record:
        command = "python benchmarks/field_map_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
        title = f"Per-channel modules, forward + backward, batch {args.batch}, {args.threads} thread(s)"
        record(title, command, torch.device("cpu"), table)


if __name__ == "__main__":
    main()
