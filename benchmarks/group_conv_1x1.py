"""Can the equivariant 1x1 maps between regular fields run faster in the irrep (Fourier) basis?

A C_N-equivariant linear map between ``z`` regular fields is a group convolution, so after a change to the real
Fourier basis of every field it is block-diagonal: ``~ 2 N z^2`` multiply-adds per pixel instead of the dense
``N^2 z^2`` (C16, 16 fields: 8x fewer), plus two basis changes of ``N^2 z`` each.  This times, per forward+backward
of ``P`` pixels (the layer benchmark's batch 8 x 28 x 28):

* ``dense``: the layers' formulation, one ``(P, zN) @ (zN, zN)`` GEMM;
* ``complex FFT``: ``rfft`` over the group axis, one ``z x z`` complex matrix per frequency, ``irfft``;
* ``real basis, lower bound``: a real orthogonal basis change, one real ``z x z`` map per basis component, and back:
  fewer multiply-adds than the exact block form (which also couples each cos/sin pair), so it bounds the gain.

Shapes only matter here, so the weights are random, not equivariant.

    python benchmarks/group_conv_1x1.py --group-order 16 --fields 16 --threads 2
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict

import torch
from common import markdown_table, median_seconds


def formulations(pixels: int, fields: int, order: int) -> Dict[str, Callable[[], torch.Tensor]]:
    """Each formulation maps the same input ``(pixels, fields * order)`` to ``(pixels, fields * order)``."""
    x = torch.randn(pixels, fields * order, requires_grad=True)
    dense = torch.randn(fields * order, fields * order, requires_grad=True)
    per_frequency = torch.randn(order // 2 + 1, fields, fields, dtype=torch.complex64, requires_grad=True)
    basis = torch.linalg.qr(torch.randn(order, order))[0]
    per_component = torch.randn(order, fields, fields, requires_grad=True)

    def complex_fft() -> torch.Tensor:
        spectrum = torch.fft.rfft(x.view(pixels, fields, order), dim=2).permute(2, 0, 1)  # (freq, P, z)
        mixed = torch.matmul(spectrum, per_frequency).permute(1, 2, 0)  # (P, z, freq)
        return torch.fft.irfft(mixed, n=order, dim=2).reshape(pixels, fields * order)

    def real_basis() -> torch.Tensor:
        components = (x.view(pixels * fields, order) @ basis).view(pixels, fields, order).permute(2, 0, 1)
        mixed = torch.bmm(components, per_component).permute(1, 2, 0).reshape(pixels * fields, order)
        return (mixed @ basis.T).view(pixels, fields * order)

    return {"dense": lambda: x @ dense, "complex FFT": complex_fft, "real basis, lower bound": real_basis}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group-order", type=int, default=16)
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--pixels", type=int, default=8 * 28 * 28)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: Dict[str, Dict[str, str]] = {}
    baseline = None
    for name, forward in formulations(args.pixels, args.fields, args.group_order).items():

        def step(forward: Callable[[], torch.Tensor] = forward) -> None:
            forward().sum().backward()

        seconds = median_seconds(step, torch.device("cpu"), args.repeats, warmup=3)
        baseline = baseline or seconds
        rows[name] = {"fwd+bwd (ms)": f"{1000 * seconds:.2f}", "time / dense": f"{seconds / baseline:.2f}"}
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
