"""The classifier head of every network on the skeleton, and networks with heads in plain PyTorch."""

from __future__ import annotations

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


class _Classifier(torch.nn.Module):
    """``classifier(max over pixels of body(x))``, on plain tensors."""

    def __init__(self, body: torch.nn.Module, classifier: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.classifier = body, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.amax(self.body(x), dim=(2, 3)))


def plain_classifier(body: torch.nn.Module, classifier: torch.nn.Module, backend: str) -> torch.nn.Module:
    """``classifier(max over pixels of body(x))`` from the plain-PyTorch forms of both (untraced)."""
    like = next(body.parameters()).detach().new_empty(0)
    return _Classifier(exported_layers(body, backend, like), exported_layers(classifier, backend, like))


def exported_classifier(body: torch.nn.Module, classifier: torch.nn.Module, backend: str) -> torch.fx.GraphModule:
    return trace(plain_classifier(body, classifier, backend))
