"""Datasets (MNIST-rot, rotated MNIST digits, rotated Fashion-MNIST, synthetic) and rotation of images."""

from epdo.data.augment import random_rotation, rotate_batch, rotate_resampled
from epdo.data.datasets import (
    DATASETS,
    DataCacheWarning,
    DatasetError,
    ImageSet,
    default_data_dir,
    load_dataset,
    load_fashion_rot,
    load_mnist10k_rot,
    load_mnist_rot,
    parse_amat,
    synthetic,
)

__all__ = [
    "DATASETS",
    "DataCacheWarning",
    "DatasetError",
    "ImageSet",
    "default_data_dir",
    "load_dataset",
    "load_fashion_rot",
    "load_mnist10k_rot",
    "load_mnist_rot",
    "parse_amat",
    "random_rotation",
    "rotate_batch",
    "rotate_resampled",
    "synthetic",
]
