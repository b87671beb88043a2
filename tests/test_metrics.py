"""models/metrics.py against values worked out by hand (numbers in the comments)."""
from __future__ import annotations

import numpy as np
import pytest

from models.metrics import keypoint_errors, nme, normaliser, pck, score
from pipeline.card import MetricSpec

NAN = np.nan


def test_keypoint_errors_are_euclidean():
    pred = np.array([[[3.0, 4.0], [1.0, 1.0]]])
    gt = np.zeros((1, 2, 2))
    np.testing.assert_allclose(keypoint_errors(pred, gt), [[5.0, np.sqrt(2)]])


# ---- NME normalised by a keypoint pair (e.g. outer eye corners) ----------------------------------------
# instance 0: pair distance |(0,0)-(10,0)| = 10; errors 5, 0, 1      -> 50 %, 0 %, 10 %
# instance 1: pair distance |(0,0)-(0,20)| = 20; errors 0, 10, (invisible, gt unknown = NaN)
#                                                                       -> 0 %, 50 %, ignored
# mean over the 5 visible entries: (50 + 0 + 10 + 0 + 50) / 5 = 22 %
# per keypoint: (50 + 0) / 2 = 25, (0 + 50) / 2 = 25, 10 / 1 = 10
PAIR_GT = np.array([[[0, 0], [10, 0], [5, 5]],
                    [[0, 0], [0, 20], [NAN, NAN]]], float)
PAIR_PRED = np.array([[[3, 4], [10, 0], [5, 6]],
                      [[0, 0], [6, 28], [100, 100]]], float)
PAIR_VIS = np.array([[True, True, True], [True, True, False]])
PAIR_SPEC = MetricSpec(kind="nme", normalize="keypoints", pair=(0, 1))


def test_nme_with_keypoint_pair_normaliser():
    norm = normaliser(PAIR_SPEC, PAIR_GT, PAIR_VIS, image_size=128)
    np.testing.assert_allclose(norm, [10.0, 20.0])
    value, per_kp = nme(PAIR_PRED, PAIR_GT, PAIR_VIS, norm)
    assert value == pytest.approx(22.0)
    np.testing.assert_allclose(per_kp, [25.0, 25.0, 10.0])


def test_score_nme_reports_pixels_and_ignores_invisible_nan_ground_truth():
    result = score(PAIR_SPEC, PAIR_PRED, PAIR_GT, PAIR_VIS, image_size=128)
    assert result["metric"] == "nme"
    assert result["value"] == pytest.approx(22.0)
    np.testing.assert_allclose(result["per_keypoint"], [25.0, 25.0, 10.0])
    assert result["mean_error_px"] == pytest.approx((5 + 0 + 1 + 0 + 10) / 5)
    assert result["median_error_px"] == pytest.approx(1.0)
    assert result["instances"] == 2


def test_invisible_keypoints_do_not_change_the_score():
    moved = PAIR_PRED.copy()
    moved[1, 2] = [-1e6, 3e7]
    assert score(PAIR_SPEC, moved, PAIR_GT, PAIR_VIS, 128)["value"] == pytest.approx(22.0)


def test_nme_rejects_non_positive_normaliser():
    with pytest.raises(ValueError, match="positive"):
        nme(PAIR_PRED, PAIR_GT, PAIR_VIS, np.array([10.0, 0.0]))


def test_nme_with_image_normaliser():
    # errors 5 and 10 px over a 100 px image side -> 5 % and 10 %, mean 7.5 %
    gt = np.zeros((1, 2, 2))
    pred = np.array([[[3.0, 4.0], [6.0, 8.0]]])
    spec = MetricSpec(kind="nme", normalize="image")
    result = score(spec, pred, gt, np.ones((1, 2), bool), image_size=100)
    assert result["value"] == pytest.approx(7.5)


