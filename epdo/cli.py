"""argparse types shared by the command-line tools: values are checked when parsed, and argparse's message names
the flag (``argument --epochs: must be a positive integer, got -1``, exit status 2)."""

from __future__ import annotations

import argparse
from typing import Optional

from epdo.kernels import check_bandwidth


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the flag in its message)."""
    return _integer_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer_at_least(text, 0, "a non-negative integer")


def max_frequency(text: str) -> Optional[int]:
    """argparse type: ``none`` (no cutoff) or an integer >= 0, the highest angular frequency of the PDOs' symbols."""
    return None if text.lower() == "none" else non_negative_int(text)


def _integer_at_least(text: str, minimum: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {kind}, got {value}")
    return value


def bandwidth(text: str) -> Optional[float]:
    """argparse type: ``none`` or a bandwidth :func:`epdo.kernels.check_bandwidth` accepts (cycles per pixel)."""
    if text.lower() == "none":
        return None
    try:
        value = float(text)
        check_bandwidth(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'none' or a number in (0, 1], got {text!r} ({err})") from None
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
