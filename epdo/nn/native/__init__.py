"""Compiled CPU kernels: C sources built with the system's C compiler (OpenMP) at first use and cached on disk.

The first call in a fresh cache compiles ``adaptive_pdo.c`` once per scalar type (float32, float64) and stencil set
(the stencil is a compile-time constant of the kernel), 1-3 seconds each, and ``max_pool.c`` and ``field_maps.c``
once per scalar type;
later processes load the cached shared libraries.  Settings (environment):

* ``EPDO_NATIVE=0``: never build or use the compiled kernels (the pure PyTorch path runs, silently).
* ``CC``: the C compiler (default ``cc``); it must accept GCC-style flags and ``-fopenmp``.
* ``EPDO_CACHE_DIR``: where built libraries are kept (default ``$XDG_CACHE_HOME/epdo`` or ``~/.cache/epdo``).

The adaptive-PDO kernel's gradients and the field maps' outputs and gradients take their memory from
:data:`OUTPUT_BUFFERS` (see :class:`epdo.nn.native.buffer_pool.BufferPool`), which keeps up to 512 MiB of it between
steps; ``OUTPUT_BUFFERS.clear()`` gives it back.

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
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from epdo.atomic import atomic_path
from epdo.nn.native.buffer_pool import BufferPool

ADAPTIVE_PDO_SOURCE = Path(__file__).with_name("adaptive_pdo.c")
MAX_POOL_SOURCE = Path(__file__).with_name("max_pool.c")
FIELD_MAPS_SOURCE = Path(__file__).with_name("field_maps.c")
HEADERS = (Path(__file__).with_name("vectors.h"),)
"""The headers the sources include, part of every build key."""
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=gnu11", "-fno-math-errno")
LIBRARIES = ("-lm",)  # after the source, where the linker looks for what it needs
SCALAR_TYPES = {torch.float32: "float", torch.float64: "double"}
GRAIN_SIZE = 32768
"""A kernel call on fewer values than this runs on one thread, as ATen's ops do below their grain size.  On small
inputs waking the other threads costs more than the work, most of all on a busy machine."""
OUTPUT_BUFFERS = BufferPool(max_free_bytes=512 * 2**20)
"""Memory of the compiled kernels' large outputs (the adaptive-PDO kernel's input and coefficient gradients, the field
maps' outputs and input gradients), reused from step to step."""


class NativeBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded."""


def enabled() -> bool:
    """False when the environment says ``EPDO_NATIVE=0``."""
    return os.environ.get("EPDO_NATIVE", "1") != "0"


def threads_for(values: torch.Tensor) -> int:
    """The threads a kernel call on ``values`` (the coefficients, or the input) runs on: torch's count, or one below
    :data:`GRAIN_SIZE` values."""
    return torch.get_num_threads() if values.numel() >= GRAIN_SIZE else 1


def serves(device: torch.device, dtype: torch.dtype, load: Callable[[torch.dtype], Optional[ctypes.CDLL]]) -> bool:
    """Whether the compiled kernels that ``load`` (:func:`load_max_pool`, :func:`load_field_maps`) builds run for
    tensors of ``device`` and ``dtype``: CPU float32/float64 tensors, where the kernels build (under
    ``torch.compile``, where they are enabled: the operator builds its kernel when the graph first runs)."""
    if device.type != "cpu" or dtype not in SCALAR_TYPES:
        return False
    if torch.compiler.is_compiling():
        return enabled()
    return load(dtype) is not None


def exported_native(
    backend: str, like: torch.Tensor, load: Callable[[torch.dtype], Optional[ctypes.CDLL]], kernel: str
) -> bool:
    """Whether a module exported with ``backend`` (``"auto"``, ``"native"``, ``"pytorch"``) for tensors like ``like``
    calls the compiled kernels of ``load``: never with ``"pytorch"``, otherwise where they serve ``like``
    (:func:`serves`); ``RuntimeError`` naming ``kernel`` where ``"native"`` asks for kernels that do not."""
    native = backend != "pytorch" and serves(like.device, like.dtype, load)
    if backend == "native" and not native:
        raise RuntimeError(f"{kernel} does not serve {like.dtype} on {like.device}")
    return native


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

    def build(scalar: str) -> ctypes.CDLL:
        values = stencils.detach().to("cpu", dtype).contiguous()
        return _adaptive_pdo_library(scalar, tuple(values.shape), values.numpy().tobytes())

    return _load_or_none(dtype, build, required)


def load_max_pool(dtype: torch.dtype, required: bool = False) -> Optional[ctypes.CDLL]:
    """The 2x2 max-pooling kernels for ``dtype`` (float32 or float64), built if needed; ``None`` or
    :class:`NativeBuildError` as :func:`load`."""
    return _load_or_none(dtype, _max_pool_library, required)


def load_field_maps(dtype: torch.dtype, required: bool = False) -> Optional[ctypes.CDLL]:
    """The per-field linear map and fused Fourier ReLU kernels for ``dtype`` (float32 or float64), built if needed;
    ``None`` or :class:`NativeBuildError` as :func:`load`."""
    return _load_or_none(dtype, _field_maps_library, required)


def _load_or_none(dtype: torch.dtype, build: Callable[[str], ctypes.CDLL], required: bool) -> Optional[ctypes.CDLL]:
    """``build(scalar)`` for ``dtype``'s C type; ``None`` with a one-time warning where that fails (as :func:`load`)."""
    try:
        if not enabled():
            raise NativeBuildError("disabled by EPDO_NATIVE=0")
        if dtype not in SCALAR_TYPES:
            raise NativeBuildError(f"dtype {dtype} is not one of {list(SCALAR_TYPES)}")
        return build(SCALAR_TYPES[dtype])
    except NativeBuildError as error:
        if required:
            raise
        if enabled() and dtype in SCALAR_TYPES:
            _warn_once(str(error))
        return None


