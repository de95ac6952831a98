"""Networks: the paper's MNIST-rot models and baselines on the same skeleton."""

from epdo.models.mnist_rot import (
    BASELINES,
    MODELS,
    PAPER_WIDTHS,
    EquivariantClassifier,
    PlainCNN,
    count_parameters,
    mnist_rot_model,
    plain_cnn,
)

__all__ = [
    "BASELINES",
    "MODELS",
    "PAPER_WIDTHS",
    "EquivariantClassifier",
    "PlainCNN",
    "count_parameters",
    "mnist_rot_model",
    "plain_cnn",
]
