"""Evaluation metrics of the gtpe datasets, computed as the benchmarks' own evaluators do.

- ``'mae'``: mean absolute error ``mean |y - y_hat|`` (ZINC).
- ``'rocauc'``: OGB's ``Evaluator('ogbg-molhiv')`` (ROC-AUC averaged over tasks that have both
  classes, NaN labels ignored). Works offline: the evaluator reads a CSV shipped inside ogb.
- ``'ap'``: LRGB/GraphGPS ``eval_ap``: average precision per label (sklearn's step-wise
  ``sum_n (R_n - R_{n-1}) P_n``) over the labels that have a positive and a negative, NaN
  ignored, then the unweighted mean (Peptides-func).
- ``'accuracy'``: fraction of correct predictions; multiclass ``argmax`` over logits ``[N, C]``,
  binary ``logit > 0`` for ``[N]``/``[N, 1]`` outputs.

``y_pred`` are raw model outputs (logits): ROC-AUC and AP depend only on the ranking, so a sigmoid
changes nothing.
"""
from __future__ import annotations

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | list

METRICS = ('mae', 'rocauc', 'ap', 'accuracy')
_HIGHER = {'mae': False, 'rocauc': True, 'ap': True, 'accuracy': True}

__all__ = ['METRICS', 'evaluate', 'higher_is_better']


def _np(a: ArrayLike) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _check(metric: str) -> str:
    if metric not in _HIGHER:
        raise ValueError(f'unknown metric {metric!r}; expected one of {list(METRICS)}')
    return metric


def higher_is_better(metric: str) -> bool:
    """True for rocauc, ap, accuracy; False for mae."""
    return _HIGHER[_check(metric)]


def _as_2d(y_true: np.ndarray, y_pred: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if y_true.ndim == 1:
        y_true = y_true[:, None]
    if y_pred.ndim == 1:
        y_pred = y_pred[:, None]
    if y_true.shape != y_pred.shape:
        raise ValueError(f'{metric}: y_true {tuple(y_true.shape)} and y_pred '
                         f'{tuple(y_pred.shape)} must have the same shape')
    return y_true, y_pred


def _mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = y_true.astype(np.float64).reshape(len(y_true), -1)
    y_pred = y_pred.astype(np.float64).reshape(len(y_pred), -1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f'mae: y_true {y_true.shape} and y_pred {y_pred.shape} differ in size')
    return float(np.abs(y_true - y_pred).mean())


def _rocauc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from ogb.graphproppred import Evaluator
    y_true, y_pred = _as_2d(y_true, y_pred, 'rocauc')
    evaluator = Evaluator('ogbg-molhiv')
    if y_true.shape[1] != evaluator.num_tasks:  # same rule for any number of tasks
        return _per_task(y_true, y_pred, 'rocauc')
    try:
        result = evaluator.eval({'y_true': y_true.astype(np.float64),
                                 'y_pred': y_pred.astype(np.float64)})
    except RuntimeError as e:  # OGB: "No positively labeled data available. Cannot compute ROC-AUC."
        raise ValueError(f'rocauc: undefined, no task has both positive and negative examples '
                         f'({e})') from None
    return float(result['rocauc'])


def _per_task(y_true: np.ndarray, y_pred: np.ndarray, metric: str) -> float:
    from sklearn.metrics import average_precision_score, roc_auc_score
    score = average_precision_score if metric == 'ap' else roc_auc_score
    values = []
    for i in range(y_true.shape[1]):
        col = y_true[:, i]
        if np.sum(col == 1) > 0 and np.sum(col == 0) > 0:
            labeled = ~np.isnan(col)  # drop NaN labels
            values.append(score(col[labeled], y_pred[labeled, i]))
    if not values:
        raise ValueError(f'{metric}: no label has both positive and negative examples')
    return float(sum(values) / len(values))


def _ap(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = _as_2d(y_true.astype(np.float64), y_pred.astype(np.float64), 'ap')
    return _per_task(y_true, y_pred, 'ap')


def _accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true = y_true.reshape(-1) if y_true.ndim > 1 and y_true.shape[-1] == 1 else y_true
    if y_pred.ndim == 2 and y_pred.shape[1] > 1:            # multiclass logits [N, C]
        pred = y_pred.argmax(axis=1)
    else:                                                   # binary logits [N] / [N, 1]
        pred = (y_pred.reshape(-1) > 0).astype(np.int64)
    y_true = y_true.reshape(-1)
    if pred.shape[0] != y_true.shape[0]:
        raise ValueError(f'accuracy: {pred.shape[0]} predictions for {y_true.shape[0]} labels')
    if y_true.size == 0:
        raise ValueError('accuracy: no examples')
    return float((pred == y_true.astype(np.int64)).mean())


def evaluate(metric: str, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Score ``y_pred`` (raw model outputs) against ``y_true`` with ``metric``
    (``'mae'``, ``'rocauc'``, ``'ap'`` or ``'accuracy'``)."""
    fn = {'mae': _mae, 'rocauc': _rocauc, 'ap': _ap, 'accuracy': _accuracy}[_check(metric)]
    return fn(_np(y_true), _np(y_pred))
