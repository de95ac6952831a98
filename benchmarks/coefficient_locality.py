"""Does the Neural ePDO layer lose time moving its coefficient tensor through memory?

The generator's output map writes ``(B, g d n, H, W)`` coefficients, 3.75x the input for the layer benchmark's
configuration (C16, 16 regular fields, g=4, s=4: 24 MiB at batch 8); the kernel reads them forward and backward and
writes their gradient, which the output map's two backward products read again.  Hypothesis: that round trip costs
a measurable part of the step.  Test: the same layer with the output map and the adaptive PDO run per chunk of the
batch (coefficients and their gradient 1/B as large, consumed while still in cache), against the layer itself,
forward+backward in one process, the formulations interleaved round by round.

    python benchmarks/coefficient_locality.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List

import torch
from common import markdown_table
from escnn import gspaces, nn

from epdo.nn import NeuralePDO, adaptive_pdo


def chunked_forward(layer: NeuralePDO, x: nn.GeometricTensor, chunk: int) -> nn.GeometricTensor:
    """``layer(x)`` with the generator's output map and the adaptive PDO evaluated ``chunk`` images at a time."""
    hidden = layer.generator_norm(layer.generator_in(x)).tensor.relu_()
    # the output map as the layer's Conv1x1 computes it (a batched matrix product per group), its weight expanded once
    # for all chunks: calling the module per chunk would expand the basis per chunk and time that too
    weight, _ = layer.generator_out.filter_and_bias()  # (g d n, M / s, 1, 1); the output map has no bias
    batch, channels, height, width = hidden.shape
    groups = layer.s
    weight = weight.reshape(groups, -1, channels // groups)
    outputs = []
    for start in range(0, batch, chunk):
        h = hidden[start : start + chunk].reshape(-1, groups, channels // groups, height * width)
        coefficients = torch.matmul(weight, h).reshape(h.shape[0], -1, height, width)
        outputs.append(adaptive_pdo(x.tensor[start : start + chunk], coefficients, layer.stencils, layer.g))
    return layer.mix(nn.GeometricTensor(torch.cat(outputs), layer.in_type))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group-order", type=int, default=16)
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gs = gspaces.rot2dOnR2(args.group_order)
    ftype = nn.FieldType(gs, [gs.regular_repr] * args.fields)
    layer = NeuralePDO(ftype, ftype, g=4, s=4, reduction=1, discretization="fd").train()
    x = torch.randn(args.batch, ftype.size, args.size, args.size)

    forwards: Dict[str, Callable[[nn.GeometricTensor], nn.GeometricTensor]] = {"layer (whole batch)": layer}
    for chunk in sorted({1, 2, args.batch}):
        forwards[f"chunks of {chunk}"] = lambda v, chunk=chunk: chunked_forward(layer, v, chunk)
    with torch.no_grad():
        reference = layer(nn.GeometricTensor(x, ftype)).tensor
        for name, forward in forwards.items():
            error = (forward(nn.GeometricTensor(x, ftype)).tensor - reference).abs().max().item()
            assert error <= 1e-5 * reference.abs().max().item(), f"{name} differs from the layer by {error}"

    def step(forward: Callable[[nn.GeometricTensor], nn.GeometricTensor]) -> None:
        forward(nn.GeometricTensor(x.clone().requires_grad_(), ftype)).tensor.square().mean().backward()

    times: Dict[str, List[float]] = {name: [] for name in forwards}
    for round_ in range(args.rounds + 2):  # two warm-up rounds
        for name, forward in forwards.items():
            start = time.perf_counter()
            step(forward)
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    baseline = statistics.median(times["layer (whole batch)"])
    rows = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        rows[name] = {"fwd+bwd median (ms)": f"{1e3 * median:.1f}", "min (ms)": f"{1e3 * min(seconds):.1f}",
                      "time / layer": f"{median / baseline:.2f}"}  # fmt: skip
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
