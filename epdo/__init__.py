"""epdo: rotation/reflection-equivariant, spatially adaptive PDO layers (Neural ePDOs) on escnn."""

__version__ = "0.1.0"
