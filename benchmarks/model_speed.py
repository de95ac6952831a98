"""Training-step time (forward + backward + Adam step) and peak memory of whole models, and images/second of the
demo configuration's full epoch, against the static-PDO, escnn and plain-CNN baselines measured in the same run
(in interleaved rounds: every model runs one step per round).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from common import (
    add_allocator_argument,
    interleaved_median_seconds,
    markdown_table,
    peak_bytes,
    peak_bytes_in_fresh_process,
    record,
    run_per_allocator,
)

from epdo.models import count_parameters, mnist_rot_model

PAPER = {
    "R (C16, fd)": dict(fields="regular", discretization="fd", g=4, s=4, reduction=1),
    "Q (C16, gauss)": dict(fields="quotient", discretization="gauss", g=4, s=1, reduction=2),
    "D16|5C16 (gauss)": dict(fields="regular", discretization="gauss", flip=True, g=4, s=1, reduction=1),
    "pdo baseline": dict(fields="regular", discretization="fd", baseline="pdo"),
    "escnn baseline": dict(fields="regular", baseline="escnn"),
    "cnn baseline": dict(fields="regular", baseline="cnn"),
}
DEMO = dict(group_order=8, widths=(8, 8, 8, 8, 8, 8), g=2, s=1)
SMALL_WIDTHS = dict(group_order=8, widths=(8, 8, 12, 12, 16, 16), g=2, s=1)  # issue 9's small network
SMALL = {
    "R (C8, fd)": dict(fields="regular", discretization="fd", **SMALL_WIDTHS),
    "pdo baseline": dict(fields="regular", discretization="fd", baseline="pdo", **SMALL_WIDTHS),
    "escnn baseline": dict(fields="regular", baseline="escnn", **SMALL_WIDTHS),
    "cnn baseline": dict(fields="regular", baseline="cnn", **SMALL_WIDTHS),
}


def training_step(model: torch.nn.Module, device: torch.device, batch: int):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="paper,small", help="paper, small or both")
    parser.add_argument("--epoch-images", type=int, default=3000, help="images of the demo epoch timing (0: skip)")
    parser.add_argument("--record", action="store_true")
    add_allocator_argument(parser)
    parser.add_argument("--memory-only", default=None, help=argparse.SUPPRESS)  # internal: "size:name"
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 8)
    configs = {"paper": PAPER, "small": SMALL}
    if args.memory_only is not None:  # fresh process, glibc defaults, after a batch-1 warm-up step
        size, name = args.memory_only.split(":", 1)
        model = mnist_rot_model(**configs[size][name]).to(device).train()
        training_step(model, device, 2)()
        print(peak_bytes(training_step(model, device, batch), device))
        return
    if run_per_allocator(args, __file__, argv):
        return
    torch.manual_seed(0)
    rows = {}
    for size in args.sizes.split(","):
        models, builds = {}, {}
        for name, kwargs in configs[size].items():
            start = time.perf_counter()
            models[name] = mnist_rot_model(**kwargs).to(device).train()
            builds[name] = time.perf_counter() - start
        steps = {name: training_step(model, device, batch) for name, model in models.items()}
        seconds = interleaved_median_seconds(steps, device, args.repeats, warmup=1)
        for name, model in models.items():
            if device.type == "cuda":
                memory = peak_bytes(training_step(model, device, batch), device)
            else:
                memory = peak_bytes_in_fresh_process(__file__, argv, f"{size}:{name}")
            rows[f"{name} [{size}]"] = dict(
                params=f"{count_parameters(model):,}",
                build_s=f"{builds[name]:.1f}",
                step_ms=f"{seconds[name] * 1e3:.0f}",
                images_per_s=f"{batch / seconds[name]:.1f}",
                peak_MiB=f"{memory / 2**20:.0f}",
            )
            print(f"{name:>18} [{size}]: {rows[f'{name} [{size}]']}", flush=True)
    for size in args.sizes.split(","):  # ratios to the escnn baseline of the same size
        reference = rows.get(f"escnn baseline [{size}]")
        for key, row in rows.items():
            if reference and key.endswith(f"[{size}]"):
                row["step / escnn"] = f"{float(row['step_ms']) / float(reference['step_ms']):.2f}"
    epoch = ""
    if args.epoch_images:
        model = mnist_rot_model(fields="regular", discretization="fd", **DEMO).to(device).train()
        step = training_step(model, device, 64)
        step()
        start = time.perf_counter()
        for _ in range(args.epoch_images // 64):
            step()
        rate = (args.epoch_images // 64) * 64 / (time.perf_counter() - start)
        epoch = f"Demo configuration (C8, widths 8x6, g=2, s=1), batch 64, {args.epoch_images} images: {rate:.1f} img/s"
        print(epoch)
    if args.record:
        command = "python benchmarks/model_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
        title = f"Model training step, batch {batch}, {device.type}, allocator {args.allocator}"
        title += f", median of {args.repeats} interleaved rounds"
        record(title, command, device, markdown_table(rows) + ("\n\n" + epoch if epoch else ""))


if __name__ == "__main__":
    main()
