"""How the filters that a static PDO layer and escnn's R2Conv can make differ, on SO(2) / O(2) band-limited regular
fields (the ``so2`` preset's) and C8 regular fields: the cosines of the principal angles between the two spans of 5x5
filters (1: a direction both have), and the share of the filters' energy on the outer ring (radius >= 2 pixels) for
a white draw of each layer's parameters.

    python benchmarks/filter_spans.py --record
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from common import markdown_table, record
from escnn import gspaces, nn

from epdo.nn import PDOConv


def filter_span(layer: torch.nn.Module) -> np.ndarray:
    """The filters of ``layer`` (R2Conv or PDOConv) for each unit vector of its parameters, ``(n_params, -1)``."""
    parameters = [p for p in layer.parameters() if p.requires_grad]
    rows = []
    with torch.no_grad():
        saved = [p.clone() for p in parameters]
        for p in parameters:
            for k in range(p.numel()):
                for q in parameters:
                    q.zero_()
                p.view(-1)[k] = 1.0
                rows.append(_filter(layer).reshape(-1).numpy().copy())
        for p, value in zip(parameters, saved):
            p.copy_(value)
    return np.array(rows)


def _filter(layer: torch.nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.R2Conv):
        return layer.expand_parameters()[0]
    return layer.filter_expansion()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the row spans of ``a`` and ``b``, largest first."""
    qa, qb = np.linalg.qr(a.T)[0], np.linalg.qr(b.T)[0]
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


def outer_ring_share(filters: np.ndarray, size: int = 5) -> float:
    """The mean share of the squared filter on pixels at radius >= 2 of its centre, over the span's orthonormal
    directions (a white draw of the parameters in the span's own metric)."""
    directions = np.linalg.qr(filters.T)[0].T.reshape(-1, size, size)
    yy, xx = np.mgrid[:size, :size] - size // 2
    outer = np.sqrt(xx**2 + yy**2) >= 1.9
    energy = directions**2
    return float(energy[:, outer].sum() / energy.sum())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/LOG.md")
    args = parser.parse_args(argv)
    so2 = gspaces.rot2dOnR2(-1, maximum_frequency=5)
    o2 = gspaces.flipRot2dOnR2(-1, maximum_frequency=5)
    c8 = gspaces.rot2dOnR2(8)
    cases = {}
    for name, gs in (("SO(2)", so2), ("O(2)", o2)):
        group = gs.fibergroup
        fields = nn.FieldType(gs, [group.spectral_regular_representation(*group.bl_irreps(2))])
        cases[f"{name}, lift"] = (nn.FieldType(gs, [gs.trivial_repr]), fields)
        cases[f"{name}, field to field"] = (fields, fields)
    cases["C8, regular to regular"] = (nn.FieldType(c8, [c8.regular_repr]), nn.FieldType(c8, [c8.regular_repr]))
    rows = {}
    for name, (in_type, out_type) in cases.items():
        r2conv = filter_span(nn.R2Conv(in_type, out_type, 5, padding=2, bias=False))
        pdo = filter_span(PDOConv(in_type, out_type))
        c = cosines(r2conv, pdo)
        rows[name] = {
            "dim R2Conv / PDOConv": f"{np.linalg.matrix_rank(r2conv)} / {np.linalg.matrix_rank(pdo)}",
            "shared directions (cos > 0.99)": str(int((c > 0.99).sum())),
            "the other cosines": ", ".join(f"{v:.2f}" for v in sorted(set(np.round(c[c <= 0.99], 2)))),
            "outer-ring energy, R2Conv / PDOConv": f"{outer_ring_share(r2conv):.2f} / {outer_ring_share(pdo):.2f}",
        }
        print(name, rows[name], flush=True)
    table = markdown_table(rows)
    print(table)
    if args.record:
        command = "python benchmarks/filter_spans.py " + " ".join(sys.argv[1:] if argv is None else argv)
        record("Filter spans of PDOConv and R2Conv 5x5", command, torch.device("cpu"), table)


if __name__ == "__main__":
    main()
