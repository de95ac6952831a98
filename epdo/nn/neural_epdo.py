"""The Neural ePDO layer: a spatially adaptive equivariant PDO whose coefficients an equivariant MLP generates."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from escnn.group import Representation
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.diffops import (
    check_discretization,
    check_max_frequency,
    check_max_order,
    coefficient_representation,
    num_operators,
    stencils,
)
from epdo.kernels import DEFAULT_BANDWIDTH, check_bandwidth, pdo_coefficient_basis
from epdo.nn.checks import check_field_types, check_input, is_permutation_representation
from epdo.nn.conv1x1 import Conv1x1
from epdo.nn.field_norm import FieldNorm
from epdo.nn.functional import adaptive_pdo, check_normalization

GENERATOR_INITS = ("static", "reference")
DEFAULT_MIX_GAIN = 4.0
"""Parametrization gain of the output mix (about ``sqrt(15)``, the ratio of a static PDO's basis size per field
pair to the mix's): Adam's relative steps ``lr / |theta|`` then match a ``PDOConv``'s (issue 8)."""


class NeuralePDO(EquivariantModule):
    r"""Neural ePDO: ``out = Mix( sum_a A_a(f(x)) d^a f(x) )`` with coefficients generated from the local feature.

    1. Generator (an equivariant MLP of 1x1 maps): ``z`` rho-fields -> ``M`` regular fields
       (``M = floor(z d / (reduction |G|))``) -> per-field normalization -> ReLU -> ``g`` fields of the coefficient
       representation ``rho (x) D^-T`` (a 1x1 map with ``s`` groups, whose basis is orthonormal for the composed
       ``5 x 5`` taps, as in the reference implementation, or for their band-limiting metric, see ``bandwidth``).
    2. Each coefficient field is scaled by 1/5 and divided, per pixel, by the norm of its composed ``d x 5 x 5`` taps
       + 0.01: ``normalization="rms"`` (default) the root mean square of its channels' L2 norms, which keeps a white
       input's variance; ``"l1"`` the sum of their absolute values (the reference implementation).
    3. The input's ``q = z / g`` partitions of ``g`` fields share these coefficients: channel ``(p, j, c)`` gets
       ``sum_a A[j, c, a] (S_a * f_(p, j, c))``; steps 2-3 are :func:`epdo.nn.adaptive_pdo` (on CPU one compiled
       kernel that composes the per-pixel taps, normalizes and applies them).
    4. An equivariant 1x1 map ``z`` rho-fields -> ``out_type`` (the mix, parametrized with gain ``mix_gain``).

    Shapes: input ``(B, z d, H, W)``, output ``(B, out_type.size, H, W)``.

    Args:
        in_type: ``z`` fields of one permutation representation (regular, quotient, or a direct sum of them).
        out_type: any field type of the same gspace.
        g: fields per partition (divides ``z``).
        s: groups of the generator's output map (divides ``g`` and ``M``).
        reduction: hidden width reduction ``r``.
        discretization: ``"fd"``, ``"gauss"`` or ``"rbffd"``.
        max_order: highest derivative order (0..4).
        size: stencil width.
        generator_init: ``"static"`` (default) starts the generator's per-field affine at weight 0, bias 1, so that
            the coefficients are the same at every pixel (a static PDO) until training makes them adaptive;
            ``"reference"`` uses weight 1, bias 0 as the reference implementation.  Only the initialization
            differs.  Measured (fashion-rot, C4, 2000 images, 3 epochs): 63.7% train / 66.2% test error with
            ``"static"`` against 76.3% / 77.0% with ``"reference"``.
        normalization: ``"rms"`` or ``"l1"`` (step 2).  With ``"l1"`` the layer's output is ~1000x smaller in
            variance than its input, so a following BatchNorm's running variance (starting at 1) is far off for
            hundreds of steps and eval mode predicts one class (issue 8).
        bandwidth: ``None``: the generator's output basis is orthonormal for the composed taps (white-noise taps at
            initialization, the reference's choice); a number ``b`` (cycles per pixel; default
            :data:`epdo.kernels.DEFAULT_BANDWIDTH`): orthonormal for a metric that penalizes frequency ``omega`` by
            ``exp(|omega|^2 / (2 b^2))``, so the taps start band-limited like escnn's filters
            (:func:`epdo.kernels.smooth_orthonormalize`).  Same span, same parameter count.
        mix_gain: parametrization gain of the mix (:class:`epdo.nn.Conv1x1`'s ``gain``; default
            :data:`DEFAULT_MIX_GAIN`): the same initial layer, the mix learning ``mix_gain`` times faster under Adam.
            A 1x1 map's weights start ~4x larger than a 5x5 PDOConv's (its fan-in has no 15 operators), so with
            gain 1 its relative Adam steps ``lr / |theta|`` are ~4x smaller and the network learns slowly (issue 8,
            fashion-rot, 2000 images, 3 epochs, batch-statistics error: 41.6% at gain 1, 36.0% at 3.87, 35.5% at 9).
        max_frequency: ``None`` or the highest angular frequency of the generated PDOs' symbols
            (:func:`epdo.diffops.frequency_projector`; the generator's output map then spans only those coefficients).

    The faithful reference layer is ``generator_init="reference", normalization="l1", bandwidth=None, mix_gain=1``.
    """

    def __init__(
        self,
        in_type: FieldType,
        out_type: FieldType,
        g: int = 4,
        s: int = 1,
        reduction: int = 1,
        discretization: str = "fd",
        max_order: int = 4,
        size: int = 5,
        generator_init: str = "static",
        normalization: str = "rms",
        bandwidth: Optional[float] = DEFAULT_BANDWIDTH,
        mix_gain: float = DEFAULT_MIX_GAIN,
        max_frequency: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_field_types("NeuralePDO", in_type, out_type)
        if generator_init not in GENERATOR_INITS:
            raise ValueError(f"NeuralePDO: generator_init must be one of {GENERATOR_INITS}, got {generator_init!r}")
        check_discretization(discretization)
        check_max_order(max_order)
        check_normalization(normalization)
        check_bandwidth(bandwidth)
        check_max_frequency(max_frequency)
        rho = _single_permutation_representation(in_type)
        gspace = in_type.gspace
        z, d, order = len(in_type), rho.size, gspace.fibergroup.order()
        for name, value in (("g", g), ("s", s), ("reduction", reduction)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NeuralePDO: {name} must be a positive integer, got {value!r}")
        hidden = z * d // (reduction * order)
        if z % g:
            raise ValueError(f"NeuralePDO: g={g} must divide the number of input fields z={z}")
        if hidden < 1:
            raise ValueError(
                f"NeuralePDO: hidden width M = floor(z*d/(reduction*|G|)) = floor({z}*{d}/({reduction}*{order})) = 0; "
                "use more input fields or a smaller reduction"
            )
        if g % s or hidden % s:
            raise ValueError(f"NeuralePDO: s={s} must divide g={g} and the hidden width M={hidden}")
        self.in_type, self.out_type, self.gspace = in_type, out_type, gspace
        self.g, self.s, self.reduction, self.hidden = g, s, reduction, hidden
        self.discretization, self.max_order, self.size = discretization, max_order, size
        self.normalization, self.bandwidth, self.mix_gain = normalization, bandwidth, mix_gain
        self.max_frequency = max_frequency

        hidden_type = FieldType(gspace, [gspace.regular_repr] * hidden)
        coefficient_rep = rho.tensor(coefficient_representation(gspace, max_order))
        self.coefficient_type = FieldType(gspace, [coefficient_rep] * g)
        self.generator_in = Conv1x1(in_type, hidden_type)
        self.generator_norm = FieldNorm(hidden_type)
        if generator_init == "static":
            with torch.no_grad():
                self.generator_norm.weight.zero_()
                self.generator_norm.bias.fill_(1.0)
        self.generator_out = Conv1x1(
            hidden_type,
            self.coefficient_type,
            groups=s,
            basis=lambda a, b: pdo_coefficient_basis(a, b, discretization, max_order, size, bandwidth, max_frequency),
        )
        self.mix = Conv1x1(in_type, out_type, gain=mix_gain)
        self.register_buffer("stencils", stencils(discretization, max_order, size), persistent=False)
        assert coefficient_rep.size == d * num_operators(max_order)

    def coefficients(self, x: GeometricTensor) -> GeometricTensor:
        """The generator's raw output: ``g`` fields of ``rho (x) D^-T``, shape ``(B, g d n_ops, H, W)``."""
        hidden = self.generator_norm(self.generator_in(x))  # a fresh tensor that group_norm's backward does not read
        return self.generator_out(GeometricTensor(F.relu(hidden.tensor, inplace=True), hidden.type))

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("NeuralePDO", x, self.in_type)
        y = adaptive_pdo(x.tensor, self.coefficients(x).tensor, self.stencils, self.g, self.normalization)
        return self.mix(GeometricTensor(y, self.in_type))

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_type.size:
            raise ValueError(f"NeuralePDO: expected shape (B, {self.in_type.size}, H, W), got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size, *input_shape[2:])

    @torch.no_grad()
    def export(self) -> ExportedNeuralePDO:
        """Plain torch modules (``Conv2d``, ``GroupNorm``) computing the same map on ``.tensor``s."""
        generator = torch.nn.Sequential(
            self.generator_in.export(), self.generator_norm.export(), torch.nn.ReLU(), self.generator_out.export()
        )
        return ExportedNeuralePDO(generator, self.mix.export(), self.stencils.clone(), self.g, self.normalization)

    def extra_repr(self) -> str:
        return (
            f"g={self.g}, s={self.s}, reduction={self.reduction}, hidden={self.hidden}, "
            f"discretization={self.discretization!r}, max_order={self.max_order}, "
            f"normalization={self.normalization!r}, bandwidth={self.bandwidth}, mix_gain={self.mix_gain}, "
            f"max_frequency={self.max_frequency}"
        )


class ExportedNeuralePDO(torch.nn.Module):
    """The exported form of :class:`NeuralePDO`: the same computation on plain tensors ``(B, C, H, W)``."""

    def __init__(
        self, generator: torch.nn.Module, mix: torch.nn.Module, stencil: torch.Tensor, g: int, normalization: str
    ) -> None:
        super().__init__()
        self.generator, self.mix, self.g, self.normalization = generator, mix, g, normalization
        self.register_buffer("stencils", stencil)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(adaptive_pdo(x, self.generator(x), self.stencils, self.g, self.normalization))


def _single_permutation_representation(in_type: FieldType) -> Representation:
    names = {rho.name for rho in in_type.representations}
    if len(names) != 1:
        raise ValueError(
            f"NeuralePDO: in_type must hold fields of one representation, got {sorted(names)}; the per-channel "
            "coefficient form needs all fields alike"
        )
    rho = in_type.representations[0]
    if not is_permutation_representation(rho):
        raise ValueError(
            f"NeuralePDO: in_type's representation {rho.name!r} is not a permutation representation (regular, "
            "quotient or a direct sum of them); the per-channel coefficient form needs one"
        )
    return rho
