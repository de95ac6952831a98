"""What defines a network of :func:`epdo.models.build_model`: :class:`ModelConfig` and its choices."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

from epdo.kernels import PDOBasis
from epdo.nn.neural_epdo import FORMS
from epdo.records import checked_fields

FIELDS = ("regular", "quotient", "fourier")
"""The field kinds of :class:`ModelConfig` (``fields``)."""
LAYERS = ("epdo", "reference", "pdo", "escnn", "cnn")
"""The layer kinds of :class:`ModelConfig` (``layer``)."""
NONLINEARITIES = ("pointwise", "gated", "norm")
"""The nonlinearities of :class:`ModelConfig` (``nonlinearity``)."""
SKELETONS = ("paper", "tutorial")
"""The skeletons of :class:`ModelConfig` (``skeleton``)."""


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
            ``field_frequency``, with the ReLU on 4 (field_frequency + 1) rotations (:class:`epdo.nn.FourierReLU`),
            :class:`epdo.nn.IIDBatchNorm`, 2x2 average pooling, and the maximum over 16 rotations as invariant
            features).
        group_order: N of C_N (or D_N with ``flip``); -1 for SO(2) (O(2) with ``flip``).
        flip: D_N for layers 1-5, restricted to C_N before layer 6 (the paper's D16|5C16 model); layer 6 then has
            twice ``widths[5]`` C_N fields, as each restricted D_N field becomes two.
        widths: fields of layers 1-6.
        basis: the PDOs of every PDO layer (:class:`epdo.kernels.PDOBasis`).
        g, s, reduction: of every :class:`epdo.nn.NeuralePDO`.
        dropout: field dropout of layers 3-6.
        head: hidden units of the two-layer classifier on the invariant features (0: one linear map).
        field_frequency: the highest frequency of ``"fourier"`` fields.
        nonlinearity: ``"pointwise"`` (ReLU; on ``"fourier"`` fields :class:`epdo.nn.FourierReLU`), or, with
            ``"fourier"`` fields only, ``"gated"`` or ``"norm"``: each field is then split into its irreps (the same
            representation in another basis), ReLU on the frequency-0 part and, on the others, escnn's
            ``GatedNonLinearity1`` (one extra scalar gate field per irrep, made by the layer before) or
            ``NormNonLinearity`` (``n_relu``); the invariant features are then the irreps' norms (escnn's
            ``NormPool``).
        skeleton: ``"paper"`` (the paper's MNIST-rot skeleton: six 5x5 'same' layers at 28, 28, 14, 14, 7, 7 pixels,
            described in :func:`build_model`) or ``"tutorial"`` (the shape of escnn's tutorial model: images
            zero-padded at the bottom and right to 29x29 and masked to a disk, a 7x7 lift with padding 1, 5x5 layers
            with padding 2, 2, 2, 2 and 1, each followed by batch norm and the nonlinearity, escnn's antialiased
            average pooling (sigma 0.66) with stride 2 after layers 2 and 4 and, down to one pixel, after layer 6:
            25, 25, 13, 13, 7 and 5 pixels).  ``"tutorial"`` needs ``basis.size`` 5 (its kernel sizes are fixed) and
            an equivariant ``layer``.
        form: the coefficient form of every :class:`epdo.nn.NeuralePDO` (:data:`epdo.nn.neural_epdo.FORMS`).
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
    skeleton: str = "paper"
    form: str = "auto"

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
        if self.skeleton not in SKELETONS:
            raise ValueError(f"skeleton must be one of {SKELETONS}, got {self.skeleton!r}")
        if self.skeleton == "tutorial" and (self.basis.size != 5 or self.layer == "cnn"):
            raise ValueError(
                f"the tutorial skeleton has fixed kernel sizes (7, then 5) and equivariant layers: expected basis.size "
                f"5 and a layer other than 'cnn', got {self.basis.size} and {self.layer!r}"
            )
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        requirements = {  # form: (whether the configuration has what it needs, what it needs)
            "sampled": (self.fields == "fourier" and self.nonlinearity == "pointwise", "fourier fields and the "
                        "pointwise nonlinearity"),
            "diagonal": (self.fields != "fourier", "regular or quotient fields"),
        }  # fmt: skip
        fits, needs = requirements.get(self.form, (True, ""))
        if not fits:
            raise ValueError(
                f"form {self.form!r} needs {needs}, got {self.fields!r} fields and the {self.nonlinearity!r} "
                "nonlinearity"
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
        without ``nonlinearity``, ``skeleton`` or ``form`` (written before they existed) has the one there was then
        (``"pointwise"``, ``"paper"``, ``"auto"``), and a basis without ``scale`` the default scale."""
        if isinstance(values, dict):
            values = {"nonlinearity": "pointwise", "skeleton": "paper", "form": "auto", **values}
        if isinstance(values, dict) and isinstance(values.get("basis"), dict) and "scale" not in values["basis"]:
            values = {**values, "basis": {**values["basis"], "scale": None}}
        values = checked_fields("model configuration", values, _MODEL_KINDS)
        values["basis"] = PDOBasis(**checked_fields("model configuration: basis", values["basis"], _BASIS_KINDS))
        return cls(**values)


_MODEL_KINDS = dict(layer=str, fields=str, group_order=int, flip=bool, widths=[int], basis=dict, g=int, s=int,
                    reduction=int, dropout=float, head=int, field_frequency=int, nonlinearity=str,
                    skeleton=str, form=str)  # fmt: skip
_BASIS_KINDS = dict(discretization=str, max_order=int, max_frequency=(int, None), bandwidth=(float, None), size=int,
                    scale=(float, None))  # fmt: skip
