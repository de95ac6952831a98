"""What the command-line tools share: argparse types whose values are checked when parsed (argparse's message names
the flag: ``argument --epochs: must be a positive integer, got -1``, exit status 2), and warnings shown as one line."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from typing import Callable, Iterator, List, Optional

from epdo.diffops import check_max_order
from epdo.kernels.pdo_basis import check_bandwidth


@contextlib.contextmanager
def one_line_warnings(prog: str) -> Iterator[None]:
    """Within the block, warnings (a rebuilt data cache, say) are printed to stderr as ``<prog>: warning: <message>``,
    without the source line."""
    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.showwarning = lambda message, *args, **kwargs: print(f"{prog}: warning: {message}", file=sys.stderr)
        yield


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _integer_at_least(text, 1, "a positive integer")


def kernel_size(text: str) -> int:
    """An odd integer >= 3 (a stencil's width)."""
    value = _integer_at_least(text, 3, "an odd integer >= 3")
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"expected an odd integer >= 3, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    return _integer_at_least(text, 0, "a non-negative integer")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _number_in(text, lambda v: 0 < v < float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    return _number_in(text, lambda v: 0 <= v < float("inf"), "a non-negative number")


def _number_in(text: str, accept: Callable[[float], bool], kind: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"must be {kind}, got {text}")
    return value


def max_frequency(text: str) -> Optional[int]:
    """``none`` (no cutoff) or an integer >= 0, the highest angular frequency of the PDOs' symbols."""
    return None if text.lower() == "none" else non_negative_int(text)


def max_order(text: str) -> int:
    """An integer in 0..4, the highest derivative order of the PDOs (:func:`epdo.diffops.check_max_order`)."""
    value = non_negative_int(text)
    try:
        check_max_order(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def optional_bandwidth(text: str) -> Optional[float]:
    """``none`` or a band limit in ``[0.1, 1]`` cycles per pixel (:class:`epdo.kernels.PDOBasis`)."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
        check_bandwidth(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'none' or a number in [0.1, 1], got {text!r} ({err})") from None
    return value


def widths(text: str) -> List[int]:
    """Six comma-separated positive integers: the fields of layers 1-6."""
    try:
        values = [int(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected six comma-separated integers, got {text!r}") from None
    if len(values) != 6 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected six comma-separated positive integers, got {text!r}")
    return values


def _integer_at_least(text: str, minimum: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {kind}, got {value}")
    return value