# ---- box normalisers: the box around the *visible* ground-truth keypoints ------------------------------
# instance 0: visible (0,0), (30,10), (10,40); keypoint 3 invisible at (500,500) must not widen the box
#   -> sides (30, 40): max side 40, diagonal 50
# instance 1: visible (0,0), (100,0), (0,50), (20,20) -> sides (100, 50): max side 100, diagonal sqrt(12500)
BOX_GT = np.array([[[0, 0], [30, 10], [10, 40], [500, 500]],
                   [[0, 0], [100, 0], [0, 50], [20, 20]]], float)
BOX_VIS = np.array([[True, True, True, False], [True, True, True, True]])


def test_bbox_normalisers_use_visible_keypoints_only():
    np.testing.assert_allclose(normaliser(MetricSpec("pck", "bbox_max_side"), BOX_GT, BOX_VIS, 128), [40.0, 100.0])
    np.testing.assert_allclose(normaliser(MetricSpec("nme", "bbox_diag"), BOX_GT, BOX_VIS, 128),
                               [50.0, np.sqrt(100.0 ** 2 + 50.0 ** 2)])


def test_bbox_normaliser_is_zero_without_visible_keypoints():
    gt = np.ones((1, 3, 2))
    assert normaliser(MetricSpec("pck", "bbox_max_side"), gt, np.zeros((1, 3), bool), 128)[0] == 0.0


def test_nme_with_bbox_diag_normaliser():
    # instance 0 only: errors 5, 10, 0 px on the visible keypoints against a diagonal of 50
    # -> 10 %, 20 %, 0 %, mean 10 %
    gt = BOX_GT[:1]
    pred = gt.copy()
    pred[0, 0] += [3, 4]
    pred[0, 1] += [6, 8]
    pred[0, 3] += [1000, 0]    # invisible
    result = score(MetricSpec("nme", "bbox_diag"), pred, gt, BOX_VIS[:1], 128)
    assert result["value"] == pytest.approx(10.0)
    np.testing.assert_allclose(result["per_keypoint"], [10.0, 20.0, 0.0, NAN])


# ---- PCK@0.1 with the largest box side --------------------------------------------------------------
# instance 0: threshold 0.1 * 40 = 4;  errors 3 (ok), 4 (ok: <= threshold), 5 (miss); keypoint 3 invisible
# instance 1: threshold 0.1 * 100 = 10; errors 0 (ok), 25 (miss), 10 (ok), 9 (ok)
# -> 5 of 7 correct = 71.43 %; per keypoint 100, 50, 50, 100
# with min_threshold_px = 20 both thresholds become 20: only the 25 px error misses -> 6 of 7 = 85.71 %
BOX_PRED = BOX_GT + np.array([[[3, 0], [0, 4], [3, 4], [0, 0]],
                              [[0, 0], [15, 20], [6, 8], [0, 9]]], float)


def test_pck_by_hand():
    value, per_kp = pck(BOX_PRED, BOX_GT, BOX_VIS, np.array([4.0, 10.0]))
    assert value == pytest.approx(100 * 5 / 7)
    np.testing.assert_allclose(per_kp, [100.0, 50.0, 50.0, 100.0])


def test_score_pck_alpha():
    result = score(MetricSpec("pck", "bbox_max_side", alpha=0.1), BOX_PRED, BOX_GT, BOX_VIS, 128)
    assert result["metric"] == "pck"
    assert result["value"] == pytest.approx(100 * 5 / 7)
    np.testing.assert_allclose(result["per_keypoint"], [100.0, 50.0, 50.0, 100.0])


def test_score_pck_with_min_threshold_px():
    spec = MetricSpec("pck", "bbox_max_side", alpha=0.1, min_threshold_px=20.0)
    result = score(spec, BOX_PRED, BOX_GT, BOX_VIS, 128)
    assert result["value"] == pytest.approx(100 * 6 / 7)
    np.testing.assert_allclose(result["per_keypoint"], [100.0, 50.0, 100.0, 100.0])


def test_pck_alpha_scales_the_threshold():
    # alpha 0.2: thresholds 8 and 20 -> only the 25 px error misses -> 6 of 7
    result = score(MetricSpec("pck", "bbox_max_side", alpha=0.2), BOX_PRED, BOX_GT, BOX_VIS, 128)
    assert result["value"] == pytest.approx(100 * 6 / 7)


