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

    def predict(checkpoint, sources, boxes, **options):
        boxes_seen.extend(boxes)                        # view 3 misses by 500 px, the others scatter by <= 1.5
        return [fake_predictions(truth + off, uncertainty=0.1 * (n + 1))
                for n, off in enumerate((-1.5, -1.0, 500.0, -0.5, 0.0, 1.0, 1.5))]

    monkeypatch.setattr("jobs.inference.predict_views", predict)
    crop = (0.0, 0.0, 100.0, 100.0)
    combined, passes = predict_frames_tta("ckpt", ["frames/"], crop, progress=False)
    plain = passes[0]
    assert len(passes) == 7
    assert boxes_seen == jittered_boxes(crop)           # one stream: every frame cut by the 7 boxes
    np.testing.assert_allclose(plain.keypoints[:2], truth[:2] - 1.5)      # the crop's own view, unchanged
    np.testing.assert_allclose(combined.keypoints[:2], truth[:2])          # the median: 0 px off
    assert np.isnan(combined.keypoints[2]).all() and combined.ok.tolist() == [True, True, False]
    np.testing.assert_allclose(combined.uncertainty, 0.4)                  # mean of 0.1 .. 0.7
    # how far the crops disagree: mean distance from the median, a share of the crop's side (100 px)
    np.testing.assert_allclose(combined.spread[:2], (1.5 + 1 + 500 + 0.5 + 0 + 1 + 1.5) / 7 * np.sqrt(2) / 100)
    assert np.isnan(combined.spread[2]).all()
    assert (combined.embedding == plain.embedding).all()                   # the crop's own


def test_test_time_crops_refuse_a_missing_crop():
    with pytest.raises(ValueError, match="need a crop box"):
        predict_frames_tta("ckpt", ["frames/"], None)


def test_one_decode_cuts_every_view(tmp_path):
    """A pool row with test-time crops: V views of one decoded image, each its box resized (pipeline/pool.py)."""
    import io

    from PIL import Image

    from pipeline.pool import decode_encoded

    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[:, 40:] = 255                                   # left half black, right half white
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    boxes = [(0, 0, 40, 40), (40, 0, 80, 40), (20, 0, 60, 40)]
    rows = decode_encoded({"id": ["a.png", "bad.png"], "bytes": [buf.getvalue(), b"not an image"]}, 8,
                          crop_boxes=boxes)
    assert rows["image"].shape == (2, 3, 8, 8, 3) and rows["crop"].shape == (2, 3, 4)
    assert rows["ok"].tolist() == [True, False] and (rows["image"][1] == 0).all()
    np.testing.assert_array_equal(rows["crop"][0], np.asarray(boxes, float))
    views = rows["image"][0].mean(axis=(1, 2, 3))
    assert views[0] < 5 and views[1] > 250 and 100 < views[2] < 155    # black, white, half and half
    one = decode_encoded({"id": ["a.png"], "bytes": [buf.getvalue()]}, 8, crop_box=boxes[2])
    np.testing.assert_array_equal(one["image"][0], rows["image"][0, 2])    # the same cut as a crop of its own
