"""The classifier head of every network on the skeleton, and networks with heads in plain PyTorch."""

from __future__ import annotations

from typing import Optional

import torch

from epdo.nn.export import exported_layers, trace


def classifier_head(channels: int, hidden: int = 64, classes: int = 10) -> torch.nn.Module:
    """``Linear -> BatchNorm1d -> ReLU -> Linear`` through ``hidden`` units, or one ``Linear`` when ``hidden`` is 0."""
    if hidden == 0:
        return torch.nn.Sequential(torch.nn.Linear(channels, classes))
    return torch.nn.Sequential(
        torch.nn.Linear(channels, hidden),
        torch.nn.BatchNorm1d(hidden),
        torch.nn.ReLU(inplace=True),
        torch.nn.Linear(hidden, classes),
    )


def padded_images(x: torch.Tensor, input_size: Optional[int]) -> torch.Tensor:
    """Images ``(B, 1, H, W)`` zero-padded at the bottom and right to ``input_size`` pixels a side (``None``: as
    they are)."""
    if input_size is None:
        return x
    return torch.nn.functional.pad(x, (0, input_size - x.shape[3], 0, input_size - x.shape[2]))


class _Classifier(torch.nn.Module):
    """``classifier(max over pixels of body(x))``, on plain tensors (padded as :func:`padded_images` says)."""

    def __init__(self, body: torch.nn.Module, classifier: torch.nn.Module, input_size: Optional[int]) -> None:
        super().__init__()
        self.body, self.classifier, self.input_size = body, classifier, input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.body(padded_images(x, self.input_size)), dim=(2, 3)))


def plain_classifier(
    body: torch.nn.Module, classifier: torch.nn.Module, backend: str, input_size: Optional[int] = None
) -> torch.nn.Module:
    """``classifier(max over pixels of body(x))`` from the plain-PyTorch forms of both (untraced)."""
    like = next(body.parameters()).detach().new_empty(0)
    return _Classifier(exported_layers(body, backend, like), exported_layers(classifier, backend, like), input_size)


def exported_classifier(
    body: torch.nn.Module, classifier: torch.nn.Module, backend: str, input_size: Optional[int] = None
) -> torch.fx.GraphModule:
    return trace(plain_classifier(body, classifier, backend, input_size))
