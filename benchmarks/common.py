"""Timing and peak-memory helpers shared by the benchmarks (one process, medians, ratios to a same-run baseline)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from epdo.plots import save_figure

LOG = Path(__file__).with_name("LOG.md")
"""Where benchmarks record their runs (dated sections, appended); benchmarks/RESULTS.md summarizes them."""


def training_step(
    network: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    """One training step of ``network`` on the batch ``(x, y)`` (cross-entropy, backward, ``optimizer.step()``), as a
    closure for the timers."""

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(network(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], None], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``step()`` over ``repeats`` runs after ``warmup`` runs."""
    return interleaved_median_seconds({"step": step}, device, repeats, warmup)["step"]


def interleaved_median_seconds(
    steps: Dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int = 2
) -> Dict[str, float]:
    """Median wall time of each step over ``repeats`` rounds, every round running each step once in turn.

    On a shared host whose speed drifts over seconds, alternating the steps gives every one the same share of slow
    and fast moments, so their ratios are comparable (timing one step ``repeats`` times, then the next, is not).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    synchronize(device)
    times: Dict[str, List[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak memory of one ``step()`` above what was allocated before it.

    CUDA: the caching allocator's peak.  CPU: the growth of the process's peak resident set (``VmHWM``, reset first)
    over its resident set before the step (``VmRSS``); call it in a fresh process after a
    small warm-up step (see ``--memory-only`` in the benchmarks), so that neither kept heap nor lazily loaded code
    counts.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    _reset_peak_resident_set()
    before = _status_kib("VmRSS")
    step()
    return max(0, _status_kib("VmHWM") - before) * 1024


def peak_bytes_in_fresh_process(script: str, argv: Optional[List[str]], memory_only: str) -> int:
    """CPU peak memory of one model's step, measured by ``script`` rerun in a fresh process (glibc defaults, nothing
    allocated before) with this run's arguments, ``--record`` dropped, and ``--memory-only memory_only``; the script
    prints :func:`peak_bytes` as its last line."""
    given = [a for a in (sys.argv[1:] if argv is None else list(argv)) if a != "--record"]
    out = subprocess.run(
        [sys.executable, script, *given, "--memory-only", memory_only], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def _reset_peak_resident_set() -> None:
    """Sets ``VmHWM`` to the current resident set (Linux >= 4.0), so that a peak reached before the step (building
    the models, escnn's basis construction) does not count as the step's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as error:
        raise RuntimeError(f"cannot reset the peak resident set via /proc/self/clear_refs: {error}") from error


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores ({cpu}), {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def record(title: str, command: str, device: torch.device, table: str, machine: Optional[str] = None) -> None:
    """Append a dated section to benchmarks/LOG.md."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with LOG.open("a") as f:
        f.write(f"\n## {title} ({stamp}, commit {commit})\n\n")
        f.write(f"Command: `{command}`  \nMachine: {machine or machine_description(device)}\n\n{table}\n")


def report_table(rows: Dict[str, Dict[str, str]], title: str, script: str, argv, log: bool, note: str = "") -> None:
    """Print ``rows`` as a table and, with ``log``, record it (and ``note`` after it) in benchmarks/LOG.md under
    ``title`` with the command line (the ``script`` file, ``argv`` or the process's)."""
    table = markdown_table(rows)
    print(table)
    if log:
        command = f"python benchmarks/{Path(script).name} " + " ".join(sys.argv[1:] if argv is None else argv)
        record(title, command, torch.device("cpu"), table + note)


def report_figure(fig, plot: Path, rows: Dict[str, Dict[str, str]], title: str, script: str, argv, log: bool) -> None:
    """Save a benchmark's matplotlib figure to ``plot`` and report ``rows`` (:func:`report_table`), the plot named."""
    save_figure(fig, plot)
    shown = plot.resolve()
    if shown.is_relative_to(LOG.parent.parent):
        shown = shown.relative_to(LOG.parent.parent)
    report_table(rows, title, script, argv, log, note=f"\n\nPlot: `{shown}`.")


def markdown_table(rows: Dict[str, Dict[str, str]]) -> str:
    columns = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(row[c] for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines)
