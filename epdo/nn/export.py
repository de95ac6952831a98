"""Whole networks exported to plain PyTorch: every layer's ``export()``, each batch norm folded into the linear map
before it, dropout removed, ReLUs in place, all traced by ``torch.fx`` into one ``GraphModule`` whose code calls torch
alone (and, on the CPU, epdo's registered operators ``torch.ops.epdo.*``): neither escnn nor epdo's Python runs."""

from __future__ import annotations

import copy
from typing import List, Optional, Tuple

import torch
from escnn.nn import (
    EquivariantModule,
    FourierPointwise,
    GatedNonLinearity1,
    GeometricTensor,
    MaskModule,
    MaxPoolChannels,
    MultipleModule,
    NormNonLinearity,
    NormPool,
    PointwiseAvgPool2D,
    PointwiseAvgPoolAntialiased2D,
    SequentialModule,
)

from epdo.nn.basis_conv import Pointwise
from epdo.nn.escnn_exports import (
    ExportedBranches,
    ExportedGate,
    ExportedMask,
    ExportedNormNonlinearity,
    ExportedNormPool,
    branch_channels,
)
from epdo.nn.exportable import Exportable
from epdo.nn.field_norm import FieldView
from epdo.nn.functional import BACKENDS
from epdo.nn.group_pooling import FieldMax
from epdo.nn.max_pool import NativeMaxPool2x2
from epdo.nn.native import exported_native, load_field_maps
from epdo.nn.neural_epdo import ExportedNeuralePDO
from epdo.nn.sampled import SampledPointwise

_DROPOUT = (torch.nn.Identity, torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d)
_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
_LINEAR = (torch.nn.Conv2d, torch.nn.Linear, Pointwise, ExportedNeuralePDO)
_FRESH = (*_LINEAR, torch.nn.MaxPool2d, torch.nn.AvgPool2d, NativeMaxPool2x2)  # modules whose output is a new tensor


def export_network(network: torch.nn.Module, backend: str = "auto") -> torch.fx.GraphModule:
    """``network`` as a ``torch.fx.GraphModule`` on plain tensors, computing what ``network`` computes in eval mode (to
    rounding: batch norms are folded into the maps before them): an escnn ``SequentialModule`` or any module
    :func:`epdo.nn.export.exported_layers` takes, on ``(B, in_type.size, H, W)``; or a user's ``torch.nn.Module``
    whose forward wraps its input in ``GeometricTensor``, calls escnn and epdo modules, takes ``.tensor`` and goes on
    in plain PyTorch (escnn's tutorial model): each escnn and epdo module it calls is exported, the rest traced.

    ``backend`` (:data:`epdo.nn.functional.BACKENDS`) chooses how epdo's layers run: ``"auto"`` the compiled
    operators where the network's parameters are float32/float64 CPU tensors and they build, PyTorch's operations
    otherwise; ``"pytorch"`` PyTorch's operations anywhere (nothing of epdo is needed to load and run the result).

    Example:
        >>> import torch
        >>> from escnn import gspaces, nn
        >>> from epdo.nn import NeuralePDO, PDOConv
        >>> gs = gspaces.rot2dOnR2(4)
        >>> image, fields = nn.FieldType(gs, [gs.trivial_repr]), nn.FieldType(gs, [gs.regular_repr] * 2)
        >>> net = nn.SequentialModule(PDOConv(image, fields), nn.InnerBatchNorm(fields), nn.ReLU(fields),
        ...                           NeuralePDO(fields, fields))
        >>> plain = export_network(net.eval())
        >>> x = torch.randn(2, 1, 12, 12)
        >>> bool(torch.allclose(plain(x), net(nn.GeometricTensor(x, image)).tensor, atol=1e-5))
        True
    """
    if isinstance(network, (EquivariantModule, torch.nn.Sequential)):
        return trace(exported_layers(network, backend))
    return _export_user_network(network, backend)


class _FieldProxy(torch.fx.Proxy):
    """A traced tensor that stands for a ``GeometricTensor`` too: its ``.tensor`` is itself."""

    def __getattr__(self, name: str):
        return self if name == "tensor" else super().__getattr__(name)


