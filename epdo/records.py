"""Plain-data records read from files: a dictionary checked field by field against declared kinds, so that a
configuration from a checkpoint is either exactly what the code expects or one ``ValueError`` naming the field."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple, Union

_Kind = Union[type, Tuple[Any, ...], list]


def _describe(kind: _Kind) -> str:
    if isinstance(kind, tuple):
        return " or ".join(_describe(k) for k in kind)
    if isinstance(kind, list):
        return "a list of integers"
    if kind is None:
        return "None"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, kind.__name__)


def _matches(value: Any, kind: _Kind) -> bool:
    if isinstance(kind, tuple):
        return any(_matches(value, k) for k in kind)
    if kind is None:
        return value is None
    if isinstance(kind, list):
        return isinstance(value, (list, tuple)) and all(_matches(v, int) for v in value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def checked_fields(record: str, values: Any, kinds: Mapping[str, _Kind]) -> Dict[str, Any]:
    """``values`` as a new dictionary, after checking that it is a dictionary with exactly the keys of ``kinds`` and
    that each value is of its kind: a type (``int``, ``float``, which accepts integers, ``bool``, ``str``,
    ``dict``), a tuple of kinds (any of them; ``None`` for an absent value), or ``[int]``, a list or tuple of integers
    (returned as a tuple).

    Raises ``ValueError``: ``"<record>: field 'widths' must be a list of integers, got str ('4,4')"``, or the missing
    or unknown fields by name.
    """
    if not isinstance(values, Mapping):
        raise ValueError(f"{record}: expected a dictionary of fields, got {type(values).__name__}")
    missing = [k for k in kinds if k not in values]
    unknown = [str(k) for k in values if k not in kinds]
    if missing or unknown:
        parts = ([f"missing {missing}"] if missing else []) + ([f"unknown {unknown}"] if unknown else [])
        raise ValueError(f"{record}: fields {'; '.join(parts)} (expected exactly {list(kinds)})")
    checked = {}
    for name, kind in kinds.items():
        value = values[name]
        if not _matches(value, kind):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ValueError(
                f"{record}: field {name!r} must be {_describe(kind)}, got {type(value).__name__} ({shown})"
            )
        checked[name] = tuple(value) if isinstance(kind, list) else value
    return checked
