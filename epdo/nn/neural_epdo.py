"""The Neural ePDO layer: a spatially adaptive equivariant PDO whose coefficients an equivariant MLP generates."""

from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from escnn.group import Representation
from escnn.nn import EquivariantModule, FieldType, FourierPointwise, GeometricTensor

from epdo.diffops import coefficient_representation
from epdo.kernels import PDOBasis, intertwiner_basis, isotypic_commutant_basis, pdo_coefficient_basis
from epdo.nn.basis_conv import BasisConv
from epdo.nn.checks import check_field_types, check_input, check_positive_int
from epdo.nn.conv1x1 import Conv1x1
from epdo.nn.exportable import Exportable
from epdo.nn.field_layout import channels_of, fields_by_representation
from epdo.nn.field_maps import FourierReLU, field_linear, native_field_maps
from epdo.nn.field_norm import FieldNorm
from epdo.nn.functional import apply_pdo, stencil_key, tap_matrix, uses_native
from epdo.nn.geometry import Geometry, checked_output_size, layer_geometry
from epdo.nn.sampled import SampledPointwise
from epdo.representations import frequency, is_band_limited_regular, is_continuous, is_permutation_representation

MIX_GAIN = 4.0
"""Parametrization gain of the output mix: a 1x1 map's weights start ~4x larger than a 5x5 PDO filter's (its fan-in
lacks the ~15 operators), so with this gain Adam's relative steps ``lr / |theta|`` match a :class:`PDOConv`'s."""


AdaptivePDO = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""``pdo(inputs, operators, channels)``: the adaptive PDO of a layer's ``g`` coefficient fields (a layout calls it)."""

FORMS = ("auto", "diagonal", "commutant", "sampled")
"""The coefficient forms of :class:`NeuralePDO` (``form``): ``"auto"`` is ``"diagonal"`` where it applies, else
``"commutant"``."""


