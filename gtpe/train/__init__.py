"""Training: experiment configs, the training loop, checkpoints, torchrun support, benchmarks,
and finished runs read back (:func:`load_run`, :func:`evaluate_run`).

>>> from gtpe.train import load_config, train
>>> config = load_config('configs/zinc/gps+rwse.yaml', {'train.epochs': 3})
>>> results = train(config, 'runs/demo')          # doctest: +SKIP
>>> model, config, info = load_run('runs/demo')    # doctest: +SKIP
"""
from __future__ import annotations

import importlib

__all__ = [
    'CheckpointError',
    'ConfigError',
    'DatasetConfig',
    'ExperimentConfig',
    'RunInfo',
    'TrainConfig',
    'TrainingDiverged',
    'evaluate_run',
    'load_config',
    'load_run',
    'run_bench',
    'train',
]

_WHERE = {
    'CheckpointError': 'gtpe.train.checkpoint',
    'ConfigError': 'gtpe.train._dataclass_io',
    'RunInfo': 'gtpe.train.run',
    'TrainingDiverged': 'gtpe.train.loop',
    'evaluate_run': 'gtpe.train.run',
    'load_run': 'gtpe.train.run',
    'DatasetConfig': 'gtpe.train.config',
    'TrainConfig': 'gtpe.train.config',
    'ExperimentConfig': 'gtpe.train.config',
    'load_config': 'gtpe.train.config',
    'train': 'gtpe.train.loop',
    'run_bench': 'gtpe.train.bench',
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'gtpe.train' has no attribute {name!r}")
