"""Trainer for dense, static, SET, RigL and SRigL networks with Sparse-IFT:
:func:`train` with a :class:`TrainConfig`, or ``python -m tritonsparse.train``."""
from .data import DATASETS, Dataset, load_dataset, make_synthetic
from .trainer import METHODS, TrainConfig, TrainResult, evaluate, train

__all__ = ["DATASETS", "Dataset", "METHODS", "TrainConfig", "TrainResult", "evaluate", "load_dataset",
           "make_synthetic", "train"]
