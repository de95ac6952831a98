"""Forward+backward time and peak memory of one Neural ePDO layer against escnn's R2Conv 5x5 and an unfold-based
evaluation of the same layer (the reference implementation's formulation), measured in one process in interleaved
rounds (every model runs one step per round).

Default: the paper's layer (C16, 16 regular fields in and out, g=4, s=4, reduction=1, fd stencils, every PDO of order
<= 4), 28x28, batch 8 on CPU (64 on CUDA).  ``--so2``: instead, ``--fields`` copies of SO(2)'s ``bl_irreps(3)``
(frequencies 0-3, 7 channels each) in and out, the Neural ePDO with its defaults (the commutant form) against
R2Conv 5x5.  ``--geometry``: both layers with R2Conv's arguments for a stride-2 5x5 layer, a 3x3 layer or a
dilation-2 5x5 layer instead of the 'same' 5x5 one.  ``--floor``: also the Neural ePDO with its adaptive PDO replaced
by reading the input at the output pixels (generator and mix alone: the time no PDO kernel can remove).

    python benchmarks/layer_speed.py --geometry stride2
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

import torch
import torch.nn.functional as F
from common import interleaved_median_seconds, markdown_table, peak_bytes, peak_bytes_in_fresh_process, record
from escnn import gspaces, nn

from epdo.nn import NeuralePDO, PDOBasis, adaptive_pdo
from epdo.nn.functional import COEFFICIENT_SCALE, NORM_EPS

GEOMETRIES = {
    "same": dict(kernel_size=5, padding=2),
    "stride2": dict(kernel_size=5, padding=2, stride=2),
    "3x3": dict(kernel_size=3, padding=1),
    "dilation2": dict(kernel_size=5, padding=4, dilation=2),
}
"""R2Conv's arguments of each ``--geometry``, given to both layers."""


