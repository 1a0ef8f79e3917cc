"""A finished (or interrupted) training run, read back: :func:`load_run` and :func:`evaluate_run`
(``gtpe evaluate``).

A run folder is what :func:`gtpe.train.train` / ``gtpe train --out DIR`` writes: ``config.yaml``,
``results.json``, ``metrics.csv`` and ``checkpoints/{best,last}.pt``. The model is rebuilt from
``config.yaml`` (its architecture) and the dataset's static description
(:func:`gtpe.datasets.dataset_info`: input and output sizes), so no data is loaded to get it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gtpe.train.checkpoint import CheckpointError, load_checkpoint
from gtpe.train.config import ExperimentConfig, config_equal_except, load_config

__all__ = ['RunInfo', 'evaluate_run', 'load_run']

CHECKPOINTS = ('best', 'last')


@dataclass
class RunInfo:
    """What :func:`load_run` returns besides the model and the config.

    Attributes:
        dataset: the dataset's :class:`~gtpe.datasets.DatasetInfo` (task, metric, sizes).
        results: ``results.json`` as a dict, or ``None`` while the run has not finished.
        checkpoint: the checkpoint file whose weights were loaded.
        epoch: the (1-based) epoch at the end of which that checkpoint was written.
    """
    dataset: Any
    results: dict | None
    checkpoint: Path
    epoch: int


def load_run(run_dir: str | os.PathLike, checkpoint: str = 'best',
             device: str | torch.device = 'cpu') -> tuple[torch.nn.Module, ExperimentConfig,
                                                          RunInfo]:
    """``(model, config, info)`` of the run in ``run_dir``.

    ``model`` is :class:`gtpe.models.GPSModel` rebuilt from ``config.yaml`` with the weights of
    ``checkpoints/<checkpoint>.pt`` (``'best'``: best validation epoch; ``'last'``: last finished
    epoch), on ``device``, in eval mode. Its inputs need the encodings of
    ``config.model.transforms()`` (see :func:`gtpe.precompute`). A folder without a run, a
    missing or unreadable checkpoint, or a checkpoint of another config raise
    :class:`~gtpe.train.checkpoint.CheckpointError` (a ``ValueError``) naming the file.
    """
    from gtpe.datasets import dataset_info
    from gtpe.train.loop import build_model

    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"load_run: checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f'{run}: no such folder (expected the --out folder of a '
                              f'`gtpe train` run)')
    if not (run / 'config.yaml').is_file():
        raise CheckpointError(f'{run}: not a gtpe training run (no config.yaml); expected the '
                              f'--out folder of `gtpe train`')
    config = load_config(run / 'config.yaml')
    path = run / 'checkpoints' / f'{checkpoint}.pt'
    other = 'last' if checkpoint == 'best' else 'best'
    has_other = (run / 'checkpoints' / f'{other}.pt').is_file()
    use_other = f' (use --checkpoint {other})' if has_other else ''
    if not path.is_file():
        why = ('no epoch has finished with a finite validation metric'
               if checkpoint == 'best' else 'no epoch has finished')
        raise CheckpointError(f'{run}: no checkpoints/{checkpoint}.pt: {why}{use_other}')
    advice = (f'; use --checkpoint {other}, or train again with --overwrite' if has_other
              else '; train again with --overwrite')
    state = load_checkpoint(path, advice=advice)
    if 'model' not in state or 'epoch' not in state:
        raise CheckpointError(f'{path}: not a gtpe checkpoint (no model weights){advice}')
    if 'config' in state:
        diffs = config_equal_except(state['config'], config.to_dict(),
                                    ('train.device', 'train.num_workers'))
        if diffs:
            raise CheckpointError(f'{path}: written for another config than {run}/config.yaml '
                                  f'(differs at {", ".join(diffs)})')
    info = dataset_info(config.dataset.name)
    model = build_model(config, info)
    try:
        model.load_state_dict(state['model'])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f'{path}: weights do not fit the model of config.yaml '
                              f'({first}){advice}') from None
    model.to(device).eval()
    return model, config, RunInfo(dataset=info, results=_read_results(run), checkpoint=path,
                                  epoch=int(state['epoch']))


def _read_results(run: Path) -> dict | None:
    try:
        return json.loads((run / 'results.json').read_text())
    except (OSError, ValueError):
        return None


def evaluate_run(run_dir: str | os.PathLike, split: str = 'test', checkpoint: str = 'best',
                 device: str | torch.device = 'cpu', progress: bool = True) -> dict:
    """Evaluate the run's model (:func:`load_run`) on ``split`` of its dataset (same
    ``dataset.limit`` and encodings as in training) with the dataset's metric.

    Returns ``{'run', 'split', 'metric', 'higher_is_better', 'value', 'checkpoint', 'epoch'}``;
    ``value`` is ``None`` when the model's predictions are not finite. For ``'best'`` and
    ``split='test'`` the value equals ``results.json``'s ``test`` (same weights, same graphs).
    """
    from gtpe.train import distributed as D
    from gtpe.train.loop import _Evaluator, _node_setup, load_data

    if split not in ('train', 'val', 'test'):
        raise ValueError(f"evaluate_run: split must be 'train', 'val' or 'test', got {split!r}")
    model, config, info = load_run(run_dir, checkpoint, device)
    _, splits = load_data(config, progress=progress)
    env = D.DistEnv(device=torch.device(device))
    if info.dataset.level == 'node':  # the split's mask of the one graph, as in training
        _, _, node_eval = _node_setup(splits[split][0], config, info.dataset, env,
                                      torch.Generator(), lambda s: None)
        value = node_eval(model, progress, splits=(split,))[split]
    else:
        evaluator = _Evaluator(splits[split], split, info.dataset, config.train.batch_size, 0,
                               env)
        value = evaluator(model, progress)
    return {'run': str(run_dir), 'split': split, 'metric': info.dataset.metric,
            'higher_is_better': bool(info.dataset.higher_is_better),
            'value': value if math.isfinite(value) else None, 'checkpoint': checkpoint,
            'epoch': info.epoch}
