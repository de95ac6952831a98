"""Networks: the library's default network, the paper's MNIST-rot models (presets) and baselines on one skeleton."""

from epdo.models.mnist_rot import (
    FIELDS,
    LAYERS,
    NONLINEARITIES,
    PAPER_WIDTHS,
    PRESETS,
    EquivariantClassifier,
    ModelConfig,
    PlainCNN,
    build_model,
    count_parameters,
    plain_cnn,
    preset,
)

__all__ = [
    "FIELDS",
    "LAYERS",
    "NONLINEARITIES",
    "PAPER_WIDTHS",
    "PRESETS",
    "EquivariantClassifier",
    "ModelConfig",
    "PlainCNN",
    "build_model",
    "count_parameters",
    "plain_cnn",
    "preset",
]
