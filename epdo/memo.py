"""One memoization helper for the library's expensive, deterministic constructions (bases, representations), and the
lock that makes them safe to run from several threads."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from typing import Any, Callable, Dict, Hashable, TypeVar

from threadpoolctl import threadpool_limits

F = TypeVar("F", bound=Callable[..., Any])

CONSTRUCTION_LOCK = threading.RLock()
"""Held while a memoized construction runs or a representation is entered in escnn's registries: both are "look up,
else build and insert", which two threads building the same layer would otherwise both do (escnn refuses the second
insertion)."""


def serialized(fn: F) -> F:
    """``fn`` run under :data:`CONSTRUCTION_LOCK`."""

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with CONSTRUCTION_LOCK:
            return fn(*args, **kwargs)

    return locked  # type: ignore[return-value]


def argument_key(value: Any) -> Hashable:
    """A cache key for one argument: values (numbers, strings, tuples, frozen dataclasses) as themselves; escnn objects
    (representations, gspaces, groups) by type, group and name, which identify them across equal instances."""
    if isinstance(value, (str, int, float, bool, type(None), tuple)) or dataclasses.is_dataclass(value):
        return value
    name = getattr(value, "name", None)
    if name is None:
        raise TypeError(f"memoize: cannot key an argument of type {type(value).__name__} (no name, not a value)")
    return (type(value).__name__, getattr(getattr(value, "group", None), "name", None), name)


def memoize(fn: F) -> F:
    """Cache ``fn``'s results per argument values (bound by name, defaults applied, keyed by :func:`argument_key`).

    The cache is ``fn.cache`` (a dict).  Results are shared: return read-only arrays or immutable objects.  A result
    is computed with one BLAS thread: the constructions are many small dense problems, on which BLAS threads only add
    synchronization, and on a busy machine waiting for each other costs many times the work.
    """
    signature = inspect.signature(fn)
    cache: Dict[Hashable, Any] = {}

    @functools.wraps(fn)
    def cached(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        key = tuple(argument_key(value) for value in bound.arguments.values())
        if key not in cache:
            with CONSTRUCTION_LOCK, threadpool_limits(limits=1, user_api="blas"):
                if key not in cache:
                    cache[key] = fn(*args, **kwargs)
        return cache[key]

    cached.cache = cache  # type: ignore[attr-defined]
    return cached  # type: ignore[return-value]
