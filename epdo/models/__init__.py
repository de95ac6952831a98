"""Networks: the library's default network, the paper's MNIST-rot models (presets) and baselines on one skeleton."""

from epdo.models.baselines import PlainCNN, plain_cnn
from epdo.models.config import FIELDS, LAYERS, NONLINEARITIES, SKELETONS, ModelConfig
from epdo.models.presets import PAPER_WIDTHS, PRESETS, preset
from epdo.models.skeleton import EquivariantClassifier, build_model, count_parameters
from epdo.models.wide_resnet import RESNET_LAYERS, wide_resnet

__all__ = [
    "FIELDS",
    "LAYERS",
    "NONLINEARITIES",
    "PAPER_WIDTHS",
    "PRESETS",
    "EquivariantClassifier",
    "ModelConfig",
    "PlainCNN",
    "RESNET_LAYERS",
    "SKELETONS",
    "build_model",
    "count_parameters",
    "plain_cnn",
    "preset",
    "wide_resnet",
]
