"""A non-equivariant baseline on the skeleton: a plain CNN at a given parameter count."""

from __future__ import annotations

from typing import List, Sequence

import torch

from epdo.models.classifier import classifier_head, exported_classifier


class PlainCNN(torch.nn.Module):
    """The same skeleton with ``Conv2d`` 5x5 layers (no equivariance), channel widths ``channels``, a classifier of
    ``head`` hidden units."""

    def __init__(self, channels: Sequence[int], dropout: float = 0.1, head: int = 64) -> None:
        super().__init__()
        layers: List[torch.nn.Module] = []
        previous = 1
        for index, width in enumerate(channels):
            layers += [
                torch.nn.Conv2d(previous, width, 5, padding=2, bias=False),
                torch.nn.BatchNorm2d(width),
                torch.nn.ReLU(inplace=True),
            ]
            if index in (1, 3):
                layers.append(torch.nn.MaxPool2d(2))
            if index >= 2 and dropout > 0:
                layers.append(torch.nn.Dropout2d(dropout))
            previous = width
        self.body = torch.nn.Sequential(*layers)
        self.classifier = classifier_head(previous, head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.body(x), dim=(2, 3)))

    def export(self, backend: str = "auto") -> torch.fx.GraphModule:
        """The same eval-mode logits in plain PyTorch, batch norms folded, traced by ``torch.fx``."""
        return exported_classifier(self.body, self.classifier, backend)


def plain_cnn(
    target_params: int, dropout: float = 0.1, base: Sequence[int] = (16, 24, 32, 32, 48, 64), head: int = 64
) -> PlainCNN:
    """A :class:`PlainCNN` with widths ``round(k * base)`` and a classifier of ``head`` hidden units, ``k`` chosen so
    the parameter count is closest to ``target_params``."""

    def widths(k: float) -> List[int]:
        return [max(1, round(k * b)) for b in base]

    def count(channels: Sequence[int]) -> int:
        convs = sum(25 * c_in * c_out + 2 * c_out for c_in, c_out in zip([1, *channels[:-1]], channels))
        c = channels[-1]
        return convs + (c * 10 + 10 if head == 0 else (c + 1) * head + 2 * head + (head + 1) * 10)

    best = min((abs(count(widths(k / 200)) - target_params), k / 200) for k in range(10, 2000))[1]
    return PlainCNN(widths(best), dropout, head)
