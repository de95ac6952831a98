"""Off-grid error by derivative order: of the stencils, and of trained Neural ePDO layers.

1. **Stencils.** Each order ``k``'s stencils ``S_k`` on smooth scalar fields inside a disk (``smooth_field``), rotated
   by escnn's interpolating ``transform`` as test images are: ``|P (S_k (g f) - D_k(g) g(S_k f))| / |P D_k(g) g(S_k
   f)|``, ``D_k`` the order's block of the derivative representation and ``P`` the projection onto the PDOs'
   angular frequencies ``<= 2`` (the default basis keeps no others), at 22.5 and 45 degrees; and the same without
   interpolation (:func:`epdo.diffops.stencil_rotation_error`), the stencils' own error.
2. **Trained layers** (``--runs``: ``epdo-train`` checkpoints): each ``NeuralePDO``'s share of its composed taps'
   energy by order on the run's first 32 test images (the sampled form: per sampled rotation), its off-grid error
   as ``trained_equivariance.py`` measures it, and the same with its coefficients replaced by their pixel mean (one
   static PDO per image: the stencils' part of the error).

    python benchmarks/stencil_orders.py --runs 'RUNS/screening/so2-sampled-seed*/checkpoint.pt'
"""

from __future__ import annotations

import argparse
import glob
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from common import report_table
from escnn import gspaces, nn
from trained_equivariance import layer_error

from epdo.checkpoint import load_checkpoint, read_checkpoint
from epdo.diffops import (
    DISCRETIZATIONS,
    derivative_matrix,
    frequency_projector,
    order_slice,
    stencil_rotation_error,
    stencils_numpy,
)
from epdo.equivariance import disk_mask, relative_error, smooth_field
from epdo.nn import NeuralePDO
from epdo.nn.neural_epdo import SampledLayout

ANGLES = (22.5, 45.0)
MAX_ORDER, MAX_FREQUENCY = 4, 2


def stencil_errors(discretization: str, angle: float, size: int, sigma: float) -> List[float]:
    """The relative off-grid error of each order's stencils (frequencies <= 2) on 4 smooth fields of ``size``."""
    gspace = gspaces.rot2dOnR2(-1)
    element = gspace.fibergroup.element(np.radians(angle), "radians")

    def rotated(t: torch.Tensor) -> torch.Tensor:
        return nn.GeometricTensor(t, nn.FieldType(gspace, [gspace.trivial_repr] * t.shape[1])).transform(element).tensor

    stencils = torch.tensor(stencils_numpy(discretization, MAX_ORDER), dtype=torch.float64)[:, None]
    projector = torch.tensor(frequency_projector(MAX_ORDER, MAX_FREQUENCY).T)
    action = projector @ torch.tensor(derivative_matrix(gspace.basespace_action(element), MAX_ORDER))
    torch.manual_seed(0)
    field = smooth_field(nn.FieldType(gspace, [gspace.trivial_repr]), 4, size, sigma).tensor.double()
    pad = stencils.shape[-1] // 2
    found = torch.einsum("ij,bjhw->bihw", projector, F.conv2d(rotated(field), stencils, padding=pad))
    expected = torch.einsum("ij,bjhw->bihw", action, rotated(F.conv2d(field, stencils, padding=pad)))
    inside = disk_mask(size, size, margin=8.0).double()
    orders = map(order_slice, range(MAX_ORDER + 1))
    return [relative_error(found[:, s] * inside, expected[:, s] * inside) for s in orders]