def test_keypoint_never_visible_gets_nan():
    vis = BOX_VIS.copy()
    vis[:, 3] = False
    # without keypoint 3: instance 0 as before (2 of 3); instance 1 box (0,0)-(100,50), threshold 10: 0 ok, 25
    # miss, 10 ok -> 4 of 6
    result = score(MetricSpec("pck", "bbox_max_side"), BOX_PRED, BOX_GT, vis, 128)
    assert result["value"] == pytest.approx(100 * 4 / 6)
    assert np.isnan(result["per_keypoint"][3])
    np.testing.assert_allclose(result["per_keypoint"][:3], [100.0, 50.0, 50.0])


def test_instances_without_visible_keypoints_are_left_out():
    gt = np.concatenate([BOX_GT, np.full((1, 4, 2), 7.0)])
    pred = np.concatenate([BOX_PRED, np.full((1, 4, 2), 900.0)])
    vis = np.concatenate([BOX_VIS, np.zeros((1, 4), bool)])
    result = score(MetricSpec("pck", "bbox_max_side"), pred, gt, vis, 128)
    assert result["instances"] == 2
    assert result["value"] == pytest.approx(100 * 5 / 7)
    nme_result = score(PAIR_SPEC, np.concatenate([PAIR_PRED, np.full((1, 3, 2), 900.0)]),
                       np.concatenate([PAIR_GT, np.array([[[0, 0], [5, 0], [1, 1]]], float)]),
                       np.concatenate([PAIR_VIS, np.zeros((1, 3), bool)]), 128)
    assert nme_result["instances"] == 2
    assert nme_result["value"] == pytest.approx(22.0)


def test_single_visible_keypoint_counts_only_with_a_pixel_floor():
    # one visible keypoint: its box has no extent, so alpha * side = 0.  Without a pixel floor the instance
    # cannot be scored and is left out; with min_threshold_px = 20 its 15 px error is correct.
    gt = np.concatenate([BOX_GT, np.array([[[50, 50], [0, 0], [0, 0], [0, 0]]], float)])
    pred = np.concatenate([BOX_PRED, np.array([[[59, 62], [0, 0], [0, 0], [0, 0]]], float)])
    vis = np.concatenate([BOX_VIS, np.array([[True, False, False, False]])])
    plain = score(MetricSpec("pck", "bbox_max_side"), pred, gt, vis, 128)
    assert plain["instances"] == 2 and plain["value"] == pytest.approx(100 * 5 / 7)
    floored = score(MetricSpec("pck", "bbox_max_side", min_threshold_px=20.0), pred, gt, vis, 128)
    assert floored["instances"] == 3 and floored["value"] == pytest.approx(100 * 7 / 8)
    assert floored["per_keypoint"][0] == pytest.approx(100.0)


def test_nothing_visible_raises():
    with pytest.raises(ValueError, match="no visible keypoint"):
        score(MetricSpec("pck", "bbox_max_side"), BOX_PRED, BOX_GT, np.zeros_like(BOX_VIS), 128)


def test_spread_ratio_is_one_for_the_labels_and_near_zero_for_a_collapsed_prediction():
    from models.metrics import COLLAPSED_SPREAD, spread_ratio

    gt = np.array([[[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [9.0, 9.0]]] * 2)
    visible = np.array([[True, True, True, False], [True, True, False, False]])
    assert spread_ratio(gt, gt, visible) == pytest.approx(1.0)
    assert spread_ratio(gt * 0.5 + 7.0, gt, visible) == pytest.approx(0.5)      # shrunk and moved: half
    collapsed = np.full_like(gt, 32.0) + np.random.default_rng(0).normal(0, 0.01, gt.shape)
    assert spread_ratio(collapsed, gt, visible) < COLLAPSED_SPREAD
    with pytest.raises(ValueError, match="2 visible keypoints"):
        spread_ratio(gt, gt, np.eye(4, dtype=bool)[:2])
