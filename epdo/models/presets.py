"""Named configurations: the library's default network, its half-parameter variant, the SO(2) networks and
the paper's four MNIST-rot models."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict

from epdo.kernels import PDOBasis
from epdo.models.config import ModelConfig

PAPER_WIDTHS = {
    "regular": (16, 24, 32, 32, 48, 64),
    "quotient": (12, 16, 24, 24, 32, 64),
    "flip": (12, 16, 24, 24, 32, 64),
}
"""Fields of layers 1-6 of the paper's regular, quotient and D16|5C16 models."""


PRESETS: Dict[str, ModelConfig] = {
    "default": ModelConfig(),
    "half": ModelConfig(widths=(10, 11, 15, 15, 21, 21), reduction=8, dropout=0.0),
    "so2": ModelConfig(group_order=-1, fields="fourier", widths=(18, 18, 27, 27, 35, 35)),
    "so2-sampled": ModelConfig(
        group_order=-1,
        fields="fourier",
        widths=(16, 16, 24, 24, 32, 32),
        reduction=2,
        form="sampled",
        basis=PDOBasis("gauss-exact"),
    ),
    "paper-R-fd": ModelConfig(
        group_order=16, widths=PAPER_WIDTHS["regular"], basis=PDOBasis("fd", max_frequency=None), g=4, s=4, reduction=1
    ),
    "paper-R-gauss": ModelConfig(
        group_order=16, widths=PAPER_WIDTHS["regular"], basis=PDOBasis(max_frequency=None), g=4, s=4, reduction=1
    ),
    "paper-Q-gauss": ModelConfig(
        fields="quotient",
        group_order=16,
        widths=PAPER_WIDTHS["quotient"],
        basis=PDOBasis(max_frequency=None),
        g=4,
        s=1,
        reduction=2,
    ),
    "paper-D16-5C16": ModelConfig(
        group_order=16,
        flip=True,
        widths=PAPER_WIDTHS["flip"],
        basis=PDOBasis(max_frequency=None),
        g=4,
        s=1,
        reduction=1,
    ),
}
"""Named configurations: ``"default"`` (the library's default network, C8, ~27k parameters), ``"half"`` (the same
network at half escnn's parameter count, 13,814: a narrower generator and no dropout buy wider layers), ``"so2"``
(the same skeleton on SO(2) band-limited regular fields of frequencies up to 2, in the commutant form, 27,481
parameters; escnn's R2Conv on it at 27,614: ``layer="escnn", widths=(7, 7, 11, 11, 14, 14)``), ``"so2-sampled"`` (the
SO(2) network that learns as R2Conv's: the sampled form, each sampled rotation its own PDO, with a generator twice as
wide, on Gaussian stencils made exact on polynomials (``"gauss-exact"``: its trained layers rotate off the grid with
less error than R2Conv's); 27,634 parameters; benchmarks/RESULTS.md compares it with R2Conv) and the paper's four
MNIST-rot models (C16; D16|5C16), whose parameter counts are within 1% of the reference implementation's.
``replace(PRESETS[name], layer="reference")`` gives a paper model with the reference implementation's layers."""


def preset(name: str, **changes: Any) -> ModelConfig:
    """``PRESETS[name]`` with ``changes`` applied (``dataclasses.replace``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid ones are {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)
