"""Hashes of what every preset network and both layers compute: outputs (training and eval mode) and gradients, for
a fixed seed and input.  Run it at two commits to check that a change keeps existing calls bit for bit.

    python benchmarks/output_hashes.py > after.txt    # and at the other commit: diff before.txt after.txt
"""

from __future__ import annotations

import argparse
import hashlib

import torch
from escnn import gspaces, nn

from epdo.models import PRESETS, build_model
from epdo.nn import NeuralePDO, PDOConv


def digest(*tensors: torch.Tensor) -> str:
    """The first 16 hex digits of the SHA-256 of the tensors' bytes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def networks() -> dict:
    """``{preset: (outputs, gradients)}``: training-mode and eval-mode logits of 4 images, and every gradient."""
    found = {}
    for name in sorted(PRESETS):
        torch.manual_seed(0)
        model = build_model(PRESETS[name])
        x = torch.rand(4, 1, 28, 28)
        y = model(x)
        y.square().sum().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        with torch.no_grad():
            evaluated = model.eval()(x)
        found[name] = (digest(y, evaluated), digest(*grads))
    return found


def layers() -> dict:
    """``{layer on fields: (output, gradients)}``: both layers on C8 regular and on irrep + trivial fields."""
    gs = gspaces.rot2dOnR2(8)
    types = {
        "regular": nn.FieldType(gs, [gs.regular_repr] * 2),
        "irreps": nn.FieldType(gs, [gs.irrep(1)] * 2 + [gs.trivial_repr] * 2),
    }
    found = {}
    for cls in (NeuralePDO, PDOConv):
        for label, ftype in types.items():
            torch.manual_seed(0)
            layer = cls(ftype, ftype)
            x = torch.randn(2, ftype.size, 13, 13, requires_grad=True)
            y = layer(nn.GeometricTensor(x, ftype)).tensor
            y.square().sum().backward()
            found[f"{cls.__name__} on {label}"] = (digest(y), digest(x.grad, *[p.grad for p in layer.parameters()]))
    return found


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    for name, (outputs, gradients) in {**networks(), **layers()}.items():
        print(f"{name}: outputs {outputs}, gradients {gradients}")


if __name__ == "__main__":
    main()
