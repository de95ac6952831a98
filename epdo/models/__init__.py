"""Networks: the paper's MNIST-rot models and baselines on the same skeleton."""

from epdo.models.mnist_rot import (
    BASELINES,
    FIELDS,
    FIELDS_BY_FLAG,
    PAPER_WIDTHS,
    EquivariantClassifier,
    ModelConfig,
    PlainCNN,
    build_model,
    config_from_checkpoint,
    count_parameters,
    mnist_rot_model,
    plain_cnn,
)

__all__ = [
    "BASELINES",
    "FIELDS",
    "FIELDS_BY_FLAG",
    "PAPER_WIDTHS",
    "EquivariantClassifier",
    "ModelConfig",
    "PlainCNN",
    "build_model",
    "config_from_checkpoint",
    "count_parameters",
    "mnist_rot_model",
    "plain_cnn",
]
