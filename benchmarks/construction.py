"""Model construction time in a fresh process: importing epdo (escnn, torch) and building each preset (every basis
solved in float64 from the group's matrices; nothing is cached on disk): wall-clock, and the process's CPU time, which
other processes on a busy machine do not inflate.

    python benchmarks/construction.py --record
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

import torch
from common import markdown_table, record

from epdo.models import PRESETS

SCRIPT = """
import time
start = time.perf_counter()
from epdo.models import build_model, count_parameters
imported, cpu = time.perf_counter(), time.process_time()
model = build_model({name!r})
print(imported - start, time.perf_counter() - imported, time.process_time() - cpu, count_parameters(model))
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per preset (median)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    rows = {}
    for name in PRESETS:
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run([sys.executable, "-c", SCRIPT.format(name=name)], capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(out.stderr)
            runs.append([float(v) for v in out.stdout.split()])
        rows[name] = {
            "parameters": f"{int(runs[0][3]):,}",
            "import epdo (s)": f"{statistics.median(r[0] for r in runs):.1f}",
            "build (s)": f"{statistics.median(r[1] for r in runs):.2f}",
            "build, slowest of the runs (s)": f"{max(r[1] for r in runs):.2f}",
            "build, CPU time (s)": f"{statistics.median(r[2] for r in runs):.2f}",
        }
        print(f"{name:>16}: {rows[name]}", flush=True)
    if args.record:
        command = "python benchmarks/construction.py " + " ".join(sys.argv[1:] if argv is None else argv)
        title = f"Construction in a fresh process, median of {args.repeats}"
        record(title, command, torch.device("cpu"), markdown_table(rows))


if __name__ == "__main__":
    main()
