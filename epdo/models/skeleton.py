"""The skeletons of every network (the MNIST-rot networks of the Neural ePDO paper and the library's, and escnn's
tutorial shape), built from a :class:`epdo.models.ModelConfig`."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from escnn import group, gspaces, nn

from epdo.models.baselines import plain_cnn
from epdo.models.classifier import classifier_head, exported_classifier, padded_images, plain_classifier
from epdo.models.config import ModelConfig
from epdo.models.presets import preset
from epdo.nn import (
    FieldBatchNorm,
    FieldDropout,
    FieldMaxPool,
    FourierReLU,
    GroupMaxPool,
    IIDBatchNorm,
    NeuralePDO,
    PDOConv,
    RestrictToRotations,
)
from epdo.nn.inference import ExportedInference


class EquivariantClassifier(torch.nn.Module):
    """Plain tensors ``(B, 1, H, W)`` in, logits ``(B, 10)`` out; an escnn network inside.

    Inference that runs every module in eval mode without gradients runs the network's exported form instead
    (:class:`epdo.nn.inference.ExportedInference`: the same logits to rounding, faster), except where that could
    differ from the modules: under forward hooks, and a form made anew whenever a module or tensor changes.

    ``input_size``: the side of the images the body takes; smaller images are zero-padded at the bottom and right to
    it (as escnn's tutorial pads 28x28 digits to 29x29), larger ones refused.  ``None``: any size.
    """

    def __init__(
        self, body: nn.SequentialModule, classifier: torch.nn.Module, input_size: Optional[int] = None
    ) -> None:
        super().__init__()
        self.in_type = body.in_type
        self.body = body
        self.classifier = classifier
        self.input_size = input_size
        widest = max(_channels(m) for m in body.modules())
        # in a plain attribute (not a submodule): torch.fx patches every module's __call__ while it traces
        self._inference = ExportedInference(_plain_form, widest)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Invariant features ``(B, C)`` before the classifier."""
        _check_images(x, self.input_size)
        y = self.body(nn.GeometricTensor(padded_images(x, self.input_size), self.in_type)).tensor
        return torch.amax(y, dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.input_size)
        logits = self._inference(self, x)
        return self.classifier(self.features(x)) if logits is None else logits

    def export(self, backend: str = "auto") -> torch.fx.GraphModule:
        """The network in plain PyTorch (:func:`epdo.nn.export_network`): the same eval-mode logits for images
        ``(B, 1, H, W)``, batch norms folded, traced by ``torch.fx``; ``backend`` as there."""
        return exported_classifier(self.body, self.classifier, backend, self.input_size)


def _plain_form(network: EquivariantClassifier) -> torch.nn.Module:
    return plain_classifier(network.body, network.classifier, "auto", network.input_size)


def _check_images(x: torch.Tensor, input_size: Optional[int]) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images of shape (B, 1, H, W), got {tuple(x.shape)}")
    if input_size is not None and max(x.shape[2:]) > input_size:
        raise ValueError(f"expected images of at most {input_size} x {input_size} pixels, got {tuple(x.shape)}")


def _channels(module: torch.nn.Module) -> int:
    """The most channels of a tensor ``module`` makes (its output, and a Neural ePDO's coefficients), or 1."""
    sizes = [getattr(getattr(module, name, None), "size", 1) for name in ("out_type", "coefficient_type")]
    return max(s for s in sizes if isinstance(s, int))


def build_model(config: Union[ModelConfig, str] = "default") -> torch.nn.Module:
    """The network of ``config`` (a :class:`ModelConfig` or the name of a preset), in training mode.

    The ``"paper"`` skeleton (28x28 input): layer 1 lifts the image to ``rho`` fields; layers 2-6 keep them;
    per-field batch norm and ReLU after every layer; 2x2 max pooling after layers 2 and 4, between the batch norm and
    the ReLU (maximum and ReLU commute, values and gradients alike, and the ReLU then runs on a quarter of the
    pixels); field dropout after layers 3-6; group max pooling, global max pooling and a two-layer classifier.  The
    ``"tutorial"`` skeleton: as :class:`ModelConfig` says, with the same field dropout, invariant features and
    classifier.

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

    tutorial = config.skeleton == "tutorial"
    geometries = _TUTORIAL_GEOMETRY if tutorial else [(config.basis.size, config.basis.size // 2)] * 6

    def layer(in_type: nn.FieldType, out_type: nn.FieldType, index: int) -> nn.EquivariantModule:
        lift = index == 0
        kernel_size, padding = geometries[index]
        if config.layer == "escnn":
            return nn.R2Conv(in_type, out_type, kernel_size, padding=padding, bias=False)
        geometry = dict(kernel_size=kernel_size, padding=padding) if tutorial else {}
        if config.layer == "pdo" or lift:
            return PDOConv(in_type, out_type, **geometry, basis=config.basis)
        options = dict(g=config.g, s=config.s, reduction=config.reduction)
        if config.layer == "reference":
            basis = config.basis
            return NeuralePDO.reference(
                in_type, out_type, discretization=basis.discretization, max_order=basis.max_order, **options
            )
        return NeuralePDO(in_type, out_type, **geometry, basis=config.basis, form=config.form, **options)

    def norm(ftype: nn.FieldType) -> nn.EquivariantModule:
        return IIDBatchNorm(ftype) if fourier else FieldBatchNorm(ftype)

    def pool(ftype: nn.FieldType, index: int) -> nn.EquivariantModule:
        if tutorial:
            if index == 5:  # down to one pixel
                return nn.PointwiseAvgPoolAntialiased2D(ftype, sigma=0.66, stride=1, padding=0)
            return nn.PointwiseAvgPoolAntialiased2D(ftype, sigma=0.66, stride=2)
        return nn.PointwiseAvgPool2D(ftype, 2) if fourier else FieldMaxPool(ftype)

    split = fourier and config.nonlinearity != "pointwise"
    if split:
        nonlinearity, outputs = _irrep_nonlinearities(gspace, field(gspace), config.nonlinearity, config.widths)
    else:
        outputs = [nn.FieldType(gspace, [field(gspace)] * w) for w in config.widths]

        def nonlinearity(ftype: nn.FieldType) -> nn.EquivariantModule:
            if fourier:
                return FourierReLU(ftype.gspace, len(ftype), irreps, type="regular", N=samples)
            return _relu(ftype)

    image = nn.FieldType(gspace, [gspace.trivial_repr])
    modules: List[nn.EquivariantModule] = [nn.MaskModule(image, TUTORIAL_INPUT_SIZE, margin=1)] if tutorial else []
    in_type = image
    for index in range(6):
        if index == 5 and config.flip and not fourier:
            restrict = RestrictToRotations(in_type)
            modules.append(restrict)
            in_type = restrict.out_type
            outputs[5] = nn.FieldType(in_type.gspace, [field(in_type.gspace)] * (2 * config.widths[5]))
        modules += [layer(in_type, outputs[index], index), norm(outputs[index])]
        if not tutorial and index in (1, 3):  # between batch norm and ReLU (see build_model's docstring)
            modules.append(pool(outputs[index], index))
        modules.append(nonlinearity(outputs[index]))
        if tutorial and index in (1, 3, 5):
            modules.append(pool(modules[-1].out_type, index))
        if index >= 2 and config.dropout > 0:
            modules.append(FieldDropout(modules[-1].out_type, config.dropout))
        in_type = modules[-1].out_type
    modules.append(nn.NormPool(modules[-1].out_type) if split else GroupMaxPool(modules[-1].out_type))
    body = nn.SequentialModule(*modules)
    input_size = TUTORIAL_INPUT_SIZE if tutorial else None
    return EquivariantClassifier(body, classifier_head(body.out_type.size, config.head), input_size)


TUTORIAL_INPUT_SIZE = 29
"""The image size of the ``"tutorial"`` skeleton (smaller images are zero-padded at the bottom and right)."""
_TUTORIAL_GEOMETRY = [(7, 1), (5, 2), (5, 2), (5, 2), (5, 2), (5, 1)]
"""``(kernel_size, padding)`` of layers 1-6 of the ``"tutorial"`` skeleton."""


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


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
