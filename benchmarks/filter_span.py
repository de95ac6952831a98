"""How far the PDO filter spaces lie from escnn's ``R2Conv`` 5x5 filter space: principal angles per field pair.

For each discretization (and optionally a frequency cutoff), the span of the equivariant PDO filters
``rho_in -> rho_out`` (:func:`epdo.kernels.pdo_filter_basis`, ``(n, d_out, d_in, 5, 5)``) is compared with the span of
escnn's own basis filters for the same pair (rings of radius 0, 1, 2 with Gaussian radial profiles).  A principal
angle of 0 means a direction both spaces share; 90 degrees one that only one of them has.  Equal dimensions (the
``max_frequency=2`` case) make the comparison one of content alone: which filters a network can learn.

    python benchmarks/filter_span.py --group-order 8 --max-frequency 2
"""

from __future__ import annotations

import argparse
from typing import Dict

import numpy as np
import torch
from common import markdown_table
from escnn import gspaces, nn

from epdo.diffops import DISCRETIZATIONS
from epdo.kernels import pdo_filter_basis


def escnn_filters(gspace, rho_in, rho_out, size: int = 5) -> np.ndarray:
    """escnn's ``R2Conv`` basis filters for one field pair, one per row: ``(n, d_out * d_in * size * size)``."""
    conv = nn.R2Conv(nn.FieldType(gspace, [rho_in]), nn.FieldType(gspace, [rho_out]), size, bias=False)
    units = torch.eye(conv.weights.numel())
    with torch.no_grad():
        return np.stack([conv.basisexpansion(unit).double().numpy().ravel() for unit in units])


def principal_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles (degrees, ascending) between the row spans of ``a`` ``(n, D)`` and ``b`` ``(m, D)``."""
    qa, qb = np.linalg.qr(a.T)[0], np.linalg.qr(b.T)[0]
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return np.sort(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group-order", type=int, default=8)
    parser.add_argument("--max-frequency", type=int, default=None)
    args = parser.parse_args(argv)
    gspace = gspaces.rot2dOnR2(args.group_order)
    pairs = {
        "trivial -> trivial": (gspace.trivial_repr, gspace.trivial_repr),
        "trivial -> regular": (gspace.trivial_repr, gspace.regular_repr),
        "regular -> regular": (gspace.regular_repr, gspace.regular_repr),
    }
    rows: Dict[str, Dict[str, str]] = {}
    for pair, (rho_in, rho_out) in pairs.items():
        reference = escnn_filters(gspace, rho_in, rho_out)
        for discretization in DISCRETIZATIONS:
            pdo = pdo_filter_basis(gspace, rho_in, rho_out, discretization, max_frequency=args.max_frequency)
            angles = principal_angles(reference, pdo.reshape(len(pdo), -1))
            rows[f"{pair}, {discretization}"] = {
                "dim escnn / PDO": f"{len(reference)} / {len(pdo)}",
                "angles > 30 deg": str(int(np.sum(angles > 30))),
                "largest angle (deg)": f"{angles[-1]:.1f}",
                "mean cos^2": f"{np.mean(np.cos(np.radians(angles)) ** 2):.3f}",
                "angles (deg)": " ".join(f"{t:.0f}" for t in angles) if len(angles) <= 15 else "",
            }
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
