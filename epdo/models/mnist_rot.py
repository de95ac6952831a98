"""The MNIST-rot networks of the Neural ePDO paper and baselines on the same skeleton.

Skeleton (28x28 input): layer 1 lifts the image to ``rho`` fields; layers 2-6 keep them; max pooling after layers
2 and 4; per-field batch norm and ReLU after every layer; field dropout after layers 3-6; group max pooling,
global max pooling and a two-layer classifier.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from escnn import group, gspaces, nn

from epdo.kernels import DEFAULT_BANDWIDTH
from epdo.nn import DEFAULT_MIX_GAIN, NeuralePDO, PDOConv, RestrictToRotations

PAPER_WIDTHS = {
    "regular": (16, 24, 32, 32, 48, 64),
    "quotient": (12, 16, 24, 24, 32, 64),
    "flip": (12, 16, 24, 24, 32, 64),
}
FIELDS = ("regular", "quotient")
BASELINES = ("none", "pdo", "escnn", "cnn")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model of :func:`mnist_rot_model` (stored in checkpoints; see its arguments)."""

    fields: str = "regular"
    discretization: str = "fd"
    flip: bool = False
    g: int = 4
    s: int = 4
    reduction: int = 1
    group_order: int = 16
    widths: Optional[Tuple[int, ...]] = None
    dropout: float = 0.1
    baseline: str = "none"
    generator_init: str = "static"
    normalization: str = "rms"
    bandwidth: Optional[float] = DEFAULT_BANDWIDTH
    max_order: int = 4
    mix_gain: float = DEFAULT_MIX_GAIN
    max_frequency: Optional[int] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def build_model(config: ModelConfig) -> torch.nn.Module:
    """The model of ``config``, in training mode (escnn's ``R2Conv`` registers eval-only buffers until ``train()``,
    which would make a fresh model's ``state_dict`` keys differ from a saved one's)."""
    return mnist_rot_model(**config.as_dict()).train()


FIELDS_BY_FLAG = {"R": "regular", "Q": "quotient"}
"""``epdo-train --model R|Q`` (the paper's flag) -> ``fields``."""


def config_from_checkpoint(state: Dict[str, Any]) -> ModelConfig:
    """The :class:`ModelConfig` of a checkpoint written by ``epdo-train``, this version's (``state["config"]``) or an
    earlier one's (the CLI namespace ``state["args"]``, whose layers used the reference's L1 normalization).

    Configurations from before an option was added get the value that reproduces them (:data:`LEGACY_VALUES`: plain
    orthonormal bases, ``bandwidth=None``; ``mix_gain=1``), so their parameters keep their meaning; the
    ``order_decay`` option they may name was removed (issue 8).
    """
    if "config" in state:
        return ModelConfig(**_with_legacy_values(state["config"]))
    if "args" not in state:
        raise ValueError(
            f"not an epdo-train checkpoint: expected a 'config' (or, before version 0.2, 'args') entry, found keys "
            f"{sorted(state)}"
        )
    args = state["args"]
    try:
        converted = dict(fields=FIELDS_BY_FLAG[args["model"]], discretization=args["dis"], normalization="l1")
    except KeyError as err:
        raise ValueError(
            f"checkpoint 'args' lacks {err}; convert it by hand: state['config'] = epdo.models.ModelConfig(...)"
            ".as_dict()"
        ) from None
    known = {f.name for f in dataclass_fields(ModelConfig)}
    converted.update({k: v for k, v in args.items() if k in known and k not in converted})
    converted.setdefault("generator_init", "reference")  # checkpoints from before the option
    if converted.get("widths") is not None:
        converted["widths"] = tuple(converted["widths"])
    return ModelConfig(**_with_legacy_values(converted))


LEGACY_VALUES = {"bandwidth": None, "mix_gain": 1.0}
"""Options added after the first checkpoints, and the value that reproduces a configuration without them."""