@functools.cache
def _warn_once(reason: str) -> None:
    warnings.warn(
        f"epdo: compiled CPU kernels unavailable ({reason}); using PyTorch's operations (NeuralePDO about 2x slower "
        "on CPU). Install a C compiler with OpenMP (e.g. apt-get install gcc) or set EPDO_NATIVE=0 to silence.",
        RuntimeWarning,
        stacklevel=5,
    )


@functools.cache
def _adaptive_pdo_library(scalar: str, shape: Tuple[int, ...], values: bytes) -> ctypes.CDLL:
    lib = _compiled(ADAPTIVE_PDO_SOURCE, scalar, _stencil_definitions(scalar, shape, values))
    i64, real = ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p
    lib.epdo_adaptive_pdo_forward.argtypes = [real, real, real, real, i64, ctypes.c_int, ctypes.c_double, ctypes.c_int]
    lib.epdo_adaptive_pdo_backward.argtypes = [
        real, real, real, real, real, real, real, i64, ctypes.c_int, ctypes.c_double, ctypes.c_int
    ]  # fmt: skip
    lib.epdo_adaptive_pdo_forward.restype = lib.epdo_adaptive_pdo_backward.restype = ctypes.c_int
    return lib


@functools.cache
def _max_pool_library(scalar: str) -> ctypes.CDLL:
    lib = _compiled(MAX_POOL_SOURCE, scalar, [])
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    for function in (lib.epdo_max_pool2x2_forward, lib.epdo_max_pool2x2_backward):
        function.argtypes = [pointer, pointer, pointer, i64, i64, i64, ctypes.c_int]
        function.restype = None
    return lib


@functools.cache
def _field_maps_library(scalar: str) -> ctypes.CDLL:
    lib = _compiled(FIELD_MAPS_SOURCE, scalar, [])
    pointer, i64, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.epdo_field_linear.argtypes = [pointer] * 3 + [i64] * 4 + [threads]  # planes, d, e, pixels
    sizes = [i64] * 5 + [threads]  # planes, d, samples, e, pixels
    lib.epdo_fourier_relu_forward.argtypes = [pointer] * 4 + sizes
    lib.epdo_fourier_relu_backward.argtypes = [pointer] * 5 + sizes
    for function in (lib.epdo_field_linear, lib.epdo_fourier_relu_forward, lib.epdo_fourier_relu_backward):
        function.restype = None
    return lib


def _compiled(source: Path, scalar: str, definitions: List[str]) -> ctypes.CDLL:
    """``source`` compiled with ``-DREAL=scalar`` and ``definitions``, from the cache or built into it, loaded."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise NativeBuildError(f"no C compiler: {compiler!r} is not on PATH")
    command = [compiler, *FLAGS, f"-DREAL={scalar}", *definitions, str(source), *LIBRARIES]
    library = cache_dir() / "native" / f"{source.stem}_{scalar}_{_build_key(source, command)}.so"
    if not library.exists():
        _build(command, library)
    try:
        return ctypes.CDLL(str(library))
    except OSError as error:
        raise NativeBuildError(f"cannot load {library}: {error}") from error


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


def _build_key(source: Path, command: list) -> str:
    """Hash of what the binary depends on: source, headers, command (the source by its name: the same library for a
    copy of the package elsewhere), compiler version and the CPU (``-march=native``)."""
    digest = hashlib.sha256(source.read_bytes())
    for header in HEADERS:
        digest.update(header.read_bytes())
    digest.update(" ".join(source.name if part == str(source) else part for part in command).encode())
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
