import numpy as np
import pytest
import torch

from eval.metrics import ConfusionMatrix, scores, summarize


def _matrix(target, pred, n):
    cm = ConfusionMatrix(n)
    cm.update(torch.tensor(target), torch.tensor(pred))
    return cm.numpy()


def test_hand_computed_example_with_absent_class_and_ignore():
    # 4 classes; class 3 is in neither truth nor prediction; 255 pixels are not scored.
    target = [[0, 0, 1, 1], [2, 2, 255, 255]]
    pred = [[0, 1, 1, 1], [2, 0, 3, 0]]
    mat = _matrix(target, pred, 4)
    np.testing.assert_array_equal(mat, [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    s = scores(mat)
    # IoU: bg 1/(2+2-1)=1/3, c1 2/(2+3-2)=2/3, c2 1/(2+1-1)=1/2, c3 absent -> None (not 0, not NaN)
    assert s["iou"][:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert s["iou"][3] is None
    assert s["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["mIoU_fg"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert s["aAcc"] == pytest.approx(4 / 6)
    assert s["mAcc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


def test_class_predicted_but_absent_from_truth_scores_zero():
    # The ignored pixel is predicted as 3 too, but must not count.
    mat = _matrix([0, 0, 1, 255], [0, 3, 1, 3], 4)
    s = scores(mat)
    assert s["iou"][3] == 0.0
    assert s["iou"][2] is None
    assert s["mIoU"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_perfect_prediction():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(3, 16, 16))
    s = scores(_matrix(target, target, 5))
    assert s["mIoU"] == 1.0 and s["mIoU_fg"] == 1.0 and s["aAcc"] == 1.0 and s["mAcc"] == 1.0


def test_ignored_pixels_do_not_change_the_matrix():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 4, size=(8, 8))
    target[rng.random((8, 8)) < 0.3] = 255
    pred_a, pred_b = rng.integers(0, 4, size=(2, 8, 8))
    pred_b = np.where(target == 255, pred_b, pred_a)
    np.testing.assert_array_equal(_matrix(target, pred_a, 4), _matrix(target, pred_b, 4))


def test_matches_naive_reference_and_accumulates():
    rng = np.random.default_rng(2)
    n = 6
    target = rng.integers(0, n, size=(4, 10, 10))
    pred = rng.integers(0, n, size=(4, 10, 10))
    cm = ConfusionMatrix(n)
    for t, p in zip(target, pred, strict=True):  # batch by batch
        cm.update(torch.from_numpy(t), torch.from_numpy(p))
    naive = np.zeros((n, n), np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        naive[t, p] += 1
    np.testing.assert_array_equal(cm.numpy(), naive)
    s = scores(naive)
    for c in range(n):
        inter = np.sum((target == c) & (pred == c))
        union = np.sum((target == c) | (pred == c))
        assert s["iou"][c] == pytest.approx(inter / union)


def test_out_of_range_target_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        _matrix([0, 7], [0, 1], 3)


def test_empty_matrix_scores_are_none():
    s = scores(np.zeros((3, 3), np.int64))
    assert s["mIoU"] is None and s["aAcc"] is None and s["iou"] == [None, None, None]


def test_summarize():
    s = summarize([0.5, 0.7, None, 0.6])
    assert s["mean"] == pytest.approx(0.6)
    assert s["std"] == pytest.approx(0.1)  # sample std (ddof=1)
    assert s["values"] == [0.5, 0.7, None, 0.6]
    assert summarize([0.4])["std"] is None
    assert summarize([None])["mean"] is None
