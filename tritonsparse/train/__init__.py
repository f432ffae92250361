"""Trainer for dense, static, SET, RigL and SRigL networks with Sparse-IFT:
:func:`train` with a :class:`TrainConfig`, or ``python -m tritonsparse.train``."""
from ._io import CheckpointError
from .data import DATASETS, Dataset, load_dataset, make_synthetic
from .trainer import METHODS, DivergenceError, TrainConfig, TrainResult, evaluate, train

__all__ = ["CheckpointError", "DATASETS", "Dataset", "DivergenceError", "METHODS", "TrainConfig", "TrainResult",
           "evaluate", "load_dataset", "make_synthetic", "train"]