def order_shares(layer: NeuralePDO, x: nn.GeometricTensor) -> List[float]:
    """The share of ``layer``'s composed taps' energy in each derivative order, on the input ``x``."""
    n = layer.basis.num_operators
    with torch.no_grad():
        coefficients = layer.coefficients(x).tensor
        batch, _, height, width = coefficients.shape
        if isinstance(layer.layout, SampledLayout):
            d = layer.layout.d
            fields = coefficients.reshape(batch * layer.g, d, n * height * width)
            coefficients = torch.matmul(layer.layout.sample, fields)
        coefficients = coefficients.reshape(batch, -1, n, height, width)
        taps = layer.stencils.to(coefficients.dtype).reshape(n, -1)
        energy = [
            float(torch.einsum("bcnhw,nt->bchwt", coefficients[:, :, s], taps[s]).pow(2).sum())
            for s in map(order_slice, range(layer.basis.max_order + 1))
        ]
    return [e / sum(energy) for e in energy]


def static_part(module: torch.nn.Module, _, out: nn.GeometricTensor) -> nn.GeometricTensor:
    """A forward hook on a generator's output map: its coefficients replaced by their pixel mean."""
    return nn.GeometricTensor(out.tensor.mean(dim=(2, 3), keepdim=True).expand_as(out.tensor).contiguous(), out.type)


def trained_layers(checkpoint: str, size: int) -> Dict[str, List[float]]:
    """``{"layer k": [share of order 0, ..., share of the top order, off-grid error, its static part's]}`` for each
    ``NeuralePDO`` of the run."""
    model, _ = load_checkpoint(checkpoint)
    _, test = read_checkpoint(checkpoint).run_data(limit_test=32)
    inputs: Dict[int, nn.GeometricTensor] = {}
    layers = [m for m in model.eval().body.children() if isinstance(m, NeuralePDO)]
    hooks = [m.register_forward_pre_hook(lambda m, i, k=k: inputs.update({k: i[0]})) for k, m in enumerate(layers)]
    with torch.no_grad():
        model(torch.as_tensor(test.images))
    for hook in hooks:
        hook.remove()
    found = {}
    for k, layer in enumerate(layers):
        error = layer_error(layer, size)
        hook = layer.generator_out.register_forward_hook(static_part)
        static = layer_error(layer, size)
        hook.remove()
        found[f"layer {k + 2}"] = [*order_shares(layer, inputs[k]), error, static]
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=None, help="a glob of epdo-train checkpoints (part 2)")
    parser.add_argument("--size", type=int, default=41, help="side of the smooth test fields (part 1)")
    parser.add_argument("--sigma", type=float, default=2.0, help="their smoothing, pixels (part 1)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    measures = {
        "Off-grid error of the stencils by derivative order": lambda d, a: stencil_errors(d, a, args.size, args.sigma),
        "The same without interpolation (fields sampled exactly; epdo.diffops.stencil_rotation_error)": lambda d, a: (
            stencil_rotation_error(d, a, MAX_ORDER, MAX_FREQUENCY, width=args.sigma)
        ),
    }
    for title, measure in measures.items():
        rows = {
            f"{discretization} stencils, {angle:g} degrees": {f"order {k}": f"{e:.4f}" for k, e in enumerate(errors)}
            for discretization in DISCRETIZATIONS
            for angle in ANGLES
            for errors in [measure(discretization, angle)]
        }
        report_table(rows, title, __file__, argv, args.record)
    if args.runs:
        rows = {}
        runs = sorted(glob.glob(args.runs))
        if not runs:
            parser.error(f"--runs: no checkpoint matches {args.runs!r}")
        per_run = [trained_layers(run, 25) for run in runs]
        for layer in per_run[0]:
            values = np.array([found[layer] for found in per_run])
            *shares, error, static = values.mean(axis=0)
            row = {f"order {k}": f"{v:.2f}" for k, v in enumerate(shares)}
            row.update({"off-grid error": f"{error:.4f}", "static part": f"{static:.4f}"})
            row["corr(order-4 share, error)"] = f"{np.corrcoef(values[:, len(shares) - 1], values[:, -2])[0, 1]:.2f}"
            rows[f"{layer}, mean of {len(runs)} runs"] = row
        report_table(rows, "Trained Neural ePDO layers by derivative order", __file__, argv, args.record)


if __name__ == "__main__":
    main()
