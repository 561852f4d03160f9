import math

import numpy as np
import pytest
import torch

from kdmsi.metrics.change import ConfusionCounts, change_metrics, format_table


def test_paper_definitions_against_hand_computed_counts():
    # TP=2, FP=1, FN=1, TN=4
    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
    truth = np.array([1, 1, 0, 1, 0, 0, 0, 0], bool)
    m = change_metrics(pred, truth)
    assert math.isclose(m["OA"], 6 / 8)
    f1_change, f1_bg = 4 / 6, 8 / 10
    assert math.isclose(m["F1"], (f1_change + f1_bg) / 2)
    assert math.isclose(m["F1_change"], f1_change)
    assert math.isclose(m["cIoU"], 2 / 4)
    assert math.isclose(m["mIoU"], (2 / 4 + 4 / 6) / 2)
    assert math.isclose(m["FP"], 1 / 4) and math.isclose(m["FN"], 1 / 4)
    assert math.isclose(m["precision"], 2 / 3) and math.isclose(m["recall"], 2 / 3)
    assert math.isclose(m["cIoU"] + m["FP"] + m["FN"], 1.0)


def test_no_change_anywhere_is_a_perfect_score():
    z = np.zeros((4, 4), bool)
    m = change_metrics(z, z)
    assert m["cIoU"] == 1.0 and m["FP"] == 0.0 and m["FN"] == 0.0 and m["OA"] == 1.0


def test_valid_mask_excludes_pixels_and_tensors_are_accepted():
    pred = torch.tensor([[1, 1], [0, 0]])
    truth = torch.tensor([[1, 0], [1, 0]])
    valid = torch.tensor([[1, 0], [0, 1]])
    m = change_metrics(pred, truth, valid)
    assert m["cIoU"] == 1.0 and m["OA"] == 1.0


def test_accumulation_equals_one_big_map():
    rng = np.random.default_rng(0)
    preds = [rng.random((8, 8)) > 0.5 for _ in range(3)]
    truths = [rng.random((8, 8)) > 0.6 for _ in range(3)]
    acc = ConfusionCounts()
    for p, t in zip(preds, truths):
        acc.update(p, t)
    assert acc.metrics() == change_metrics(np.stack(preds), np.stack(truths))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shape"):
        change_metrics(np.zeros((2, 2)), np.zeros((3, 3)))


def test_format_table_lists_each_method_in_percent():
    text = format_table({"msi": change_metrics(np.ones(4), np.ones(4))})
    assert "msi" in text and "100.00" in text
