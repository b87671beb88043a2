"""Test-time crops (jobs/inference.py): the boxes, and how their predictions are combined."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.inference import CROP_JITTER, Predictions, jittered_boxes, predict_frames_tta


def test_jittered_boxes_move_and_scale_the_crop_about_its_centre():
    crop = (100.0, 50.0, 300.0, 250.0)                    # side 200, centre (200, 150)
    boxes = jittered_boxes(crop)
    assert len(boxes) == len(CROP_JITTER) + 1 and boxes[0] == crop
    for (dx, dy, s), (x0, y0, x1, y1) in zip(CROP_JITTER, boxes[1:]):
        assert (x1 - x0, y1 - y0) == pytest.approx((200 * s, 200 * s))
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((200 + 200 * dx, 150 + 200 * dy))
    assert {(round(b[0], 6), round(b[1], 6)) for b in boxes[1:5]} == {(108, 50), (92, 50), (100, 58), (100, 42)}


def fake_predictions(keypoints: np.ndarray, uncertainty: float, ids=("a.png", "b.png", "c.png")) -> Predictions:
    n = len(ids)
    ok = np.array([True, True, False])[:n]
    kp = keypoints.copy()
    kp[~ok] = np.nan
    return Predictions(ids=list(ids), keypoints=kp, uncertainty=np.full(kp.shape[:2], uncertainty),
                       embedding=np.full((n, 4), uncertainty, np.float16), ok=ok)


def test_one_crop_that_misses_is_outvoted_by_the_median(monkeypatch):
    truth = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 2, 2) * 10.0
    boxes_seen = []

    def predict(checkpoint, sources, box, **options):
        boxes_seen.append(box)
        n = len(boxes_seen)                             # pass 3 misses by 500 px, the others scatter by <= 1.5
        return fake_predictions(truth + (-1.5, -1.0, 500.0, -0.5, 0.0, 1.0, 1.5)[n - 1], uncertainty=0.1 * n)

    monkeypatch.setattr("jobs.inference.predict_frames", predict)
    crop = (0.0, 0.0, 100.0, 100.0)
    combined, passes = predict_frames_tta("ckpt", ["frames/"], crop, progress=False)
    plain = passes[0]
    assert len(passes) == 7
    assert boxes_seen == jittered_boxes(crop)
    np.testing.assert_allclose(plain.keypoints[:2], truth[:2] - 1.5)      # the crop's own pass, unchanged
    np.testing.assert_allclose(combined.keypoints[:2], truth[:2])          # the median: 0 px off
    assert np.isnan(combined.keypoints[2]).all() and combined.ok.tolist() == [True, True, False]
    np.testing.assert_allclose(combined.uncertainty, 0.4)                  # mean of 0.1 .. 0.7
    # how far the crops disagree: mean distance from the median, a share of the crop's side (100 px)
    np.testing.assert_allclose(combined.spread[:2], (1.5 + 1 + 500 + 0.5 + 0 + 1 + 1.5) / 7 * np.sqrt(2) / 100)
    assert np.isnan(combined.spread[2]).all()
    assert (combined.embedding == plain.embedding).all()                   # the crop's own


def test_test_time_crops_refuse_a_missing_crop_and_passes_that_disagree(monkeypatch):
    with pytest.raises(ValueError, match="need a crop box"):
        predict_frames_tta("ckpt", ["frames/"], None)
    calls = []

    def predict(checkpoint, sources, box, **options):
        calls.append(box)
        ids = ("a.png", "b.png", "c.png") if len(calls) == 1 else ("a.png", "b.png", "d.png")
        return fake_predictions(np.zeros((3, 2, 2)), 0.5, ids)

    monkeypatch.setattr("jobs.inference.predict_frames", predict)
    with pytest.raises(RuntimeError, match="different frames"):
        predict_frames_tta("ckpt", ["frames/"], (0, 0, 10, 10), progress=False)
