"""``torch.compile(fullgraph=True)`` of a whole network against eager mode: compile time, training-step time of both
(interleaved rounds), and the largest difference of their outputs.  On CPU the compiled adaptive-PDO kernel is an
operator inductor calls; on CUDA the layers run their PyTorch path, which inductor turns into Triton kernels.

    python benchmarks/compile_check.py --device cpu --record
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from common import interleaved_median_seconds, markdown_table, record, training_step

from epdo.models import PRESETS, build_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="default", choices=list(PRESETS))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(replace(PRESETS[args.preset], dropout=0.0)).to(device)  # no dropout: the same function
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    compiled = torch.compile(model, fullgraph=True)
    start = time.perf_counter()
    with torch.no_grad():
        difference = float((compiled(x) - model(x)).abs().max())
    F.cross_entropy(compiled(x), y).backward()  # compiles the training graph too
    compile_seconds = time.perf_counter() - start
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    seconds = interleaved_median_seconds(
        {"eager": training_step(model, optimizer, x, y), "compiled": training_step(compiled, optimizer, x, y)},
        device,
        args.repeats,
    )
    rows = {
        name: {"step (ms)": f"{t * 1e3:.1f}", "time / eager": f"{t / seconds['eager']:.3f}"}
        for name, t in seconds.items()
    }
    summary = f"compile {compile_seconds:.0f} s; largest output difference (train mode) {difference:.1e}"
    print(markdown_table(rows))
    print(summary)
    if args.record:
        command = "python benchmarks/compile_check.py " + " ".join(sys.argv[1:] if argv is None else argv)
        title = f"torch.compile of the {args.preset} network, batch {args.batch}, {device.type}"
        record(title, command, device, markdown_table(rows) + "\n\n" + summary)


if __name__ == "__main__":
    main()
