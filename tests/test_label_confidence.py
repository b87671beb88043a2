"""The calibrated likelihood of `fskp label` (jobs/labeling/confidence.py): certainty and frame novelty combined
by a logistic regression fitted on held-out frames, saved beside the checkpoint for `fskp predict`."""
from __future__ import annotations

import numpy as np
import pytest

from jobs.labeling.confidence import Calibration, find_calibration, fit_calibration, novelty


def held_out_set(seed=0, n=60, k=4, d=16):
    """Frames whose keypoints are wrong when the frame is far from the training frames; the model's own
    certainty is noise.  Returns uncertainty [N, K], embedding [N, D], reference [T, D], right, scored [N, K]."""
    reference = np.random.default_rng(123).standard_normal((8, d))          # the same training frames each time
    rng = np.random.default_rng(seed)
    far = rng.random(n)                                      # 0: a training frame's twin, 1: unlike any
    base = reference[rng.integers(0, 8, n)]
    embedding = base * (1 - far[:, None]) + rng.standard_normal((n, d)) * far[:, None] * 1.5
    right = rng.random((n, k)) > far[:, None] ** 0.5         # far frames: mostly wrong
    uncertainty = rng.uniform(0.05, 0.95, (n, k))
    scored = np.ones((n, k), bool)
    scored[0, 0] = False                                     # a hidden keypoint is not fitted on
    return uncertainty, embedding.astype(np.float16), reference.astype(np.float16), right, scored


def test_novelty_is_zero_on_the_training_frames_and_grows_away_from_them():
    ref = np.eye(3)
    assert np.allclose(novelty(ref, ref), 0.0)
    assert novelty(np.array([[1.0, 1.0, 0.0]]), ref)[0] == pytest.approx(1 - np.sqrt(0.5))
    assert novelty(np.array([[-1.0, 0.0, 0.0]]), ref)[0] == pytest.approx(1.0)     # orthogonal to the others
    many = np.random.default_rng(0).standard_normal((10, 3))
    assert np.allclose(novelty(many, ref, chunk=3), novelty(many, ref))            # chunking changes nothing


def test_calibration_learns_that_unfamiliar_frames_are_wrong():
    from sklearn.metrics import roc_auc_score

    unc, emb, ref, right, scored = held_out_set()
    calibration, oof = fit_calibration(unc, emb, ref, right, scored)
    assert calibration.fitted_on == scored.sum()
    assert calibration.coef[1] < 0                         # more novel -> less likely right
    assert np.isnan(oof[0, 0]) and np.isfinite(oof[scored]).all()
    assert calibration.cross_validated_auroc == pytest.approx(roc_auc_score(right[scored], oof[scored]))
    raw = roc_auc_score(right[scored], 1 - unc[scored])
    assert calibration.cross_validated_auroc > 0.75 > raw + 0.15           # the certainty alone is noise here
    # on frames it never saw, from the same process: better than the raw certainty, and calibrated
    unc2, emb2, _, right2, _ = held_out_set(seed=1, n=400)
    lk = calibration.likelihood(unc2, emb2)
    assert roc_auc_score(right2.ravel(), lk.ravel()) > 0.75
    for lo, hi in ((0.0, 0.4), (0.6, 1.0)):
        sel = (lk >= lo) & (lk < hi)
        assert sel.sum() > 50 and abs(right2[sel].mean() - lk[sel].mean()) < 0.12


def test_no_calibration_from_too_few_keypoints_or_one_class():
    unc, emb, ref, right, scored = held_out_set(n=4)
    assert fit_calibration(unc, emb, ref, right, scored) == (None, None)               # 15 keypoints
    unc, emb, ref, right, scored = held_out_set()
    assert fit_calibration(unc, emb, ref, np.ones_like(right), scored) == (None, None)  # none wrong


def test_saved_beside_a_checkpoint_and_found_from_its_model_file(tmp_path):
    unc, emb, ref, right, scored = held_out_set()
    calibration, _ = fit_calibration(unc, emb, ref, right, scored)
    (tmp_path / "model.pt").write_bytes(b"")
    assert find_calibration(tmp_path / "model.pt") is None
    calibration.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confidence.npz", "model.pt"]   # no partial file left
    again = find_calibration(tmp_path / "model.pt")
    np.testing.assert_array_equal(again.likelihood(unc, emb), calibration.likelihood(unc, emb))
    assert again.cross_validated_auroc == calibration.cross_validated_auroc
    unc[1, 2] = np.nan                                                                  # no prediction stays none
    assert np.isnan(again.likelihood(unc, emb)[1, 2]) and np.isfinite(again.likelihood(unc, emb)[2]).all()


def test_a_file_that_is_not_a_calibration_is_refused_by_name(tmp_path):
    np.savez(tmp_path / "confidence.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match=r"confidence\.npz: not a likelihood calibration"):
        find_calibration(tmp_path)


def test_identity_calibration_gives_back_the_models_certainty():
    unc = np.array([[0.1, 0.5, 0.9]])
    identity = Calibration(coef=np.array([1.0, 0.0]), intercept=0.0, reference=np.ones((1, 2), np.float32),
                           fitted_on=0, cross_validated_auroc=None)
    np.testing.assert_allclose(identity.likelihood(unc, np.ones((1, 2))), 1 - unc, atol=1e-6)


def test_test_time_crop_spread_is_used_where_frames_have_one(tmp_path):
    """Keypoints whose crops disagree are wrong, on familiar and novel frames alike: the fit with the spread
    predicts them; frames predicted without test-time crops (NaN spread) get the fit without it."""
    from sklearn.metrics import roc_auc_score

    unc, emb, ref, right, scored = held_out_set()
    rng = np.random.default_rng(7)
    spread = np.where(right & (rng.random(right.shape) < 0.7), 0.002, 0.05) * rng.uniform(0.5, 2.0, right.shape)
    plain, oof_plain = fit_calibration(unc, emb, ref, right, scored)
    calibration, oof = fit_calibration(unc, emb, ref, right, scored, spread)
    assert calibration.uses_spread and not plain.uses_spread and calibration.spread_coef[2] < 0
    np.testing.assert_allclose(calibration.coef, plain.coef)          # the fit without it, kept for such frames
    assert calibration.cross_validated_auroc > plain.cross_validated_auroc + 0.05
    assert calibration.cross_validated_auroc == pytest.approx(roc_auc_score(right[scored], oof[scored]))
    partial = spread.copy()
    partial[:10] = np.nan                                             # say, a video's frames, predicted once
    lk = calibration.likelihood(unc, emb, partial)
    np.testing.assert_allclose(lk[:10], plain.likelihood(unc[:10], emb[:10]))
    np.testing.assert_allclose(lk[10:], calibration.likelihood(unc[10:], emb[10:], spread[10:]))
    assert not np.allclose(lk[10:], plain.likelihood(unc[10:], emb[10:]))
    again = Calibration.load(calibration.save(tmp_path))
    np.testing.assert_array_equal(again.likelihood(unc, emb, partial), lk)
    assert "test-time-crop spread" in again.describe()
