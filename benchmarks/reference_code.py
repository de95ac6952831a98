"""The public reference implementation (github.com/YuxuanChen21/Neural_ePDOs) trained side by side with epdo: its
``pdo_mnist.pdo_net`` with fd stencils, imported at run time from a checkout given by ``--repository`` (never copied
here), trained and evaluated with :mod:`epdo.training` exactly as ``epdo-train`` trains its models: the same data,
batches, augmentation, schedule and BatchNorm re-estimation, for each seed.

    git clone https://github.com/YuxuanChen21/Neural_ePDOs /tmp/Neural_ePDOs
    python benchmarks/reference_code.py --repository /tmp/Neural_ePDOs --dataset mnist10k-rot --epochs 15 --seeds 3

The reference imports the ``rbf`` package only for its RBF-FD stencils; with fd stencils a stand-in module that
provides the two names it imports is enough.  Two functions its code calls were removed from torch
(``torch.matrix_rank``, ``torch.qr``); their ``torch.linalg`` successors stand in for them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from epdo.data import load_dataset
from epdo.models import count_parameters
from epdo.training import evaluate, learning_rate, reestimate_batch_norm, train_epoch


def reference_network(repository: Path, group_order: int, widths, g: int, s: int, reduction: int) -> torch.nn.Module:
    """``pdo_net`` of the reference implementation: C_N, regular fields, fd stencils, dropout 0.1."""
    stub = types.ModuleType("rbf")
    stub.pde = types.ModuleType("rbf.pde")
    stub.pde.fd = types.ModuleType("rbf.pde.fd")
    stub.basis = types.ModuleType("rbf.basis")
    stub.pde.fd.weight_matrix = stub.basis.get_rbf = None  # used only for RBF-FD stencils
    sys.modules.update({"rbf": stub, "rbf.pde": stub.pde, "rbf.pde.fd": stub.pde.fd, "rbf.basis": stub.basis})
    torch.matrix_rank = torch.linalg.matrix_rank
    torch.qr = lambda a, some=True: torch.linalg.qr(a, "reduced" if some else "complete")
    sys.path.insert(0, str(repository))
    from pdo_mnist import pdo_net  # noqa: PLC0415 - the reference's module, found at run time

    return pdo_net(group_order, False, dis="fd", channel=list(widths), g=g, reduction_ratio=reduction, s=s)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True, help="a checkout of YuxuanChen21/Neural_ePDOs")
    parser.add_argument("--dataset", default="mnist10k-rot")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--group-order", type=int, default=8)
    parser.add_argument("--widths", default="14,14,21,21,28,28")
    parser.add_argument("--g", type=int, default=1)
    parser.add_argument("--s", type=int, default=1)
    parser.add_argument("--reduction", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="append each seed's result here (JSON lines)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    for seed in (int(s) for s in args.seeds.split(",")):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # epdo-train's seeding, before the data and the model
        train, test = load_dataset(args.dataset, seed=seed)
        train, test = train.limit(args.limit_train), test.limit(args.limit_test)
        start = time.perf_counter()
        model = reference_network(args.repository, args.group_order, widths, args.g, args.s, args.reduction)
        built = time.perf_counter() - start
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate(0), weight_decay=1e-4)
        seconds = []
        for epoch in range(args.epochs):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(epoch)
            tic = time.perf_counter()
            train_epoch(model, optimizer, train, batch_size=64, seed=seed * 100003 + epoch)
            batch_norm_seed = seed * 100003 + epoch * 104729 + 1  # epdo-train's
            reestimate_batch_norm(model, train.images, batches=30, batch_size=64, seed=batch_norm_seed)
            _, error = evaluate(model, test)
            seconds.append(time.perf_counter() - tic)
            print(f"seed {seed} epoch {epoch + 1}: test error {100 * error:.2f}% ({seconds[-1]:.0f} s)", flush=True)
        result = dict(model="reference code", seed=seed, params=count_parameters(model), final_error=100 * error,
                      seconds_per_epoch=float(np.mean(seconds)), build_seconds=built)  # fmt: skip
        print(json.dumps(result), flush=True)
        if args.out:
            with args.out.open("a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
