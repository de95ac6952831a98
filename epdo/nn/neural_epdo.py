"""The Neural ePDO layer: a spatially adaptive equivariant PDO whose coefficients an equivariant MLP generates."""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from escnn.group import Representation
from escnn.nn import EquivariantModule, FieldType, GeometricTensor

from epdo.diffops import coefficient_representation
from epdo.kernels import PDOBasis, pdo_coefficient_basis
from epdo.nn.basis_conv import BasisConv
from epdo.nn.checks import check_field_types, check_input, check_positive_int
from epdo.nn.conv1x1 import Conv1x1
from epdo.nn.field_norm import FieldNorm
from epdo.nn.functional import COEFFICIENT_SCALE, adaptive_pdo, pixelwise_pdo, stencil_key, uses_native
from epdo.representations import is_permutation, matrices_of

MIX_GAIN = 4.0
"""Parametrization gain of the output mix: a 1x1 map's weights start ~4x larger than a 5x5 PDO filter's (its fan-in
lacks the ~15 operators), so with this gain Adam's relative steps ``lr / |theta|`` match a :class:`PDOConv`'s."""


class NeuralePDO(EquivariantModule):
    r"""Neural ePDO: ``out = Mix( sum_a A_a(f(x)) d^a f(x) )``, a PDO whose coefficients depend on the local feature.

    1. Generator (an equivariant MLP of 1x1 maps): ``z`` rho-fields -> ``M`` regular fields -> per-field
       normalization -> ReLU -> ``g`` fields of the coefficient representation ``rho (x) D^-T`` (a grouped 1x1 map,
       ``s`` groups), ``M = max(1, floor(z d / (reduction |G|)))``.
    2. Each coefficient field's per-pixel PDOs are composed into ``d x k x k`` taps, scaled by 1/5 and divided by
       their norm + 0.01 (the root mean square of the channels' L2 norms: a white input keeps its variance).
    3. The ``q = z / g`` partitions of ``g`` input fields share these PDOs: channel ``(p, j, c)`` gets
       ``sum_a A[j, c, a] (S_a * f_(p, j, c))`` (:func:`epdo.nn.functional.adaptive_pdo`).
    4. An equivariant 1x1 map (the mix) ``z`` rho-fields -> ``out_type``.

    The generator starts static (its per-field affine at weight 0, bias 1: the same PDO at every pixel) and learns to
    adapt.  Shapes: input ``(B, z d, H, W)``, output ``(B, out_type.size, H, W)``.

    Args:
        in_type: ``z`` fields of one permutation representation (regular, quotient, or a direct sum of them).
        out_type: any field type of the same gspace.
        g: fields per partition, a divisor of ``z``: the generator makes PDOs for ``g`` fields, which all ``z / g``
            partitions share.
        s: groups of the generator's output map, a divisor of ``g`` and ``M``.
        reduction: how much narrower the generator's hidden layer is than its input: ``M = max(1, z d // (reduction
            |G|))`` regular fields, at least one, so every valid input type has a generator.
        basis: which PDOs and the metric of the generator's output basis (:class:`epdo.kernels.PDOBasis`).

    The defaults are the configuration measured best at a fixed parameter budget; the paper's layers differ in
    ``g``, ``s``, ``reduction`` and ``basis``, and :meth:`reference` is the public reference implementation's layer.

    Example:
        >>> import torch
        >>> from escnn import gspaces, nn
        >>> gs = gspaces.rot2dOnR2(8)
        >>> fields = nn.FieldType(gs, [gs.regular_repr] * 4)
        >>> layer = NeuralePDO(fields, fields)
        >>> layer(nn.GeometricTensor(torch.randn(2, 32, 16, 16), fields)).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(
        self,
        in_type: FieldType,
        out_type: FieldType,
        *,
        g: int = 1,
        s: int = 1,
        reduction: int = 4,
        basis: PDOBasis = PDOBasis(),
    ) -> None:
        super().__init__()
        self._build(in_type, out_type, g, s, reduction, basis, reference=False)

    @classmethod
    def reference(
        cls,
        in_type: FieldType,
        out_type: FieldType,
        *,
        g: int = 1,
        s: int = 1,
        reduction: int = 1,
        discretization: str = "fd",
    ) -> NeuralePDO:
        """The public reference implementation's layer: every PDO of order <= 4
        (:meth:`epdo.kernels.PDOBasis.reference`), taps divided by their L1 norm + 0.01 (the output ~1000x smaller in
        variance than the input), the generator's affine at weight 1, bias 0, and the mix without gain."""
        layer = cls.__new__(cls)
        EquivariantModule.__init__(layer)
        layer._build(in_type, out_type, g, s, reduction, PDOBasis.reference(discretization), reference=True)
        return layer

    def _build(
        self,
        in_type: FieldType,
        out_type: FieldType,
        g: int,
        s: int,
        reduction: int,
        basis: PDOBasis,
        reference: bool,
    ) -> None:
        check_field_types("NeuralePDO", in_type, out_type)
        if not isinstance(basis, PDOBasis):
            raise TypeError(f"NeuralePDO: basis must be an epdo.kernels.PDOBasis, got {type(basis).__name__}")
        rho = _single_permutation_representation(in_type)
        gspace = in_type.gspace
        z, d, order = len(in_type), rho.size, gspace.fibergroup.order()
        for name, value in (("g", g), ("s", s), ("reduction", reduction)):
            check_positive_int("NeuralePDO", name, value)
        hidden = max(1, z * d // (reduction * order))
        if z % g:
            raise ValueError(f"NeuralePDO: g={g} must divide the number of input fields z={z}")
        if g % s or hidden % s:
            raise ValueError(f"NeuralePDO: s={s} must divide g={g} and the hidden width M={hidden}")
        self.in_type, self.out_type, self.gspace = in_type, out_type, gspace
        self.g, self.s, self.reduction, self.hidden, self.basis = g, s, reduction, hidden, basis
        self.normalization = "l1" if reference else "rms"

        hidden_type = FieldType(gspace, [gspace.regular_repr] * hidden)
        coefficient_rep = coefficient_representation(gspace, basis.max_order, rho)
        self.coefficient_type = FieldType(gspace, [coefficient_rep] * g)
        self.generator_in = Conv1x1(in_type, hidden_type)
        self.generator_norm = FieldNorm(hidden_type)
        if not reference:  # a static PDO at initialization
            with torch.no_grad():
                self.generator_norm.weight.zero_()
                self.generator_norm.bias.fill_(1.0)
        self.generator_out = BasisConv(
            hidden_type,
            self.coefficient_type,
            lambda rho_in, _: pdo_coefficient_basis(gspace, rho_in, rho, basis),
            1,
            groups=s,
        )
        self.mix = Conv1x1(in_type, out_type, gain=1.0 if reference else MIX_GAIN)
        self.register_buffer("stencils", basis.stencils(), persistent=False)
        _key(self)

    def coefficients(self, x: GeometricTensor) -> GeometricTensor:
        """The generator's output: ``g`` fields of ``rho (x) D^-T``, shape ``(B, g d n_ops, H, W)``."""
        hidden = self.generator_norm(self.generator_in(x))  # a fresh tensor that group_norm's backward does not read
        return self.generator_out(GeometricTensor(F.relu(hidden.tensor, inplace=True), hidden.type))

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("NeuralePDO", x, self.in_type)
        coefficients = self.coefficients(x).tensor
        y = adaptive_pdo(
            x.tensor, coefficients, self.stencils, self.g, normalization=self.normalization, key=_key(self)
        )
        return self.mix(GeometricTensor(y, self.in_type))

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_type.size:
            raise ValueError(f"NeuralePDO: expected shape (B, {self.in_type.size}, H, W), got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size, *input_shape[2:])

    @torch.no_grad()
    def export(self, backend: str = "auto") -> ExportedNeuralePDO:
        """Plain torch modules (``Conv2d``, ``GroupNorm``) computing the same map on the ``.tensor`` of the input, with
        the adaptive PDO of ``backend`` (:data:`epdo.nn.functional.BACKENDS`; ``"auto"``: the compiled operator where
        the layer's parameters are float32/float64 on the CPU and it builds, PyTorch's operations otherwise)."""
        like = next(self.parameters()).new_empty(0)
        native = uses_native(like, self.stencils, _key(self), backend)
        generator = torch.nn.Sequential(
            self.generator_in.export(), self.generator_norm.export(), torch.nn.ReLU(), self.generator_out.export()
        )
        d = self.in_type.representations[0].size
        return ExportedNeuralePDO(generator, self.mix.export(), self.stencils, self.g, d, self.normalization, native)

    def extra_repr(self) -> str:
        return f"g={self.g}, s={self.s}, reduction={self.reduction}, hidden={self.hidden}, basis={self.basis}" + (
            ", reference" if self.normalization == "l1" else ""
        )


class ExportedNeuralePDO(torch.nn.Module):
    """The exported form of :class:`NeuralePDO` on plain tensors ``(B, C, H, W)``: ``mix(adaptive PDO(x,
    generator(x)))``, the adaptive PDO as the compiled operator ``torch.ops.epdo.adaptive_pdo`` (``native``) or as
    PyTorch operations (:func:`epdo.nn.functional.pixelwise_pdo`).  Every size is a Python integer fixed here, so
    ``torch.fx`` and ``torch.export`` trace it.

    Args:
        generator: the coefficients ``(B, fields * d * n_ops, H, W)`` of ``x``.
        mix: the map applied last (``Conv2d``, 1x1).
        stencils: the derivative stencils ``(n_ops, k, k)``.
        fields: coefficient fields (the layer's ``g``); d: channels of a field.
        normalization: one of :data:`epdo.nn.functional.NORMALIZATIONS`.
        native: the compiled operator (CPU, float32/float64) instead of PyTorch's operations.
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        mix: torch.nn.Module,
        stencils: torch.Tensor,
        fields: int,
        d: int,
        normalization: str,
        native: bool,
    ) -> None:
        super().__init__()
        self.generator, self.mix = generator, mix
        self.fields, self.channels, self.size = fields, fields * d, stencils.shape[-1]
        self.normalization, self.native = normalization, native
        self.key = stencil_key(stencils)
        taps = stencils.reshape(len(stencils), -1).t() * COEFFICIENT_SCALE  # (k^2, n_ops): coefficients -> taps
        self.register_buffer("taps", taps.to(next(mix.parameters()).dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = self.generator(x)
        if self.native:
            y = torch.ops.epdo.adaptive_pdo(x, coefficients, self.key, self.fields, self.normalization == "l1")[0]
            return self.mix(y)
        batch, channels, height, width = x.shape
        operators = coefficients.reshape(batch, self.channels, -1, height * width)
        taps = torch.matmul(self.taps, operators).reshape(batch, self.channels, -1, height, width)
        parts = x.reshape(batch, -1, self.channels, height, width)
        y = pixelwise_pdo(parts, taps, self.fields, self.normalization, self.size)[0]
        return self.mix(y.reshape(batch, channels, height, width))


def _key(module: torch.nn.Module) -> str:
    """:func:`epdo.nn.functional.stencil_key` of ``module.stencils``, computed again only after the buffer changed
    (another tensor, or an in-place edit); under ``torch.compile`` the key of the last eager call."""
    if torch.compiler.is_compiling():
        return module._stencil_key
    state = (module.stencils.data_ptr(), module.stencils._version)
    if getattr(module, "_stencil_state", None) != state:
        module._stencil_key, module._stencil_state = stencil_key(module.stencils), state
    return module._stencil_key


def _single_permutation_representation(in_type: FieldType) -> Representation:
    names = {rho.name for rho in in_type.representations}
    if len(names) != 1:
        raise ValueError(
            f"NeuralePDO: in_type must hold fields of one representation, got {sorted(names)}; the per-channel "
            "coefficient form needs all fields alike"
        )
    rho = in_type.representations[0]
    if not is_permutation(matrices_of(rho)):
        raise ValueError(
            f"NeuralePDO: in_type's representation {rho.name!r} is not a permutation representation (regular, "
            "quotient or a direct sum of them); the per-channel coefficient form needs one"
        )
    return rho
