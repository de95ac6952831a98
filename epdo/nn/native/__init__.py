"""Compiled CPU kernels: C sources built with the system's C compiler (OpenMP) at first use and cached on disk.

The first call in a fresh cache compiles ``adaptive_pdo.c`` once per scalar type (float32, float64) and stencil set
(the stencil is a compile-time constant of the kernel), 1-3 seconds each; later processes load the cached shared
library.  Settings (environment):

* ``EPDO_NATIVE=0``: never build or use the compiled kernels (the pure PyTorch path runs, silently).
* ``CC``: the C compiler (default ``cc``); it must accept GCC-style flags and ``-fopenmp``.
* ``EPDO_CACHE_DIR``: where built libraries are kept (default ``$XDG_CACHE_HOME/epdo`` or ``~/.cache/epdo``).

The kernel's backward takes its two gradients from :data:`GRADIENT_BUFFERS` (see
:class:`epdo.nn.native.buffer_pool.BufferPool`), which keeps up to 256 MiB of their memory between steps;
``GRADIENT_BUFFERS.clear()`` gives it back.

Where no compiler exists or the build fails, :func:`load` returns ``None`` and warns once, naming the reason.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from epdo.atomic import atomic_path
from epdo.nn.native.buffer_pool import BufferPool

SOURCE = Path(__file__).with_name("adaptive_pdo.c")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-fno-math-errno")
LIBRARIES = ("-lm",)  # after the source, where the linker looks for what it needs
SCALAR_TYPES = {torch.float32: "float", torch.float64: "double"}
GRADIENT_BUFFERS = BufferPool()
"""Memory of the adaptive-PDO kernel's input and coefficient gradients, reused from step to step."""


class NativeBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded."""


def enabled() -> bool:
    """False when the environment says ``EPDO_NATIVE=0``."""
    return os.environ.get("EPDO_NATIVE", "1") != "0"


def cache_dir() -> Path:
    if os.environ.get("EPDO_CACHE_DIR"):
        return Path(os.environ["EPDO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "epdo"


def load(dtype: torch.dtype, stencils: torch.Tensor, required: bool = False) -> Optional[ctypes.CDLL]:
    """The adaptive-PDO kernels for ``dtype`` (float32 or float64) and ``stencils`` ``(n_ops, k*k)`` (the values the
    kernel applies, coefficient scale included), built if needed.

    ``None`` if disabled (``EPDO_NATIVE=0``), ``dtype`` is not supported, or the build failed (then with a one-time
    warning); with ``required=True`` each of these raises :class:`NativeBuildError` instead.
    """
    try:
        if not enabled():
            raise NativeBuildError("disabled by EPDO_NATIVE=0")
        if dtype not in SCALAR_TYPES:
            raise NativeBuildError(f"dtype {dtype} is not one of {list(SCALAR_TYPES)}")
        values = stencils.detach().to("cpu", dtype).contiguous()
        return _load(SCALAR_TYPES[dtype], tuple(values.shape), values.numpy().tobytes())
    except NativeBuildError as error:
        if required:
            raise
        if enabled() and dtype in SCALAR_TYPES:
            _warn_once(str(error))
        return None


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"epdo: compiled adaptive-PDO kernel unavailable ({reason}); using the PyTorch path (NeuralePDO about 2x "
        "slower on CPU). Install a C compiler with OpenMP (e.g. apt-get install gcc) or set EPDO_NATIVE=0 to silence.",
        RuntimeWarning,
        stacklevel=4,
    )


@functools.cache
def _load(scalar: str, shape: Tuple[int, ...], values: bytes) -> ctypes.CDLL:
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"no C compiler: {compiler!r} is not on PATH")
    command = [compiler, *FLAGS, f"-DREAL={scalar}", *_stencil_definitions(scalar, shape, values), str(SOURCE)]
    command += LIBRARIES
    library = cache_dir() / "native" / f"adaptive_pdo_{scalar}_{_build_key(command)}.so"
    if not library.exists():
        _build(command, library)
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as error:
        raise NativeBuildError(f"cannot load {library}: {error}") from error
    i64, real = ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p
    lib.epdo_adaptive_pdo_forward.argtypes = [real, real, real, real, i64, ctypes.c_int, ctypes.c_double, ctypes.c_int]
    lib.epdo_adaptive_pdo_backward.argtypes = [
        real, real, real, real, real, real, real, i64, ctypes.c_int, ctypes.c_double, ctypes.c_int
    ]  # fmt: skip
    lib.epdo_adaptive_pdo_forward.restype = lib.epdo_adaptive_pdo_backward.restype = ctypes.c_int
    return lib


def _stencil_definitions(scalar: str, shape: Tuple[int, ...], values: bytes) -> List[str]:
    """``-D`` flags that make the stencil ``(n_ops, k*k)`` a constant of the kernel: its values as exact hexadecimal
    literals and which taps any operator uses."""
    size = int(round(shape[-1] ** 0.5)) if len(shape) == 2 else 0
    if size * size != shape[-1] or size % 2 == 0:
        raise NativeBuildError(f"stencils must have shape (n_ops, k*k) with k odd, got {shape}")
    n_ops = shape[0]
    numbers = np.frombuffer(values, dtype=np.float32 if scalar == "float" else np.float64).reshape(shape)
    literals = ",".join(float(v).hex() for v in numbers.ravel())
    used = ",".join(str(int(flag)) for flag in (numbers != 0).any(axis=0))
    return [f"-DOPS={n_ops}", f"-DSIZE={size}", f"-DSTENCIL_VALUES={{{literals}}}", f"-DTAPS_USED={{{used}}}"]


def _build_key(command: list) -> str:
    """Hash of what the binary depends on: source, command, compiler version and the CPU (``-march=native``)."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(command).encode())
    digest.update(_compiler_version(command[0]).encode())
    digest.update(_cpu_description().encode())
    return digest.hexdigest()[:16]


@functools.cache
def _compiler_version(compiler: str) -> str:
    """``compiler --version``, asked once per process (both scalar types' keys use it)."""
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise NativeBuildError(f"{compiler} --version failed: {error}") from error


def _cpu_description() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _build(command: list, library: Path) -> None:
    """Compile into a temporary file next to ``library`` that then replaces it (:func:`epdo.atomic.atomic_path`):
    concurrent builders never see half a file."""
    try:
        with atomic_path(library) as temporary:
            result = subprocess.run([*command, "-o", str(temporary)], capture_output=True, text=True, timeout=600)
            if result.returncode:
                last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
                raise NativeBuildError(f"'{shlex.join(command)}' failed: {last}")
    except (OSError, subprocess.SubprocessError) as error:
        raise NativeBuildError(f"building {library.name} failed: {error}") from error
