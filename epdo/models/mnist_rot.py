"""The MNIST-rot networks of the Neural ePDO paper, the library's default network, and baselines on the same skeleton.

Skeleton (28x28 input): layer 1 lifts the image to ``rho`` fields; layers 2-6 keep them; per-field batch norm and
ReLU after every layer; 2x2 max pooling after layers 2 and 4, between the batch norm and the ReLU (maximum and ReLU
commute, values and gradients alike, and the ReLU then runs on a quarter of the pixels); field dropout after layers
3-6; group max pooling, global max pooling and a two-layer classifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import torch
from escnn import group, gspaces, nn

from epdo.kernels import PDOBasis
from epdo.nn import (
    FieldBatchNorm,
    FieldDropout,
    FieldMaxPool,
    GroupMaxPool,
    NeuralePDO,
    PDOConv,
    RestrictToRotations,
)
from epdo.nn.export import exported_layers, trace
from epdo.nn.inference import ExportedInference
from epdo.records import checked_fields

FIELDS = ("regular", "quotient", "fourier")
"""The field kinds of :class:`ModelConfig` (``fields``)."""
LAYERS = ("epdo", "reference", "pdo", "escnn", "cnn")
"""The layer kinds of :class:`ModelConfig` (``layer``)."""
NONLINEARITIES = ("pointwise", "gated", "norm")
"""The nonlinearities of :class:`ModelConfig` (``nonlinearity``)."""
PAPER_WIDTHS = {
    "regular": (16, 24, 32, 32, 48, 64),
    "quotient": (12, 16, 24, 24, 32, 64),
    "flip": (12, 16, 24, 24, 32, 64),
}
"""Fields of layers 1-6 of the paper's regular, quotient and D16|5C16 models."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a network of :func:`build_model` (stored in checkpoints).

    Args:
        layer: layers 2-6: ``"epdo"`` (:class:`epdo.nn.NeuralePDO`), ``"reference"`` (the reference implementation's
            layer, :meth:`epdo.nn.NeuralePDO.reference`, with ``basis.discretization``; ``basis`` becomes
            :meth:`epdo.kernels.PDOBasis.reference`), ``"pdo"`` (static :class:`epdo.nn.PDOConv`), ``"escnn"``
            (``R2Conv`` 5x5, layer 1 too) or ``"cnn"`` (a plain CNN with the parameter count of the ``"epdo"``
            network).
        fields: ``"regular"``, ``"quotient"`` (a regular plus a quotient-by-C_4 field, ``d = |G| + |G| / 4``) or
            ``"fourier"`` (SO(2) / O(2), ``group_order`` -1: band-limited regular fields of frequencies up to
            ``field_frequency``, with escnn's ``FourierPointwise`` ReLU on 4 (field_frequency + 1) rotations,
            ``IIDBatchNorm2d``, 2x2 average pooling, and the maximum over 16 rotations as invariant features).
        group_order: N of C_N (or D_N with ``flip``); -1 for SO(2) (O(2) with ``flip``).
        flip: D_N for layers 1-5, restricted to C_N before layer 6 (the paper's D16|5C16 model); layer 6 then has
            twice ``widths[5]`` C_N fields, as each restricted D_N field becomes two.
        widths: fields of layers 1-6.
        basis: the PDOs of every PDO layer (:class:`epdo.kernels.PDOBasis`).
        g, s, reduction: of every :class:`epdo.nn.NeuralePDO`.
        dropout: field dropout of layers 3-6.
        head: hidden units of the two-layer classifier on the invariant features (0: one linear map).
        field_frequency: the highest frequency of ``"fourier"`` fields.
        nonlinearity: ``"pointwise"`` (ReLU; on ``"fourier"`` fields escnn's ``FourierPointwise``), or, with
            ``"fourier"`` fields only, ``"gated"`` or ``"norm"``: each field is then split into its irreps (the same
            representation in another basis), ReLU on the frequency-0 part and, on the others, escnn's
            ``GatedNonLinearity1`` (one extra scalar gate field per irrep, made by the layer before) or
            ``NormNonLinearity`` (``n_relu``); the invariant features are then the irreps' norms (escnn's
            ``NormPool``).
    """

    layer: str = "epdo"
    fields: str = "regular"
    group_order: int = 8
    flip: bool = False
    widths: Tuple[int, ...] = (14, 14, 21, 21, 28, 28)
    basis: PDOBasis = PDOBasis()
    g: int = 1
    s: int = 1
    reduction: int = 4
    dropout: float = 0.1
    head: int = 64
    field_frequency: int = 2
    nonlinearity: str = "pointwise"

    def __post_init__(self) -> None:
        if self.layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {self.layer!r}")
        if self.fields not in FIELDS:
            raise ValueError(f"fields must be one of {FIELDS}, got {self.fields!r}")
        widths = tuple(self.widths)
        if len(widths) != 6 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"widths must be six positive integers, got {self.widths}")
        if (self.group_order == -1) != (self.fields == "fourier") or self.group_order == 0 or self.group_order < -1:
            raise ValueError(
                f"group_order must be a positive integer with regular or quotient fields, or -1 (SO(2) / O(2)) with "
                f"fourier fields; got {self.group_order} with {self.fields!r} fields"
            )
        if self.nonlinearity not in NONLINEARITIES:
            raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {self.nonlinearity!r}")
        if self.nonlinearity != "pointwise" and self.fields != "fourier":
            raise ValueError(
                f"nonlinearity {self.nonlinearity!r} needs fourier fields (SO(2) / O(2)), got {self.fields!r} fields"
            )
        if self.field_frequency < 1:
            raise ValueError(f"field_frequency must be a positive integer, got {self.field_frequency}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head < 0:
            raise ValueError(f"head must be a non-negative number of hidden units, got {self.head}")
        if self.fields == "quotient" and self.group_order % 4:
            raise ValueError(f"quotient fields need a group order divisible by 4, got {self.group_order}")
        object.__setattr__(self, "widths", widths)
        if self.layer == "reference":
            basis = self.basis
            object.__setattr__(self, "basis", PDOBasis.reference(basis.discretization, basis.max_order, basis.size))

    def as_dict(self) -> Dict[str, Any]:
        """A plain dictionary (the basis as a nested one), as stored in checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> ModelConfig:
        """The inverse of :meth:`as_dict`; every field checked (:func:`epdo.records.checked_fields`): raises
        ``ValueError`` naming a missing, unknown or ill-typed field, or a value the network refuses.  A dictionary
        without ``nonlinearity`` (written before it existed) has the one there was then, ``"pointwise"``, and a basis
        without ``scale`` the default scale."""
        if isinstance(values, dict) and "nonlinearity" not in values:
            values = {**values, "nonlinearity": "pointwise"}
        if isinstance(values, dict) and isinstance(values.get("basis"), dict) and "scale" not in values["basis"]:
            values = {**values, "basis": {**values["basis"], "scale": None}}
        values = checked_fields("model configuration", values, _MODEL_KINDS)
        values["basis"] = PDOBasis(**checked_fields("model configuration: basis", values["basis"], _BASIS_KINDS))
        return cls(**values)


_MODEL_KINDS = dict(layer=str, fields=str, group_order=int, flip=bool, widths=[int], basis=dict, g=int, s=int,
                    reduction=int, dropout=float, head=int, field_frequency=int, nonlinearity=str)  # fmt: skip
_BASIS_KINDS = dict(discretization=str, max_order=int, max_frequency=(int, None), bandwidth=(float, None), size=int,
                    scale=(float, None))  # fmt: skip


PRESETS: Dict[str, ModelConfig] = {
    "default": ModelConfig(),
    "half": ModelConfig(widths=(10, 11, 15, 15, 21, 21), reduction=8, dropout=0.0),
    "so2": ModelConfig(group_order=-1, fields="fourier", widths=(18, 18, 27, 27, 35, 35)),
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
(the same skeleton on SO(2) band-limited regular fields of frequencies up to 2, 27,481 parameters; escnn's R2Conv on
it at 27,614: ``layer="escnn", widths=(7, 7, 11, 11, 14, 14)``) and the paper's four MNIST-rot models (C16;
D16|5C16), whose parameter counts are within 1% of the reference implementation's.
``replace(PRESETS[name], layer="reference")`` gives a paper model with the reference implementation's layers."""


def preset(name: str, **changes: Any) -> ModelConfig:
    """``PRESETS[name]`` with ``changes`` applied (``dataclasses.replace``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid ones are {', '.join(PRESETS)}")
    return replace(PRESETS[name], **changes)


class EquivariantClassifier(torch.nn.Module):
    """Plain tensors ``(B, 1, H, W)`` in, logits ``(B, 10)`` out; an escnn network inside.

    Inference that runs every module in eval mode without gradients runs the network's exported form instead
    (:class:`epdo.nn.inference.ExportedInference`: the same logits to rounding, faster), except where that could
    differ from the modules: under forward hooks, and a form made anew whenever a module or tensor changes.
    """

    def __init__(self, body: nn.SequentialModule, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.in_type = body.in_type
        self.body = body
        self.classifier = classifier
        widest = max(_channels(m) for m in body.modules())
        # in a plain attribute (not a submodule): torch.fx patches every module's __call__ while it traces
        self._inference = ExportedInference(_plain_form, widest)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Invariant features ``(B, C)`` before the classifier."""
        _check_images(x)
        y = self.body(nn.GeometricTensor(x, self.in_type)).tensor
        return torch.amax(y, dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x)
        logits = self._inference(self, x)
        return self.classifier(self.features(x)) if logits is None else logits

    def export(self, backend: str = "auto") -> torch.fx.GraphModule:
        """The network in plain PyTorch (:func:`epdo.nn.export_network`): the same eval-mode logits for images
        ``(B, 1, H, W)``, batch norms folded, traced by ``torch.fx``; ``backend`` as there."""
        return _exported_classifier(self.body, self.classifier, backend)


def _plain_form(network: EquivariantClassifier) -> torch.nn.Module:
    return _plain_classifier(network.body, network.classifier, "auto")


def _check_images(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(x.shape)}")


def _channels(module: torch.nn.Module) -> int:
    """The most channels of a tensor ``module`` makes (its output, and a Neural ePDO's coefficients), or 1."""
    sizes = [getattr(getattr(module, name, None), "size", 1) for name in ("out_type", "coefficient_type")]
    return max(s for s in sizes if isinstance(s, int))


def _classifier(channels: int, hidden: int = 64, classes: int = 10) -> torch.nn.Module:
    """``Linear -> BatchNorm1d -> ReLU -> Linear`` through ``hidden`` units, or one ``Linear`` when ``hidden`` is 0."""
    if hidden == 0:
        return torch.nn.Sequential(torch.nn.Linear(channels, classes))
    return torch.nn.Sequential(
        torch.nn.Linear(channels, hidden),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.ReLU(inplace=True),
        torch.nn.Linear(hidden, classes),
    )


def build_model(config: Union[ModelConfig, str] = "default") -> torch.nn.Module:
    """The network of ``config`` (a :class:`ModelConfig` or the name of a preset), in training mode.

    Example:
        >>> import torch
        >>> model = build_model(preset("default", widths=(4, 4, 4, 4, 4, 4)))
        >>> model.eval()(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    if isinstance(config, str):
        config = preset(config)
    if config.layer == "cnn":
        target = count_parameters(_equivariant_model(replace(config, layer="epdo", dropout=0.0)))
        return plain_cnn(target, dropout=config.dropout, head=config.head)
    return _equivariant_model(config).train()


def _equivariant_model(config: ModelConfig) -> EquivariantClassifier:
    fourier = config.fields == "fourier"
    make_space = gspaces.flipRot2dOnR2 if config.flip else gspaces.rot2dOnR2
    if fourier:
        gspace = make_space(-1, maximum_frequency=max(config.field_frequency, config.basis.max_order) + 1)
        irreps = gspace.fibergroup.bl_irreps(config.field_frequency)
        samples = 4 * (config.field_frequency + 1)  # >= 2 L + 1 rotations, a multiple of 4: exact on the grid
    else:
        gspace = make_space(config.group_order)

    def field(gs) -> group.Representation:
        if fourier:
            return gs.fibergroup.spectral_regular_representation(*irreps)
        if config.fields == "regular":
            return gs.regular_repr
        quotient = gs.quotient_repr((None, 4)) if gs.flips_order > 0 else gs.quotient_repr(4)
        return group.directsum([gs.regular_repr, quotient])

    def layer(in_type: nn.FieldType, out_type: nn.FieldType) -> nn.EquivariantModule:
        if config.layer == "escnn":
            return nn.R2Conv(in_type, out_type, 5, padding=2, bias=False)
        if config.layer == "pdo":
            return PDOConv(in_type, out_type, basis=config.basis)
        options = dict(g=config.g, s=config.s, reduction=config.reduction)
        if config.layer == "reference":
            basis = config.basis
            return NeuralePDO.reference(
                in_type, out_type, discretization=basis.discretization, max_order=basis.max_order, **options
            )
        return NeuralePDO(in_type, out_type, basis=config.basis, **options)

    def norm(ftype: nn.FieldType) -> nn.EquivariantModule:
        return nn.IIDBatchNorm2d(ftype) if fourier else FieldBatchNorm(ftype)

    def pool(ftype: nn.FieldType) -> nn.EquivariantModule:
        return nn.PointwiseAvgPool2D(ftype, 2) if fourier else FieldMaxPool(ftype)

    split = fourier and config.nonlinearity != "pointwise"
    if split:
        nonlinearity, outputs = _irrep_nonlinearities(gspace, field(gspace), config.nonlinearity, config.widths)
    else:
        outputs = [nn.FieldType(gspace, [field(gspace)] * w) for w in config.widths]

        def nonlinearity(ftype: nn.FieldType) -> nn.EquivariantModule:
            if fourier:
                return nn.FourierPointwise(ftype.gspace, len(ftype), irreps, type="regular", N=samples)
            return _relu(ftype)

    image = nn.FieldType(gspace, [gspace.trivial_repr])
    if config.layer == "escnn":
        lift: nn.EquivariantModule = nn.R2Conv(image, outputs[0], 5, padding=2, bias=False)
    else:
        lift = PDOConv(image, outputs[0], basis=config.basis)
    modules: List[nn.EquivariantModule] = [lift, norm(outputs[0]), nonlinearity(outputs[0])]
    for index in range(1, 6):
        in_type = modules[-1].out_type
        if index == 5 and config.flip and not fourier:
            restrict = RestrictToRotations(in_type)
            modules.append(restrict)
            in_type = restrict.out_type
            outputs[5] = nn.FieldType(in_type.gspace, [field(in_type.gspace)] * (2 * config.widths[5]))
        modules += [layer(in_type, outputs[index]), norm(outputs[index])]
        if index in (1, 3):
            modules.append(pool(outputs[index]))
        modules.append(nonlinearity(outputs[index]))
        if index >= 2 and config.dropout > 0:
            modules.append(FieldDropout(modules[-1].out_type, config.dropout))
    modules.append(nn.NormPool(modules[-1].out_type) if split else GroupMaxPool(modules[-1].out_type))
    body = nn.SequentialModule(*modules)
    return EquivariantClassifier(body, _classifier(body.out_type.size, config.head))


def _irrep_nonlinearities(
    gspace: gspaces.GSpace2D, field: group.Representation, kind: str, widths: Sequence[int]
) -> Tuple[Callable[[nn.FieldType], nn.EquivariantModule], List[nn.FieldType]]:
    """The ``"gated"`` / ``"norm"`` nonlinearity of :class:`ModelConfig` and the layers' output types for
    ``widths`` fields of the representation ``field`` (a sum of irreps), each field split into its irreps and the
    fields grouped by irrep (each representation's fields contiguous, as escnn's batch norm export needs them):
    ``[trivial] * w + [gate] * (n w) + [psi_1] * w + ... + [psi_n] * w`` (no gates for ``"norm"``); the
    nonlinearity keeps all but the gates."""
    fibergroup = gspace.fibergroup
    parts = [fibergroup.irrep(*name) for name in field.irreps]
    scalars = [rho for rho in parts if rho.is_trivial()]
    others = [rho for rho in parts if not rho.is_trivial()]
    gates = [gspace.trivial_repr] * len(others) if kind == "gated" else []
    outputs = [
        nn.FieldType(gspace, scalars * w + gates * w + [rho for rho in others for _ in range(w)]) for w in widths
    ]

    def nonlinearity(ftype: nn.FieldType) -> nn.EquivariantModule:
        w = len(ftype) // (len(scalars) + len(gates) + len(others))
        first = len(scalars) * w
        rest = ftype.index_select(list(range(first, len(ftype))))
        if kind == "gated":
            labels = ["gate"] * (len(gates) * w) + ["gated"] * (len(others) * w)
            branch: nn.EquivariantModule = nn.GatedNonLinearity1(rest, gates=labels)
        else:
            branch = nn.NormNonLinearity(rest, "n_relu")
        relu = _relu(ftype.index_select(list(range(first))))
        return nn.MultipleModule(ftype, ["scalar"] * first + ["rest"] * len(rest), [(relu, "scalar"), (branch, "rest")])

    return nonlinearity, outputs


def _relu(ftype: nn.FieldType) -> nn.ReLU:
    # not in place: after a batch norm its input is a view, and an in-place op on a view costs autograd a copy
    return nn.ReLU(ftype, inplace=False)


class PlainCNN(torch.nn.Module):
    """The same skeleton with ``Conv2d`` 5x5 layers (no equivariance), channel widths ``channels``, a classifier of
    ``head`` hidden units."""

    def __init__(self, channels: Sequence[int], dropout: float = 0.1, head: int = 64) -> None:
        super().__init__()
        layers: List[torch.nn.Module] = []
        previous = 1
        for index, width in enumerate(channels):
            layers += [
                torch.nn.Conv2d(previous, width, 5, padding=2, bias=False),
                torch.nn.BatchNorm2d(width),
                torch.nn.ReLU(inplace=True),
            ]
            if index in (1, 3):
                layers.append(torch.nn.MaxPool2d(2))
            if index >= 2 and dropout > 0:
                layers.append(torch.nn.Dropout2d(dropout))
            previous = width
        self.body = torch.nn.Sequential(*layers)
        self.classifier = _classifier(previous, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.body(x), dim=(2, 3)))

    def export(self, backend: str = "auto") -> torch.fx.GraphModule:
        """The same eval-mode logits in plain PyTorch, batch norms folded, traced by ``torch.fx``."""
        return _exported_classifier(self.body, self.classifier, backend)


class _Classifier(torch.nn.Module):
    """``classifier(max over pixels of body(x))``, on plain tensors."""

    def __init__(self, body: torch.nn.Module, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.classifier = body, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.body(x), dim=(2, 3)))


def _plain_classifier(body: torch.nn.Module, classifier: torch.nn.Module, backend: str) -> torch.nn.Module:
    """``classifier(max over pixels of body(x))`` from the plain-PyTorch forms of both (untraced)."""
    like = next(body.parameters()).detach().new_empty(0)
    return _Classifier(exported_layers(body, backend, like), exported_layers(classifier, backend, like))


def _exported_classifier(body: torch.nn.Module, classifier: torch.nn.Module, backend: str) -> torch.fx.GraphModule:
    return trace(_plain_classifier(body, classifier, backend))


def plain_cnn(
    target_params: int, dropout: float = 0.1, base: Sequence[int] = (16, 24, 32, 32, 48, 64), head: int = 64
) -> PlainCNN:
    """A :class:`PlainCNN` with widths ``round(k * base)`` and a classifier of ``head`` hidden units, ``k`` chosen so
    the parameter count is closest to ``target_params``."""

    def widths(k: float) -> List[int]:
        return [max(1, round(k * b)) for b in base]

    def count(channels: Sequence[int]) -> int:
        convs = sum(25 * c_in * c_out + 2 * c_out for c_in, c_out in zip([1, *channels[:-1]], channels))
        c = channels[-1]
        return convs + (c * 10 + 10 if head == 0 else (c + 1) * head + 2 * head + (head + 1) * 10)

    best = min((abs(count(widths(k / 200)) - target_params), k / 200) for k in range(10, 2000))[1]
    return PlainCNN(widths(best), dropout, head)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