class NeuralePDO(Exportable, EquivariantModule):
    r"""Neural ePDO: ``out = Mix( sum_a A_a(f(x)) d^a f(x) )``, a PDO whose coefficients depend on the local feature.

    1. Generator (an equivariant MLP of 1x1 maps): ``in_type`` -> ``M`` hidden fields -> per-field normalization ->
       nonlinearity -> the PDO coefficients (a grouped 1x1 map, ``s`` groups).  Hidden fields: regular fields and a
       ReLU for a finite group, ``M = max(1, floor(in_type.size / (reduction |G|)))``; for SO(2) / O(2) band-limited
       regular fields (frequencies up to the PDOs' highest) and :class:`epdo.nn.FourierReLU`.
    2. Each coefficient field's per-pixel PDOs are composed into ``k x k`` taps, scaled by 1/5 and divided by their
       norm + 0.01 (the root mean square of the field's PDOs' L2 norms: a white input keeps its variance).
    3. The coefficients take one of three forms (``form``):

       * ``"diagonal"`` (``in_type`` of one permutation representation ``rho``: regular, quotient, their sums): ``g``
         fields of ``rho (x) D^-T``, one PDO per channel; the ``q = z / g`` partitions of ``g`` input fields share
         them: channel ``(p, j, c)`` gets ``sum_a A[j, c, a] (S_a * f_(p, j, c))``
         (:func:`epdo.nn.functional.adaptive_pdo`).
       * ``"commutant"`` (any other field type: irreps, SO(2) / O(2) fields, mixed types): ``g`` sets of ``K``
         scalar PDOs (``D^-T`` fields); field ``i`` of representation ``rho`` gets ``sum_e E_e P_(i mod g, e) f_i``
         with ``E_e`` a basis of the maps that commute with ``rho`` (``K`` = the most of them over ``in_type``'s
         representations: 1 for a trivial field, 2 for an SO(2) irrep, ``|G|`` for a regular field).
       * ``"sampled"`` (SO(2) / O(2) band-limited regular fields, frequencies up to ``L``; chosen only when asked
         for): the diagonal form on the fields' values at ``N`` rotations (O(2): and their reflections), as
         escnn's ``FourierPointwise`` samples them: ``g`` fields of ``rho (x) D^-T`` sampled at the same elements
         give each sample its own PDO, and the result is projected back (:class:`epdo.nn.neural_epdo.SampledLayout`;
         ``N`` a multiple of 4 of at least ``3 L + 1``, which makes the projection its continuous-group form).

    4. An equivariant 1x1 map (the mix) ``in_type`` -> ``out_type``.

    The geometry is ``R2Conv``'s and ``torch.nn.Conv2d``'s (:class:`epdo.nn.geometry.Geometry`): the input is padded
    once (``padding``, ``padding_mode``), the generator reads it at the output pixels' centres only (every
    ``stride``-th pixel), and each PDO's ``kernel_size x kernel_size`` taps lie ``dilation`` pixels apart (a PDO on a
    grid of spacing ``dilation``; its taps' normalization makes the scale of its derivatives irrelevant).

    The generator starts static (its per-field affine at weight 0, bias 1: the same PDO at every pixel) and learns to
    adapt.  Shapes: input ``(B, in_type.size, H, W)``, output ``(B, out_type.size, H_out, W_out)``, ``H_out =
    floor((H + 2 padding - dilation (kernel_size - 1) - 1) / stride) + 1``.

    Args:
        in_type: any field type of a gspace on the plane (``rot2dOnR2(N)``, ``flipRot2dOnR2(N, axis)``, N finite or
            -1).
        out_type: any field type of the same gspace.
        kernel_size: the stencils' width (odd, >= 3), which bounds the derivative orders (3: <= 2); ``None``:
            ``basis.size`` (5).
        padding: pixels of padding on every side; ``None`` (the default, unlike ``R2Conv``'s 0): ``dilation
            (kernel_size - 1) / 2``, the input's size at stride 1.
        stride, dilation, padding_mode: as ``R2Conv``'s (``"zeros"``, ``"reflect"``, ``"replicate"``,
            ``"circular"``).
        groups: the mix maps ``groups`` groups of fields independently (``R2Conv``'s ``groups``); the generator reads
            every input field.
        bias: an invariant bias on the mix's output.
        g: the generator makes PDOs for ``g`` fields (sets), which all partitions of ``g`` fields share: a divisor of
            the number of fields (of each representation, in the commutant form).
        s: groups of the generator's output map, a divisor of its output fields and of ``M``.
        reduction: how much narrower the generator's hidden layer is than its input (at least one hidden field, so
            every valid input type has a generator).
        basis: which PDOs and the metric of the generator's output basis (:class:`epdo.kernels.PDOBasis`).
        form: the coefficients' form (:data:`epdo.nn.neural_epdo.FORMS`, step 3): ``"auto"`` (``"diagonal"``
            where it applies, else ``"commutant"``), or one of the three by name (``"commutant"`` takes any field
            type).

    The defaults are the library's choice for a fixed parameter budget (benchmarks/RESULTS.md); the paper's layers
    differ in ``g``, ``s``, ``reduction`` and ``basis``, and :meth:`reference` is the public reference implementation's
    layer.

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
        kernel_size: Optional[int] = None,
        padding: Optional[int] = None,
        stride: int = 1,
        dilation: int = 1,
        padding_mode: str = "zeros",
        groups: int = 1,
        bias: bool = False,
        *,
        g: int = 1,
        s: int = 1,
        reduction: int = 4,
        basis: PDOBasis = PDOBasis(),
        form: str = "auto",
    ) -> None:
        super().__init__()
        basis, geometry = layer_geometry("NeuralePDO", basis, kernel_size, padding, stride, dilation, padding_mode)
        self._build(in_type, out_type, g, s, reduction, basis, False, geometry, form)
        self.mix = Conv1x1(in_type, out_type, gain=MIX_GAIN, groups=groups, bias=bias)

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
        max_order: int = 4,
    ) -> NeuralePDO:
        """The public reference implementation's layer: every PDO of order <= ``max_order`` (4 in the reference)
        (:meth:`epdo.kernels.PDOBasis.reference`), taps divided by their L1 norm + 0.01 (the output ~1000x smaller in
        variance than the input), the generator's affine at weight 1, bias 0, and the mix without gain."""
        layer = cls.__new__(cls)
        EquivariantModule.__init__(layer)
        basis = PDOBasis.reference(discretization, max_order)
        layer._build(in_type, out_type, g, s, reduction, basis, True, Geometry(), "auto")
        layer.mix = Conv1x1(in_type, out_type)
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
        geometry: Geometry,
        form: str,
    ) -> None:
        """Everything but the mix."""
        check_field_types("NeuralePDO", in_type, out_type)
        for name, value in (("g", g), ("s", s), ("reduction", reduction)):
            check_positive_int("NeuralePDO", name, value)
        gspace, group = in_type.gspace, in_type.gspace.fibergroup
        names = {rho.name for rho in in_type.representations}
        rho = in_type.representations[0]
        diagonal = len(names) == 1 and is_permutation_representation(rho)
        sampled = len(names) == 1 and is_band_limited_regular(rho)
        if form not in FORMS or form == "diagonal" and not diagonal or form == "sampled" and not sampled:
            raise ValueError(
                f"NeuralePDO: form must be one of {FORMS} ('diagonal' only for fields of one permutation "
                f"representation, 'sampled' for SO(2) / O(2) band-limited regular fields), got {form!r} for "
                f"{sorted(names)}"
            )
        self.form = form if form != "auto" else "diagonal" if diagonal else "commutant"
        if self.form != "commutant" and len(in_type) % g:
            raise ValueError(f"NeuralePDO: g={g} must divide the number of input fields z={len(in_type)}")
        self.layout: Optional[torch.nn.Module] = None  # the diagonal form
        if self.form == "commutant":
            self.layout = CommutantLayout(in_type, g)
        elif self.form == "sampled":
            self.layout = SampledLayout(in_type, g)
        if is_continuous(group):
            top = basis.max_order if basis.max_frequency is None else min(basis.max_frequency, basis.max_order)
            irreps = group.bl_irreps(max(top, 1))
            rho_hidden = group.spectral_regular_representation(*irreps)
            hidden = max(1, in_type.size // (reduction * rho_hidden.size))
            grid = 4 * (len(irreps) // 2 + 1)  # >= 2 top + 1 samples of the rotations, a multiple of 4
            self.generator_activation = FourierReLU(gspace, hidden, irreps, type="regular", N=grid)
            hidden_type = self.generator_activation.in_type
        else:
            hidden = max(1, in_type.size // (reduction * group.order()))
            self.generator_activation = None
            hidden_type = FieldType(gspace, [gspace.regular_repr] * hidden)
        if self.form != "commutant":
            coefficient_rep, field = coefficient_representation(gspace, basis.max_order, rho), rho
            self.coefficient_type = FieldType(gspace, [coefficient_rep] * g)
        else:
            coefficient_rep, field = coefficient_representation(gspace, basis.max_order), group.trivial_representation
            self.coefficient_type = FieldType(gspace, [coefficient_rep] * (g * self.layout.operators))
        if len(self.coefficient_type) % s or hidden % s:
            raise ValueError(
                f"NeuralePDO: s={s} must divide the generator's {len(self.coefficient_type)} output fields and its "
                f"hidden width M={hidden}"
            )
        self.in_type, self.out_type, self.gspace = in_type, out_type, gspace
        self.g, self.s, self.reduction, self.hidden, self.basis = g, s, reduction, hidden, basis
        self.geometry = geometry
        self.normalization = "l1" if reference else "rms"
        self.generator_in = Conv1x1(in_type, hidden_type)
        self.generator_norm = FieldNorm(hidden_type)
        if not reference:  # a static PDO at initialization
            with torch.no_grad():
                self.generator_norm.weight.zero_()
                self.generator_norm.bias.fill_(1.0)
        self.generator_out = BasisConv(
            hidden_type,
            self.coefficient_type,
            lambda rho_in, _: pdo_coefficient_basis(gspace, rho_in, field, basis),
            1,
            groups=s,
        )
        self.register_buffer("stencils", basis.stencils(), persistent=False)
        _key(self)

    def coefficients(self, x: GeometricTensor) -> GeometricTensor:
        """The generator's output, of type ``coefficient_type``: ``g`` fields of ``rho (x) D^-T`` (diagonal form) or
        ``g K`` fields of ``D^-T`` (commutant form), shape ``(B, coefficient_type.size, H, W)``."""
        hidden = self.generator_norm(self.generator_in(x))  # a fresh tensor that the norm's backward does not read
        if self.generator_activation is not None:
            hidden = self.generator_activation(hidden)
        else:
            hidden = GeometricTensor(F.relu(hidden.tensor, inplace=True), hidden.type)
        return self.generator_out(hidden)

    def forward(self, x: GeometricTensor) -> GeometricTensor:
        check_input("NeuralePDO", x, self.in_type)
        checked_output_size("NeuralePDO", self.geometry, x.tensor.shape)
        centres = self.geometry.centres(x.tensor)
        coefficients = self.coefficients(x if centres is x.tensor else GeometricTensor(centres, self.in_type)).tensor
        key = _key(self)
        native_key = key if uses_native(x.tensor, self.stencils, key, "auto") else None
        taps = None if native_key is not None else tap_matrix(self.stencils.to(x.tensor.dtype))  # PyTorch's path

        def pdo(inputs: torch.Tensor, operators: torch.Tensor, channels: int) -> torch.Tensor:
            return apply_pdo(inputs, operators, taps, self.g, self.normalization, self.geometry, native_key)

        if self.layout is None:
            y = pdo(x.tensor, coefficients, 0)
        else:
            y = self.layout(x.tensor, coefficients, pdo)
        return self.mix(GeometricTensor(y, self.in_type))

    def evaluate_output_shape(self, input_shape: Tuple[int, ...]) -> Tuple[int, ...]:
        if len(input_shape) != 4 or input_shape[1] != self.in_type.size:
            raise ValueError(f"NeuralePDO: expected shape (B, {self.in_type.size}, H, W), got {tuple(input_shape)}")
        return (input_shape[0], self.out_type.size, *checked_output_size("NeuralePDO", self.geometry, input_shape))

    @torch.no_grad()
    def export(self, backend: str = "auto", like: Optional[torch.Tensor] = None) -> ExportedNeuralePDO:
        """Plain torch modules computing the same map on the ``.tensor`` of the input, with the adaptive PDO of
        ``backend`` (:data:`epdo.nn.functional.BACKENDS`; ``"auto"``: the compiled operator where the layer's
        parameters are float32/float64 on the CPU and it builds, PyTorch's operations otherwise)."""
        own = next(self.parameters()).new_empty(0)  # the layer's own dtype and device decide, not ``like``
        native = uses_native(own, self.stencils, _key(self), backend)
        native_maps = native and native_field_maps(own.device, own.dtype)
        activation = (
            torch.nn.ReLU()
            if self.generator_activation is None
            else SampledPointwise.of(self.generator_activation, native_maps)
        )
        generator = torch.nn.Sequential(
            self.generator_in.export(), self.generator_norm.export(), activation, self.generator_out.export()
        )
        sampled = isinstance(self.layout, SampledLayout)
        layout = self.layout.exported(native_maps) if sampled else copy.deepcopy(self.layout)
        d = self.in_type.representations[0].size
        return ExportedNeuralePDO(
            generator, self.mix.export(), self.stencils, self.g, d, self.normalization, native, layout, self.geometry
        )

    def extra_repr(self) -> str:
        return (
            f"{self.form}, g={self.g}, s={self.s}, reduction={self.reduction}, hidden={self.hidden}, basis={self.basis}"
            + ("" if self.geometry == Geometry(self.basis.size) else f", {self.geometry}")
            + (", reference" if self.normalization == "l1" else "")
        )


class ExportedNeuralePDO(torch.nn.Module):
    """The exported form of :class:`NeuralePDO` on plain tensors ``(B, C, H, W)``: ``mix(adaptive PDO(x,
    generator(x)))``, the adaptive PDO as the compiled operator ``torch.ops.epdo.adaptive_pdo`` (``native``) or as
    PyTorch operations (:func:`epdo.nn.functional.pixelwise_pdo`), through ``layout`` in the commutant or sampled
    form.  Every size is a Python integer fixed here, so ``torch.fx`` and ``torch.export`` trace it.

    Args:
        generator: the coefficients ``(B, fields * d * n_ops, H, W)`` of ``x``.
        mix: the map applied last (1x1).
        stencils: the derivative stencils ``(n_ops, k, k)``.
        fields: coefficient fields (the layer's ``g``); d: channels of a field (diagonal form).
        normalization: one of :data:`epdo.nn.functional.NORMALIZATIONS`.
        native: the compiled operator (CPU, float32/float64) instead of PyTorch's operations.
        layout: the commutant or sampled form's :class:`epdo.nn.neural_epdo.CommutantLayout` /
            :class:`epdo.nn.neural_epdo.SampledLayout` (``None``: the diagonal form).
        geometry: where the PDOs read the input (:class:`epdo.nn.geometry.Geometry`).
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
        layout: Optional[torch.nn.Module] = None,
        geometry: Geometry = Geometry(),
    ) -> None:
        super().__init__()
        self.generator, self.mix, self.layout = generator, mix, layout
        self.fields, self.channels, self.geometry = fields, fields * d, geometry
        self.normalization = normalization
        self.native_key = stencil_key(stencils) if native else None
        self.register_buffer("taps", tap_matrix(stencils).to(next(mix.parameters()).dtype).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficients = self.generator(self.geometry.centres(x))
        if self.layout is None:
            return self.mix(self._pdo(x, coefficients, self.channels))
        return self.mix(self.layout(x, coefficients, self._pdo))

    def _pdo(self, x: torch.Tensor, coefficients: torch.Tensor, channels: int) -> torch.Tensor:
        """The adaptive PDO of ``self.fields`` coefficient fields of ``channels / fields`` channels each."""
        return apply_pdo(
            x, coefficients, self.taps, self.fields, self.normalization, self.geometry, self.native_key, traceable=True
        )


class CommutantLayout(torch.nn.Module):
    """How the commutant form applies ``g`` sets of ``K`` scalar PDOs to the fields of a field type: the fields
    grouped by representation (a channel permutation, when they are not already), and each group's commutant basis
    ``E`` ``(n_e, d, d)`` (:func:`epdo.kernels.intertwiner_basis`, an orthonormal basis of ``{E : E rho(g) = rho(g)
    E}``).

    Field ``i`` of a group (``m`` fields of ``rho``, ``q = m / g`` partitions) gets ``sum_e E_e P_(i mod g, e) f_i``,
    PDO ``e`` of set ``j`` normalized over the set's PDOs.  Two ways to compute it, the same map:

    * every channel, repeated ``n_e`` times, is a partition of the adaptive PDO, then ``E`` mixes the repeats
      (``d n_e`` channel PDOs a field);
    * where the irreps of ``rho`` lie on their own channels (SO(2) / O(2) band-limited regular fields), in the basis
      ``E'`` of :func:`epdo.kernels.isotypic_commutant_basis` (``E = R E'``, ``R`` orthogonal): each ``E'_e`` reads
      the ``|S_e| <= s < d`` channels of one irrep, so ``sum_e E'_e P'_e f`` with ``P' = R^T P`` needs PDO ``e`` on
      those alone (``s n_e`` channel PDOs a field, the norm unchanged as ``R`` is orthogonal).
    """

    def __init__(self, in_type: FieldType, g: int) -> None:
        super().__init__()
        order, self.blocks = [], []
        for fields in fields_by_representation(in_type).values():
            rho = in_type.representations[fields[0]]
            if len(fields) % g:
                raise ValueError(
                    f"NeuralePDO: g={g} must divide the number of fields of each representation; {rho.name!r} has "
                    f"{len(fields)}"
                )
            commutant = intertwiner_basis(rho, rho)
            index = len(self.blocks)
            self.register_buffer(f"commutant_{index}", torch.tensor(commutant, dtype=torch.get_default_dtype()))
            slots = self._register_sparse_form(index, rho, commutant, g)
            self.blocks.append((len(fields), rho.size, len(commutant), slots))
            order += channels_of(in_type, fields).tolist()
        self.g, self.operators = g, max(n for _, _, n, _ in self.blocks)
        identity = order == list(range(in_type.size))
        self.register_buffer("order", None if identity else torch.tensor(order))
        self.register_buffer("inverse", None if identity else torch.argsort(torch.tensor(order)))

    def _register_sparse_form(self, index: int, rho: Representation, commutant: np.ndarray, g: int) -> Optional[int]:
        """Buffers of the second way for ``rho`` (``reads`` the channels ``(s, g, n_e)`` of the slots ``(k, j, e)``
        of a partition, slot ``k`` of PDO ``e`` holding ``S_e[min(k, |S_e| - 1)]``; ``rotation`` ``R``; ``mixing``
        ``M[c, (k, e)] = E'_e[c, S_e[k]]``, zero past ``|S_e|``) and ``s``, or ``None`` (nothing registered) where
        some ``E'_e`` reads every channel or ``R`` is not orthogonal."""
        sparse = isotypic_commutant_basis(rho)
        supports = [np.flatnonzero(np.abs(element).max(axis=0) > 1e-12) for element in sparse]
        slots = max(len(support) for support in supports)
        rotation = np.einsum("aij,bij->ab", commutant, sparse)
        if slots == rho.size or not np.allclose(rotation @ rotation.T, np.eye(len(rotation)), atol=1e-9):
            return None
        reads = np.array([[support[min(k, len(support) - 1)] for support in supports] for k in range(slots)])
        channels = np.arange(g)[None, :, None] * rho.size + reads[:, None, :]
        mixing = np.zeros((rho.size, slots, len(sparse)))
        for e, (element, support) in enumerate(zip(sparse, supports)):
            mixing[:, : len(support), e] = element[:, support]
        dtype = torch.get_default_dtype()
        self.register_buffer(f"reads_{index}", torch.tensor(channels.reshape(-1)), persistent=False)
        self.register_buffer(f"rotation_{index}", torch.tensor(rotation, dtype=dtype), persistent=False)
        self.register_buffer(
            f"mixing_{index}", torch.tensor(mixing.reshape(rho.size, -1), dtype=dtype), persistent=False
        )
        return slots

    def forward(self, x: torch.Tensor, coefficients: torch.Tensor, pdo: AdaptivePDO) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``coefficients`` ``(B, g K n_ops, H, W)``; ``pdo(inputs, operators, channels)`` the
        adaptive PDO of ``g`` coefficient fields of ``channels / g`` channels."""
        batch, _, height, width = x.shape
        out_height, out_width = coefficients.shape[2], coefficients.shape[3]
        if self.order is not None:
            x = x[:, self.order]
        operators = coefficients.reshape(batch, self.g, self.operators, -1, out_height, out_width)
        outputs, start = [], 0
        for index, (fields, d, n, slots) in enumerate(self.blocks):
            # partitions (p, k): slot k of every field is a partition of its own, so that the g * n PDOs of the
            # coefficients apply to all slots without copying them
            parts = fields // self.g
            block = x[:, start : start + fields * d]
            own = operators[:, :, :n]
            if slots is None:  # slot k = channel k, repeated n times
                block = block.reshape(batch, parts, self.g, d, 1, height, width).permute(0, 1, 3, 2, 4, 5, 6)
                block = block.expand(-1, -1, -1, -1, n, -1, -1)
                commutant = getattr(self, f"commutant_{index}")  # (n, d, d): E_e[c, c']
                mixing, slots = commutant.permute(1, 2, 0).reshape(d, d * n), d  # [c, (c', e)]
            else:  # channel S_e[k] of field (p, j) at (p, k, j, e); P' = R^T P
                block = block.reshape(batch, parts, self.g * d, height, width).index_select(
                    2, getattr(self, f"reads_{index}")
                )
                own = torch.einsum("ef,bjeahw->bjfahw", getattr(self, f"rotation_{index}"), own)
                mixing = getattr(self, f"mixing_{index}")  # [c, (k, e)]
            y = pdo(block.reshape(batch, -1, height, width), own.reshape(batch, -1, out_height, out_width), self.g * n)
            if self.g == 1:  # y is (B, q, (k, e), H W): one matrix product, no copy
                y = torch.matmul(mixing, y.reshape(batch, parts, slots * n, out_height * out_width))
            else:
                y = y.reshape(batch, parts, slots, self.g, n, out_height, out_width)
                y = torch.einsum("cke,bpkgehw->bpgchw", mixing.reshape(d, slots, n), y)
            outputs.append(y.reshape(batch, -1, out_height, out_width))
            start += fields * d
        y = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
        return y if self.inverse is None else y[:, self.inverse]


class SampledLayout(torch.nn.Module):
    """The sampled form: fields of an SO(2) / O(2) band-limited regular representation ``rho`` (``d`` channels,
    frequencies up to ``L``) evaluated at ``S`` group elements (``A`` ``(S, d)``, escnn's ``FourierPointwise``
    sampling at ``N`` rotations, and their reflections on O(2)), each sample given its own PDO (the ``rho (x) D^-T``
    coefficients sampled the same way, normalized over the ``S`` samples of a set), and the result projected back by
    ``A``'s least-squares inverse ``(d, S)``.

    A sample's output is a product of two functions of frequency ``<= L`` on the group (coefficients and input), of
    frequency ``<= 2 L``; ``N >= 3 L + 1`` samples alias none of it onto the frequencies ``<= L`` that the projection
    keeps, so the layer is then its continuous-group form, equivariant to every rotation as far as its stencils are.
    Fewer samples (down to ``2 L + 1``) are exact for the sampled elements only.
    """

    def __init__(self, in_type: FieldType, g: int, samples: Optional[int] = None) -> None:
        """``samples``: the rotations ``N``; by default the fewest multiple of 4 (the quarter turns among them) of at
        least ``3 L + 1`` (8 for ``L = 2``).  At least ``2 L + 1``, so that ``A`` has a left inverse."""
        super().__init__()
        rho = in_type.representations[0]
        irreps, top = list(dict.fromkeys(rho.irreps)), frequency(rho)
        least, samples = 2 * top + 1, samples or 4 * -(-(3 * top + 1) // 4)
        if samples < least:
            raise ValueError(
                f"SampledLayout: fields of frequencies up to {top} need at least {least} sampled rotations, got "
                f"samples={samples}"
            )
        sampling = FourierPointwise(in_type.gspace, 1, irreps, type="regular", N=samples)
        self.g, self.d = g, rho.size
        self.register_buffer("sample", sampling.A.clone(), persistent=False)  # (S, d)
        self.register_buffer("unsample", sampling.Ainv.clone(), persistent=False)  # (d, S)
        self.linear: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field_linear  # (P, d, Q), (e, d)

    def exported(self, native: bool) -> SampledLayout:
        """A copy that ``torch.fx`` traces (for :class:`ExportedNeuralePDO`): its per-field maps are the compiled
        operator ``torch.ops.epdo.field_linear`` (``native``) or ``torch.matmul``, chosen now, not at each call."""
        layout = copy.deepcopy(self)
        layout.linear = torch.ops.epdo.field_linear if native else _matmul
        return layout

    def forward(self, x: torch.Tensor, coefficients: torch.Tensor, pdo: AdaptivePDO) -> torch.Tensor:
        """``x`` ``(B, z d, H, W)``, ``coefficients`` ``(B, g d n_ops, H_out, W_out)``; ``pdo`` as in
        :class:`CommutantLayout`; the result ``(B, z d, H_out, W_out)``."""
        batch, channels, height, width = x.shape
        out_height, out_width = coefficients.shape[2], coefficients.shape[3]
        samples = self.linear(x.reshape(-1, self.d, height * width), self.sample)  # (B z, S, H W)
        operators = self.linear(coefficients.reshape(batch * self.g, self.d, -1), self.sample)  # (B g, S, n_ops HW)
        y = pdo(samples.reshape(batch, -1, height, width), operators.reshape(batch, -1, out_height, out_width), 0)
        y = self.linear(y.reshape(-1, self.sample.shape[0], out_height * out_width), self.unsample)
        return y.reshape(batch, channels, out_height, out_width)


def _matmul(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """:func:`epdo.nn.field_linear`'s PyTorch form, ``torch.matmul(matrix, x)``."""
    return torch.matmul(matrix, x)


def _key(module: torch.nn.Module) -> str:
    """:func:`epdo.nn.functional.stencil_key` of ``module.stencils``, computed again only after the buffer changed
    (another tensor, or an in-place edit); under ``torch.compile`` the key of the last eager call."""
    if torch.compiler.is_compiling():
        return module._stencil_key
    state = (module.stencils.data_ptr(), module.stencils._version)
    if getattr(module, "_stencil_state", None) != state:
        module._stencil_key, module._stencil_state = stencil_key(module.stencils), state
    return module._stencil_key
