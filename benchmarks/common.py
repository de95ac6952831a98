"""Timing and peak-memory helpers shared by the benchmarks (one process, medians, ratios to a same-run baseline)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], None], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``step()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak of live tensor memory allocated during one ``step()`` (CUDA: the allocator's peak; CPU: the maximum
    running sum of the profiler's allocation and free events)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak


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


def record(title: str, command: str, device: torch.device, table: str) -> None:
    """Append a dated section to benchmarks/RESULTS.md."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with RESULTS.open("a") as f:
        f.write(f"\n## {title} ({stamp}, commit {commit})\n\n")
        f.write(f"Command: `{command}`  \nMachine: {machine_description(device)}\n\n{table}\n")


def markdown_table(rows: Dict[str, Dict[str, str]]) -> str:
    columns = list(next(iter(rows.values())))
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(row[c] for c in columns) + " |" for name, row in rows.items()]
    return "\n".join(lines)
