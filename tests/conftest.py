import os

import numpy as np
import pytest
import torch
from escnn import group, gspaces

from epdo.equivariance import grid_elements

TOL = 1e-5


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs ``-n auto``) each worker gets its share of the cores, it and the processes
    it starts (notebook kernels, fresh-process tests): two workers with two threads each on two cores spend their time
    waiting on each other's OpenMP threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, torch.get_num_threads() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def space(name: str):
    """'C4' -> rot2dOnR2(4), 'D8' -> flipRot2dOnR2(8)."""
    n = int(name[1:])
    return gspaces.flipRot2dOnR2(n) if name[0] == "D" else gspaces.rot2dOnR2(n)


def quotient(gs, n: int = 2):
    """The quotient representation by the rotation subgroup of order n (D_N: by the rotations of order n)."""
    return gs.quotient_repr((None, n)) if gs.flips_order > 0 else gs.quotient_repr(n)


def regular_plus_quotient(gs):
    return group.directsum([gs.regular_repr, quotient(gs)])


def off_grid(gs):
    """Rotations by 45 and 22.5 degrees, where the group has them."""
    return [e for e in gs.fibergroup.elements if e not in grid_elements(gs)][:3]


def high_frequency_share(filters: np.ndarray) -> float:
    """Share of the filters' power at frequencies above 0.3 cycles per pixel (16 x 16 spectra)."""
    power = np.abs(np.fft.fft2(filters, s=(16, 16))) ** 2
    f = np.fft.fftfreq(16)
    high = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2) > 0.3
    return float(power[..., high].sum() / power.sum())