def _with_legacy_values(config: Dict[str, Any]) -> Dict[str, Any]:
    """A configuration written before an option of :data:`LEGACY_VALUES` existed gets that option's legacy value
    (its parameters keep their meaning); ``order_decay`` (removed with the introduction of ``bandwidth``) must be
    unset."""
    config = {**{k: v for k, v in LEGACY_VALUES.items() if k not in config}, **config}
    if config.pop("order_decay", None) is not None:
        raise ValueError(
            "this checkpoint's model uses order_decay, an option epdo removed (issue 8: it slowed learning); "
            "load it with the epdo version that wrote it"
        )
    return config


class EquivariantClassifier(torch.nn.Module):
    """Plain tensors ``(B, 1, H, W)`` in, logits ``(B, 10)`` out; an escnn network inside."""

    def __init__(self, body: nn.SequentialModule, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.in_type = body.in_type
        self.body = body
        self.classifier = classifier

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Invariant features ``(B, C)`` before the classifier."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(x.shape)}")
        y = self.body(nn.GeometricTensor(x, self.in_type)).tensor
        return torch.amax(y, dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _classifier(channels: int, classes: int = 10) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Linear(channels, 64),
        torch.nn.BatchNorm1d(64),
        torch.nn.ReLU(inplace=True),
        torch.nn.Linear(64, classes),
    )


def mnist_rot_model(
    fields: str = "regular",
    discretization: str = "fd",
    flip: bool = False,
    g: int = 4,
    s: int = 4,
    reduction: int = 1,
    group_order: int = 16,
    widths: Optional[Sequence[int]] = None,
    dropout: float = 0.1,
    baseline: str = "none",
    generator_init: str = "static",
    normalization: str = "rms",
    bandwidth: Optional[float] = DEFAULT_BANDWIDTH,
    max_order: int = 4,
    mix_gain: float = DEFAULT_MIX_GAIN,
    max_frequency: Optional[int] = None,
) -> torch.nn.Module:
    """Build a paper model (``baseline="none"``) or a baseline on the same skeleton.

    Args:
        fields: ``"regular"`` or ``"quotient"`` (regular + quotient by C_4 fields, d = |G| + |G|/4); the CLI's
            ``--model R|Q``.
        discretization: of every PDO (``"fd"``, ``"gauss"``, ``"rbffd"``); the CLI's ``--dis``.
        flip: D_N for layers 1-5, restricted to C_N before layer 6 (the D16|5C16 model).
        g, s, reduction: Neural ePDO hyperparameters (see :class:`epdo.nn.NeuralePDO`).
        group_order: N.
        widths: fields of layers 1-6 (default: the paper's); with ``flip`` layer 6 gets twice ``widths[5]``
            C_N fields, as each restricted D_N field becomes two.
        dropout: field dropout of layers 3-6.
        baseline: ``"none"``; ``"pdo"`` (every layer a static :class:`PDOConv`); ``"escnn"`` (escnn ``R2Conv`` 5x5);
            ``"cnn"`` (a plain CNN, see :func:`plain_cnn`).
        generator_init, normalization, bandwidth: see :class:`epdo.nn.NeuralePDO` (``bandwidth`` applies to the
            static PDO layers too).
        max_order: highest derivative order of every PDO (0..4; the paper's 4 gives 15 operators).
        mix_gain: parametrization gain of each Neural ePDO's output mix (see :class:`epdo.nn.NeuralePDO`); changes
            how fast the model learns under Adam, not its parameters or initial function.
        max_frequency: highest angular frequency of every PDO's symbol (``None``: all up to ``max_order``; see
            :func:`epdo.diffops.frequency_projector`).
    """
    if fields not in FIELDS:
        raise ValueError(f"fields must be one of {FIELDS}, got {fields!r}")
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    widths = tuple(widths or PAPER_WIDTHS["flip" if flip else fields])
    if len(widths) != 6 or any(w < 1 for w in widths):
        raise ValueError(f"widths must be six positive integers, got {widths}")
    if baseline == "cnn":
        neural = dict(
            fields=fields,
            discretization=discretization,
            flip=flip,
            g=g,
            s=s,
            reduction=reduction,
            max_order=max_order,
            max_frequency=max_frequency,
        )
        target = count_parameters(mnist_rot_model(**neural, group_order=group_order, widths=widths, dropout=0.0))
        return plain_cnn(target, dropout=dropout)

    gspace = gspaces.flipRot2dOnR2(group_order) if flip else gspaces.rot2dOnR2(group_order)

    def field(gs) -> group.Representation:
        if fields == "regular":
            return gs.regular_repr
        if group_order % 4:
            raise ValueError(f"quotient fields need a group order divisible by 4, got {group_order}")
        quotient = gs.quotient_repr((None, 4)) if gs.flips_order > 0 else gs.quotient_repr(4)
        return group.directsum([gs.regular_repr, quotient])

    def pdo_conv(in_type: nn.FieldType, out_type: nn.FieldType) -> PDOConv:
        return PDOConv(in_type, out_type, discretization, max_order, bandwidth=bandwidth, max_frequency=max_frequency)

    def layer(in_type: nn.FieldType, out_type: nn.FieldType) -> nn.EquivariantModule:
        if baseline == "pdo":
            return pdo_conv(in_type, out_type)
        if baseline == "escnn":
            return nn.R2Conv(in_type, out_type, 5, padding=2, bias=False)
        return NeuralePDO(
            in_type,
            out_type,
            g=g,
            s=s,
            reduction=reduction,
            discretization=discretization,
            max_order=max_order,
            mix_gain=mix_gain,
            generator_init=generator_init,
            normalization=normalization,
            bandwidth=bandwidth,
            max_frequency=max_frequency,
        )

    types = [nn.FieldType(gspace, [field(gspace)] * w) for w in widths]
    image = nn.FieldType(gspace, [gspace.trivial_repr])
    first = nn.R2Conv(image, types[0], 5, padding=2, bias=False) if baseline == "escnn" else pdo_conv(image, types[0])
    modules: List[nn.EquivariantModule] = [first, *_norm_relu(types[0])]
    for index in range(1, 6):
        in_type = types[index - 1]
        if index == 5 and flip:
            restrict = RestrictToRotations(in_type)
            modules.append(restrict)
            in_type = restrict.out_type
            c_gspace = in_type.gspace
            types[5] = nn.FieldType(c_gspace, [field(c_gspace)] * (2 * widths[5]))
        modules += [layer(in_type, types[index]), *_norm_relu(types[index])]
        if index in (1, 3):
            modules.append(nn.PointwiseMaxPool2D(types[index], 2))
        if index >= 2 and dropout > 0:
            modules.append(nn.FieldDropout(types[index], dropout))
    modules.append(nn.GroupPooling(types[5]))
    body = nn.SequentialModule(*modules)
    return EquivariantClassifier(body, _classifier(body.out_type.size))