class _FieldTracer(torch.fx.Tracer):
    """Traces a network's forward with its escnn and epdo modules as leaves, a geometric tensor as its tensor."""

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return isinstance(module, EquivariantModule) or super().is_leaf_module(module, qualified_name)

    def proxy(self, node: torch.fx.Node) -> torch.fx.Proxy:
        return _FieldProxy(node, self)

    def create_arg(self, a):
        return super().create_arg(a.tensor if isinstance(a, GeometricTensor) else a)


def _export_user_network(network: torch.nn.Module, backend: str) -> torch.fx.GraphModule:
    """:func:`export_network` of a module with its own forward: traced with its escnn and epdo modules as leaves (a
    ``GeometricTensor`` of a traced tensor made without escnn's checks, which cannot read a traced shape), each
    replaced by its exported form, and the whole traced again into plain PyTorch."""
    like = next(network.parameters(), torch.empty(0)).detach().new_empty(0)
    training = network.training
    checked_init = GeometricTensor.__init__

    def init(self, tensor, type, coords=None) -> None:  # noqa: A002 - escnn's argument names
        if isinstance(tensor, torch.fx.Proxy):
            self.tensor, self.type, self.coords = tensor, type, coords
        else:
            checked_init(self, tensor, type, coords)

    GeometricTensor.__init__ = init  # type: ignore[method-assign]
    try:
        graph = _FieldTracer().trace(network.eval())
    except Exception as error:  # noqa: BLE001 - fx raises several types
        name = type(network).__name__
        raise TypeError(f"export: cannot trace {name}'s forward into plain PyTorch: {error}") from None
    finally:
        GeometricTensor.__init__ = checked_init  # type: ignore[method-assign]
        network.train(training)
    staged = torch.fx.GraphModule(network, graph)
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(network.get_submodule(node.target), EquivariantModule):
            staged.add_submodule(node.target, exported_layers(network.get_submodule(node.target), backend, like))
    return trace(staged)


