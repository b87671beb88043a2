"""The held-out confidence report of `fskp label` (jobs/labeling/scoring.py): AUROC of the likelihood for a right
keypoint, and the reliability table and plot."""
from __future__ import annotations

import numpy as np
from PIL import Image

from jobs.labeling.scoring import confidence_report, draw_reliability


def frames(errors_px: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pred, gt [N, K, 2] with the labeled box 400 px wide (threshold 40 px) and the given x errors [N, K]."""
    n, k = errors_px.shape
    gt = np.zeros((n, k, 2))
    gt[:, :, 0] = np.linspace(0, 400, k)
    pred = gt.copy()
    pred[:, :, 0] += errors_px
    return pred, gt, np.ones((n, k), bool)


def test_auroc_and_reliability_follow_which_keypoints_are_right():
    errors = np.array([[5.0, 80.0, 10.0, 200.0], [1.0, 30.0, 90.0, 2.0]])       # right: <= 40 px
    pred, gt, visible = frames(errors)
    right = errors <= 40
    telling = np.where(right, 0.9, 0.1)                                          # likelihood that knows
    report = confidence_report(telling, pred, gt, visible)
    assert report["keypoints"] == 8 and report["right"] == right.mean()
    assert report["auroc_likelihood_right"] == 1.0
    assert confidence_report(1 - telling, pred, gt, visible)["auroc_likelihood_right"] == 0.0
    bins = {tuple(b["likelihood"]): b for b in report["reliability"]}
    assert bins[(0.0, 0.2)]["keypoints"] == 3 and bins[(0.0, 0.2)]["right"] == 0.0
    assert bins[(0.8, 1.0)]["keypoints"] == 5 and bins[(0.8, 1.0)]["right"] == 1.0
    assert bins[(0.4, 0.6)]["keypoints"] == 0 and bins[(0.4, 0.6)]["right"] is None
    # hidden keypoints are not scored; all right: no AUROC
    visible[:, 1] = visible[0, 3] = visible[1, 2] = False
    report = confidence_report(telling, pred, gt, visible)
    assert report["keypoints"] == 4 and report["right"] == 1.0 and report["auroc_likelihood_right"] is None


def test_reliability_plot_is_written(tmp_path):
    pred, gt, visible = frames(np.array([[5.0, 80.0, 10.0, 200.0]]))
    report = confidence_report(np.array([[0.7, 0.3, 0.9, 0.5]]), pred, gt, visible)
    draw_reliability(report, tmp_path / "reliability.png", "4 held-out keypoints")
    with Image.open(tmp_path / "reliability.png") as im:
        assert im.format == "PNG" and im.size == (480, 360)
        assert len(set(im.convert("RGB").getdata())) > 2                        # bars, axes and text drawn
    assert [p.name for p in tmp_path.iterdir()] == ["reliability.png"]           # no partial file left
