"""gtpe.datasets.metrics against hand-computed values, sklearn and the benchmarks' conventions."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from gtpe.datasets.metrics import evaluate, higher_is_better


def test_mae_by_hand():
    y = torch.tensor([1.0, -2.0, 0.5])
    p = torch.tensor([[1.5], [-1.0], [0.5]])                 # [N,1] model output vs [N] targets
    assert evaluate('mae', y, p) == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    with pytest.raises(ValueError, match='differ'):
        evaluate('mae', y, torch.zeros(4))


def test_rocauc_by_hand_and_sklearn():
    y = np.array([[0], [0], [1], [1]])
    p = np.array([[0.1], [0.4], [0.35], [0.8]])
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert evaluate('rocauc', y, p) == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 1))
    logits = rng.normal(size=(200, 1)) + y
    ref = roc_auc_score(y[:, 0], logits[:, 0])
    assert evaluate('rocauc', torch.from_numpy(y), torch.from_numpy(logits)) == pytest.approx(ref)
    # logits or probabilities: same ranking, same score
    assert evaluate('rocauc', y, 1 / (1 + np.exp(-logits))) == pytest.approx(ref)
    assert evaluate('rocauc', y[:, 0], logits[:, 0]) == pytest.approx(ref)   # [N] inputs


def test_ap_by_hand():
    y = np.array([[1], [0], [1], [0]])
    p = np.array([[0.9], [0.8], [0.7], [0.1]])
    # ranking 1,0,1,0: precision at the positives 1/1 and 2/3 -> AP = (1 + 2/3) / 2
    assert evaluate('ap', y, p) == pytest.approx((1 + 2 / 3) / 2)


def test_ap_macro_like_lrgb():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, size=(300, 4)).astype(np.float64)
    y[:, 3] = 0.0                       # a label with one class only: skipped, as LRGB does
    y[rng.random((300, 4)) < 0.1] = np.nan   # missing labels: ignored
    y[np.isnan(y[:, 3]), 3] = 0.0
    logits = rng.normal(size=(300, 4)) + np.nan_to_num(y)
    refs = []
    for i in range(3):
        m = ~np.isnan(y[:, i])
        refs.append(average_precision_score(y[m, i], logits[m, i]))
    assert evaluate('ap', y, logits) == pytest.approx(np.mean(refs))
    with pytest.raises(ValueError, match='both positive and negative'):
        evaluate('ap', np.zeros((5, 2)), np.zeros((5, 2)))


def test_accuracy():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    assert evaluate('accuracy', y, logits) == pytest.approx(0.75)
    # binary logits: positive logit = class 1
    assert evaluate('accuracy', torch.tensor([[1], [0], [1]]),
                    torch.tensor([[0.3], [-2.0], [-0.1]])) == pytest.approx(2 / 3)


def test_higher_is_better_and_unknown():
    assert higher_is_better('rocauc') and higher_is_better('ap') and higher_is_better('accuracy')
    assert not higher_is_better('mae')
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        evaluate('f1', [0], [0])
    with pytest.raises(ValueError, match='unknown metric'):
        higher_is_better('rmse')


def test_rocauc_of_a_single_class_is_a_clear_value_error():
    y = np.zeros((6, 1))
    with pytest.raises(ValueError, match='rocauc: undefined'):
        evaluate('rocauc', y, np.linspace(-1, 1, 6)[:, None])
