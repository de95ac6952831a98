"""Figures of a training run: learning curves and test error against the rotation of the test images (PNG, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(rows: Sequence[Dict[str, float]], path: Path) -> None:
    """Loss and error per epoch, training and test (``rows`` as in ``metrics.csv``), into ``path``."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, style in (("train", "-"), ("test", "--")):
        axes[0].plot(epochs, [r[f"{key}_loss"] for r in rows], style, label=key)
        axes[1].plot(epochs, [100 * r[f"{key}_error"] for r in rows], style, label=key)
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    axes[1].set(xlabel="epoch", ylabel="error (%)", title="error")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def rotation_errors_figure(curves: Dict[str, List[Tuple[float, float]]], size: Tuple[float, float] = (6, 3.5)):
    """``(figure, axes)``: test error (%) against the rotation angle of the test images, one line per entry of
    ``curves`` (a label -> ``results`` of :func:`epdo.training.rotation_errors`)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=size)
    for label, results in curves.items():
        ax.plot([a for a, _ in results], [100 * e for _, e in results], "o-", label=label)
    ax.set(xlabel="rotation of the test images (degrees)", ylabel="test error (%)")
    ax.grid(alpha=0.3)
    return fig, ax


def plot_rotation_errors(results: List[Tuple[float, float]], path: Path) -> None:
    """Test error (%) against the rotation angle of the test images (``results`` of
    :func:`epdo.training.rotation_errors`), into ``path``."""
    fig, _ = rotation_errors_figure({"": results})
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Lay out ``fig``, write it to ``path`` (PNG, 100 dpi) and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
