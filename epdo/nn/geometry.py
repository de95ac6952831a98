"""Where a ``k x k`` operator reads its input on the pixel grid: ``torch.nn.Conv2d``'s and escnn ``R2Conv``'s
``kernel_size``, ``padding``, ``stride``, ``dilation`` and ``padding_mode``, as one value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F

from epdo.kernels import PDOBasis

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
"""``torch.nn.Conv2d``'s padding modes."""


@dataclass(frozen=True)
class Geometry:
    """The sampling grid of a ``kernel_size x kernel_size`` operator.

    The input ``(B, C, H, W)`` is padded once by ``padding`` pixels on every side (``padding_mode``), then output pixel
    ``(i, j)`` is centred on padded pixel ``(s i + d r, s j + d r)`` (``r = (kernel_size - 1) / 2``, ``s = stride``,
    ``d = dilation``) and tap ``(u, v)`` of the operator reads padded pixel ``(s i + d u, s j + d v)``.  The output
    has ``floor((H + 2 padding - d (kernel_size - 1) - 1) / s) + 1`` rows, as ``torch.nn.Conv2d``.

    Args:
        kernel_size: the operator's width, odd and at least 3.
        padding: pixels added on every side; ``None``: ``d r``, which keeps the size at stride 1 ("same").
        stride: step between output pixels.
        dilation: spacing of the taps.
        padding_mode: one of :data:`PADDING_MODES`.

    Example:
        >>> Geometry(5, padding=1).output_size(28, 28)
        (26, 26)
    """

    kernel_size: int = 5
    padding: Optional[int] = None
    stride: int = 1
    dilation: int = 1
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        k = self.kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 3 or k % 2 == 0:
            raise ValueError(f"kernel_size must be an odd integer >= 3 (the stencil's width), got {k!r}")
        for name, least in (("stride", 1), ("dilation", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if self.padding is None:
            object.__setattr__(self, "padding", self.dilation * (k // 2))
        p = self.padding
        if isinstance(p, bool) or not isinstance(p, int) or p < 0:
            raise ValueError(f"padding must be an integer >= 0 (pixels on every side), got {p!r}")
        if self.padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {self.padding_mode!r}")

    @property
    def reach(self) -> int:
        """Pixels between an output pixel's centre and its outermost tap, ``d r``."""
        return self.dilation * (self.kernel_size // 2)

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """``(H_out, W_out)`` of an ``H x W`` input (``torch.nn.Conv2d``'s formula); ``ValueError`` when the input
        is too small for any output pixel or for ``padding_mode`` (``reflect`` pads by less than the input's side,
        ``circular`` by at most it)."""
        span = 2 * self.reach + 1
        sizes = tuple((n + 2 * self.padding - span) // self.stride + 1 for n in (height, width))
        if min(sizes) < 1:
            raise ValueError(
                f"an input of {height} x {width} pixels is too small for kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, padding={self.padding}: it needs at least {span - 2 * self.padding} "
                "pixels a side"
            )
        least = self.padding + {"reflect": 1, "circular": 0}.get(self.padding_mode, -self.padding)
        if min(height, width) < least:
            raise ValueError(
                f"padding_mode={self.padding_mode!r} with padding={self.padding} needs an input of at least {least} "
                f"pixels a side, got {height} x {width}"
            )
        return sizes  # type: ignore[return-value]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` padded by ``padding`` on every side in ``padding_mode``, ``(B, C, H + 2p, W + 2p)``;
        ``x`` itself without padding."""
        if self.padding == 0:
            return x
        return F.pad(x, (self.padding,) * 4, mode="constant" if self.padding_mode == "zeros" else self.padding_mode)

    def centres(self, x: torch.Tensor) -> torch.Tensor:
        """The input ``(B, C, H, W)`` at the output pixels' centres, ``(B, C, H_out, W_out)``: a view of ``x`` where
        no centre lies in the padding (``padding <= d r``), ``x`` itself for a "same" geometry."""
        start = self.reach - self.padding
        if start < 0:
            x, start = self.pad(x), self.reach
        if start == 0 and self.stride == 1:
            return x
        return _rows_and_columns(x, start, start, self.stride, 2 * start)

    def tap_views(self, padded: torch.Tensor) -> Iterator[Tuple[int, torch.Tensor]]:
        """``(t, view)`` for every tap ``t = u k + v``: where tap ``(u, v)`` of every output pixel reads the padded
        input ``(..., H + 2p, W + 2p)``, each view ``(..., H_out, W_out)``; the one place the taps' positions are
        written.  Every slice bound is a Python integer (``torch.fx`` traces it)."""
        k, d = self.kernel_size, self.dilation
        for t in range(k * k):
            u, v = divmod(t, k)
            yield t, _rows_and_columns(padded, d * u, d * v, self.stride, 2 * self.reach)


def _rows_and_columns(x: torch.Tensor, row: int, column: int, step: int, span: int) -> torch.Tensor:
    """``x[..., row::step, column::step]`` without the last ``span - row`` rows and ``span - column`` columns."""
    return x[..., row : (row - span) or None : step, column : (column - span) or None : step]


def layer_geometry(
    module: str,
    basis: PDOBasis,
    kernel_size: Optional[int],
    padding: Optional[int],
    stride: int,
    dilation: int,
    padding_mode: str,
) -> Tuple[PDOBasis, Geometry]:
    """A PDO layer's basis on its stencils' width and the :class:`Geometry` of its ``R2Conv`` arguments
    (``kernel_size=None``: ``basis.size``); a bad argument is one error naming ``module``."""
    if not isinstance(basis, PDOBasis):
        raise TypeError(f"{module}: basis must be an epdo.kernels.PDOBasis, got {type(basis).__name__}")
    try:
        geometry = Geometry(basis.size if kernel_size is None else kernel_size, padding, stride, dilation, padding_mode)
    except ValueError as error:
        raise ValueError(f"{module}: {error}") from None
    return basis.of_width(geometry.kernel_size), geometry


def checked_output_size(module: str, geometry: Geometry, input_shape: Tuple[int, ...]) -> Tuple[int, int]:
    """``(H_out, W_out)`` of an input ``(B, C, H, W)`` (:meth:`Geometry.output_size`); one ``ValueError`` naming
    ``module`` where the input is too small."""
    try:
        return geometry.output_size(*input_shape[-2:])
    except ValueError as error:
        raise ValueError(f"{module}: {error}") from None