def trace(module: torch.nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace(module)``, in eval mode, without type annotations (postponed ones are strings, which
    a saved ``GraphModule`` cannot import); a module whose forward cannot be traced gets an error that names it.

    While it traces, torch.fx replaces ``torch.nn.Module.__call__`` for the whole process: do not run modules in
    other threads meanwhile."""
    try:
        traced = torch.fx.symbolic_trace(module.eval())
    except Exception as error:  # noqa: BLE001 - fx raises several types; the message says which module
        failing = [m for m in module.modules() if not _traceable(m)]
        culprit = failing[-1] if failing else module  # the last in pre-order: none of its descendants fails
        raise TypeError(
            f"export: cannot trace {type(culprit).__name__} ({type(culprit).__module__}) into plain PyTorch: {error}"
        ) from error
    for node in traced.graph.nodes:
        node.type = None
    traced.recompile()
    return traced


def _traceable(module: torch.nn.Module) -> bool:
    try:
        torch.fx.symbolic_trace(module)
    except Exception:  # noqa: BLE001
        return False
    return True


def exported_layers(
    module: torch.nn.Module, backend: str = "auto", like: Optional[torch.Tensor] = None
) -> torch.nn.Module:
    """The plain-PyTorch form of ``module``, untraced: escnn/epdo modules by their ``export()`` (epdo's with
    ``backend``; escnn's ``FourierPointwise``, ``PointwiseAvgPool2D``, ``PointwiseAvgPoolAntialiased2D``,
    ``NormNonLinearity``, ``GatedNonLinearity1``, ``NormPool``, ``MaskModule`` and ``MultipleModule``, which have
    none or one that raises, by their forms here and in :mod:`epdo.nn.escnn_exports`), sequences with
    :func:`fold_sequence` applied, other modules copied in eval mode.  ``like``: a tensor of the network's dtype and
    device (default: ``module``'s first parameter)."""
    if backend not in BACKENDS:
        raise ValueError(f"export: backend must be one of {BACKENDS}, got {backend!r}")
    if like is None:
        like = next(module.parameters(), torch.empty(0)).detach().new_empty(0)
    if isinstance(module, (SequentialModule, torch.nn.Sequential)):
        return torch.nn.Sequential(*fold_sequence([exported_layers(m, backend, like) for m in module.children()]))
    if isinstance(module, Exportable):  # every epdo module
        return module.export(backend, like)
    if isinstance(module, FourierPointwise):  # escnn has no export() for it
        native = exported_native(backend, like, load_field_maps, "export: the compiled Fourier ReLU")
        return SampledPointwise.of(module, native)
    if isinstance(module, PointwiseAvgPool2D):  # nor for this one
        return torch.nn.AvgPool2d(module.kernel_size, module.stride, module.padding, module.ceil_mode)
    if isinstance(module, PointwiseAvgPoolAntialiased2D):  # a depthwise blur with a stride
        return _depthwise(module.filter, module.stride, module.padding)
    if isinstance(module, NormNonLinearity):  # nor for these
        return ExportedNormNonlinearity(module).to(like)
    if isinstance(module, GatedNonLinearity1):
        return ExportedGate(module).to(like)
    if isinstance(module, NormPool):
        return ExportedNormPool(module).to(like)
    if isinstance(module, MaskModule):
        return ExportedMask(module).to(like)
    if isinstance(module, MultipleModule):
        branches = [exported_layers(getattr(module.merging, f"submodule_{i}"), backend, like)
                    for i in range(len(module.merging._labels))]  # fmt: skip
        return ExportedBranches(branch_channels(module), branches).to(like)
    if isinstance(module, EquivariantModule):
        training = module.training
        exported = module.export()  # escnn's export() leaves the module in eval mode
        module.train(training)
        if isinstance(exported, MaxPoolChannels):  # escnn's GroupPooling: asserts on shapes, which fx cannot trace
            return FieldMax(exported.kernel_size)
        return exported.eval()
    return copy.deepcopy(module).eval()


@torch.no_grad()
def _depthwise(weight: torch.Tensor, stride, padding) -> torch.nn.Conv2d:
    """``torch.nn.Conv2d`` applying ``weight`` ``(C, 1, k, k)`` to each channel alone."""
    channels, _, k, _ = weight.shape
    conv = torch.nn.Conv2d(channels, channels, k, stride, padding, groups=channels, bias=False)
    conv.weight.copy_(weight)
    return conv.to(weight).eval()


def fold_sequence(modules: List[torch.nn.Module]) -> List[torch.nn.Module]:
    """``modules`` (run in order, eval mode) with each batch norm folded into a ``Conv2d``, ``Linear``,
    :class:`epdo.nn.basis_conv.Pointwise` or exported Neural ePDO right before it, dropout and identities removed,
    and ReLUs after a module that returns a new tensor made in place."""
    out: List[torch.nn.Module] = []
    for module in modules:
        if isinstance(module, _DROPOUT):
            continue
        affine = _batch_norm_affine(module)
        if affine is not None and out and isinstance(out[-1], _LINEAR):
            out[-1] = _scaled(out[-1], *affine)
            continue
        if isinstance(module, torch.nn.ReLU) and out and isinstance(out[-1], _FRESH):
            module = torch.nn.ReLU(inplace=True)
        out.append(module)
    return out


def _batch_norm_affine(module: torch.nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(scale, shift)`` per channel of a batch norm with running statistics (eval mode: ``y = scale x + shift``), or
    ``None`` for any other module; a per-field batch norm (:class:`epdo.nn.field_norm.FieldView`) per channel."""
    repeat = 1
    if isinstance(module, FieldView) and isinstance(module.module, torch.nn.BatchNorm3d):
        module, repeat = module.module, module.field_size
    if not isinstance(module, _BATCH_NORMS) or module.running_var is None:
        return None
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    return scale.detach().repeat_interleave(repeat), shift.detach().repeat_interleave(repeat)


@torch.no_grad()
def _scaled(module: torch.nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> torch.nn.Module:
    """``scale * module(x) + shift`` (per output channel) as one module of ``module``'s kind."""
    folded = copy.deepcopy(module)
    if isinstance(folded, ExportedNeuralePDO):
        folded.mix = _scaled(folded.mix, scale, shift)
        return folded
    shape = (-1,) + (1,) * (folded.weight.dim() - 1)
    folded.weight.mul_(scale.reshape(shape))
    bias = shift if folded.bias is None else folded.bias * scale + shift
    folded.bias = torch.nn.Parameter(bias.to(folded.weight.dtype))
    return folded
