"""Forward and forward+backward time of :func:`epdo.nn.adaptive_pdo` alone, compiled kernel against the PyTorch path,
in one plain process (no allocator tuning).  Default: the layer benchmark's shapes (batch 8, 4 partitions of 4 fields
of 16 channels, 28x28), fd and gauss stencils, 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import markdown_table, median_seconds, record

from epdo.diffops import stencils
from epdo.nn import adaptive_pdo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,4,4,16,28,28", help="batch, partitions q, fields g, d, height, width")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    b, q, g, d, h, w = (int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    rows = {}
    for discretization in ("fd", "gauss"):
        s = stencils(discretization)
        x = torch.randn(b, q * g * d, h, w, requires_grad=True)
        a = torch.randn(b, g * d * s.shape[0], h, w, requires_grad=True)
        grad = torch.randn(x.shape)
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            for backend in ("native", "pytorch"):

                def forward(backend=backend, x=x, a=a, s=s) -> None:
                    with torch.no_grad():
                        adaptive_pdo(x, a, s, g, backend=backend)

                def both(backend=backend, x=x, a=a, s=s, grad=grad) -> None:
                    torch.autograd.grad(adaptive_pdo(x, a, s, g, backend=backend), (x, a), grad)

                cpu = torch.device("cpu")
                fwd, total = median_seconds(forward, cpu, args.repeats), median_seconds(both, cpu, args.repeats)
                name = f"{discretization}, {threads} thread{'s' if threads > 1 else ''}, {backend}"
                rows[name] = {"fwd (ms)": f"{fwd * 1e3:.1f}", "fwd+bwd (ms)": f"{total * 1e3:.1f}"}
                print(f"{name:>32}: {rows[name]}", flush=True)
    if args.record:
        command = "python benchmarks/kernel_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
        record(f"adaptive_pdo alone, shape {args.shape}", command, torch.device("cpu"), markdown_table(rows))


if __name__ == "__main__":
    main()