def _norm_relu(ftype: nn.FieldType) -> List[nn.EquivariantModule]:
    return [nn.InnerBatchNorm(ftype), nn.ReLU(ftype, inplace=True)]


class PlainCNN(torch.nn.Module):
    """The same skeleton with ``Conv2d`` 5x5 layers (no equivariance), channel widths ``channels``."""

    def __init__(self, channels: Sequence[int], dropout: float = 0.1) -> None:
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
        self.classifier = _classifier(previous)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.body(x), dim=(2, 3)))


def plain_cnn(target_params: int, dropout: float = 0.1, base: Sequence[int] = (16, 24, 32, 32, 48, 64)) -> PlainCNN:
    """A :class:`PlainCNN` with widths ``round(k * base)``, ``k`` chosen so the parameter count is closest to
    ``target_params``."""

    def widths(k: float) -> List[int]:
        return [max(1, round(k * b)) for b in base]

    def count(channels: Sequence[int]) -> int:
        convs = sum(25 * c_in * c_out + 2 * c_out for c_in, c_out in zip([1, *channels[:-1]], channels))
        return convs + (channels[-1] * 64 + 64) + 2 * 64 + (64 * 10 + 10)

    best = min((abs(count(widths(k / 200)) - target_params), k / 200) for k in range(10, 2000))[1]
    return PlainCNN(widths(best), dropout)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