def unfold_adaptive_pdo(
    x: torch.Tensor, coefficients: torch.Tensor, stencils: torch.Tensor, fields: int, *, normalization: str = "rms"
) -> torch.Tensor:
    """The reference formulation: compose taps, normalize them, multiply with a 25-fold ``unfold`` copy of ``x``."""
    b, c, h, w = x.shape
    n_ops, k, _ = stencils.shape
    d = coefficients.shape[1] // (fields * n_ops)
    q = c // (fields * d)
    a = coefficients.reshape(b, fields, d, n_ops, h * w) * COEFFICIENT_SCALE
    taps = torch.einsum("bjcaz,ap->bjcpz", a, stencils.reshape(n_ops, k * k))
    if normalization == "l1":
        nu = taps.abs().sum(dim=(2, 3), keepdim=True)
    else:
        nu = (taps.square().sum(dim=(2, 3), keepdim=True) / d).sqrt()
    taps = taps / (nu + NORM_EPS)
    patches = F.unfold(x, k, padding=k // 2).reshape(b, q, fields, d, k * k, h * w)
    return (patches * taps[:, None]).sum(4).reshape(b, c, h, w)


def without_pdo(
    x: torch.Tensor, coefficients: torch.Tensor, stencils: torch.Tensor, fields: int, *, normalization: str, geometry
) -> torch.Tensor:
    """No PDO: the input at the output pixels, plus zero times a sum of the coefficients (so that the generator's
    backward runs)."""
    return geometry.centres(x) + 0.0 * coefficients.sum()


class Reformulated(torch.nn.Module):
    """The same layer (shared parameters) with its adaptive PDO computed by ``pdo(x, coefficients, stencils, g,
    normalization)``: the unfold formulation, or :func:`adaptive_pdo` with another backend."""

    def __init__(self, layer: NeuralePDO, pdo: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.layer, self.pdo = layer, pdo

    def forward(self, x: nn.GeometricTensor) -> nn.GeometricTensor:
        layer = self.layer
        centres = nn.GeometricTensor(layer.geometry.centres(x.tensor), layer.in_type)
        coefficients = layer.coefficients(centres).tensor
        y = self.pdo(x.tensor, coefficients, layer.stencils, layer.g, normalization=layer.normalization)
        return layer.mix(nn.GeometricTensor(y, layer.in_type))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--group-order", type=int, default=16)
    parser.add_argument("--fields", type=int, default=16)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--so2", action="store_true", help="SO(2) bl_irreps(3) fields, the layer's defaults")
    parser.add_argument("--geometry", choices=list(GEOMETRIES), default="same", help="R2Conv's arguments of both")
    parser.add_argument("--floor", action="store_true", help="also the layer without its adaptive PDO")
    parser.add_argument("--record", action="store_true", help="append the results to benchmarks/LOG.md")
    parser.add_argument("--memory-only", type=int, default=None, help=argparse.SUPPRESS)  # internal: see below
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    geometry = GEOMETRIES[args.geometry]
    if args.so2:
        gs = gspaces.rot2dOnR2(-1, 6)
        ftype = nn.FieldType(gs, [gs.irrep(k) for k in range(4)] * args.fields)
        layer = NeuralePDO(ftype, ftype, **geometry).to(device).train()
        models = {"NeuralePDO (epdo, commutant form)": layer}
    else:
        gs = gspaces.rot2dOnR2(args.group_order)
        ftype = nn.FieldType(gs, [gs.regular_repr] * args.fields)
        basis = PDOBasis("fd", max_frequency=None)
        layer = NeuralePDO(ftype, ftype, **geometry, g=4, s=4, reduction=1, basis=basis).to(device).train()
        native = device.type == "cpu"
        models = {f"NeuralePDO (epdo, {'native kernel' if native else 'PyTorch path'})": layer}
    models[f"escnn R2Conv ({args.geometry})"] = nn.R2Conv(ftype, ftype, **geometry, bias=False).to(device).train()
    reformulations = not args.so2 and args.geometry == "same"  # the unfold formulation computes 'same' only
    if not args.so2 and args.geometry != "same" and device.type == "cpu":  # the other route of the same layer
        other = "pytorch" if native else "native"
        arguments = {k: v for k, v in geometry.items() if k != "kernel_size"}
        label = "PyTorch path" if other == "pytorch" else "native kernel"
        models[f"NeuralePDO (epdo, {label})"] = Reformulated(
            layer, functools.partial(adaptive_pdo, backend=other, **arguments)
        )
    if reformulations:
        models["NeuralePDO via unfold (reference formulation)"] = Reformulated(layer, unfold_adaptive_pdo)
        if device.type == "cpu":
            models["NeuralePDO (epdo, PyTorch path)"] = Reformulated(
                layer, functools.partial(adaptive_pdo, backend="pytorch")
            )
    if args.floor:
        models["NeuralePDO without its PDO (generator and mix)"] = Reformulated(
            layer, functools.partial(without_pdo, geometry=layer.geometry)
        )
    x = torch.randn(batch, ftype.size, args.size, args.size, device=device)

    def step(model: torch.nn.Module, inputs: torch.Tensor = x) -> Callable[[], None]:
        xin = nn.GeometricTensor(inputs.clone().requires_grad_(), ftype)
        return lambda: model(xin).tensor.square().mean().backward()

    if args.memory_only is not None:  # a fresh process measures one model's step after a batch-1 warm-up
        name = list(models)[args.memory_only]
        for inputs in (x[:1], x):
            memory = peak_bytes(step(models[name], inputs), device)
        print(memory)
        return
    if reformulations:  # they compute the same map
        with torch.no_grad():
            coefficients = layer.coefficients(nn.GeometricTensor(x, ftype)).tensor
            fast = adaptive_pdo(x, coefficients, layer.stencils, layer.g)
            slow = unfold_adaptive_pdo(x, coefficients, layer.stencils, layer.g)
        assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-5), (fast - slow).abs().max()

    seconds = interleaved_median_seconds({name: step(model) for name, model in models.items()}, device, args.repeats)
    results = {}
    for index, name in enumerate(models):
        if device.type == "cuda":
            memory = peak_bytes(step(models[name]), device)
        else:  # CPU peak memory: a fresh process per model, same configuration, glibc defaults
            memory = peak_bytes_in_fresh_process(__file__, argv, str(index))
        results[name] = (seconds[name], memory)
        print(f"{name:>48}: {seconds[name] * 1e3:8.1f} ms  peak {memory / 2**20:8.1f} MiB", flush=True)

    ours, r2conv = (results[n] for n in list(models)[:2])
    rows = {
        name: {
            "fwd+bwd (ms)": f"{t * 1e3:.1f}",
            "peak memory (MiB)": f"{m / 2**20:.1f}",
            "time / epdo": f"{t / ours[0]:.2f}",
        }
        for name, (t, m) in results.items()
    }
    summary = f"epdo / R2Conv time {ours[0] / r2conv[0]:.3f}; epdo peak memory {ours[1] / 2**20:.0f} MiB"
    if reformulations:
        summary += f"; epdo / unfold time {ours[0] / results[list(models)[2]][0]:.3f}"
    print(summary)
    if args.record:
        fields = (
            f"SO(2), {args.fields} x bl_irreps(3) in/out, defaults"
            if args.so2
            else f"C{args.group_order}, {args.fields} regular fields in/out, g=4, s=4, reduction=1, fd"
        )
        config = (
            f"{fields}, {args.geometry} {geometry}, {args.size}x{args.size}, batch {batch}, {device.type}, "
            f"median of {args.repeats} rounds"
        )
        command = "python benchmarks/layer_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
        record("Layer speed: " + config, command, device, markdown_table(rows) + "\n\n" + summary)


if __name__ == "__main__":
    main()
