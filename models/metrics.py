"""Keypoint metrics as pure numpy functions (MMPose style): shapes in the docstrings, visibility honoured.

N instances, K keypoints.  ``visible[N, K]`` masks which keypoints count.  Every function returns
``(mean, per_keypoint[K])`` in percent; a keypoint never visible gets NaN in ``per_keypoint``.
"""
from __future__ import annotations

import numpy as np

from pipeline.card import MetricSpec


def _mean_per_keypoint(values: np.ndarray, visible: np.ndarray) -> tuple[float, np.ndarray]:
    """values, visible: [N, K] -> (mean over visible entries, per-keypoint mean over visible [K])."""
    v = visible.astype(bool)
    if not v.any():
        raise ValueError("no visible keypoint to score")
    total = float(values[v].mean())
    counts = v.sum(0)
    # np.where, not values * v: an invisible entry may hold NaN/inf (unknown coordinates) and NaN * 0 is NaN
    per_kp = np.where(counts > 0, np.where(v, values, 0.0).sum(0) / np.maximum(counts, 1), np.nan)
    return total, per_kp


def keypoint_errors(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """pred, gt: [N, K, 2] -> Euclidean error [N, K] in the coordinates' units."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)


def nme(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, norm: np.ndarray) -> tuple[float, np.ndarray]:
    """Normalised mean error in %: 100 * ||pred - gt|| / norm[n], averaged over visible keypoints.

    pred, gt: [N, K, 2]; visible: [N, K] bool; norm: [N] positive normalising lengths.
    """
    norm = np.asarray(norm, np.float64)
    if (norm <= 0).any() or not np.isfinite(norm).all():
        raise ValueError("NME normaliser must be positive and finite for every instance")
    err = keypoint_errors(pred, gt) / norm[:, None] * 100.0
    return _mean_per_keypoint(err, visible)


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, threshold: np.ndarray) -> tuple[float, np.ndarray]:
    """Percentage of correct keypoints: 100 * [||pred - gt|| <= threshold[n]] over visible keypoints.

    pred, gt: [N, K, 2]; visible: [N, K] bool; threshold: [N] distances (e.g. 0.1 x largest box side).
    """
    correct = (keypoint_errors(pred, gt) <= np.asarray(threshold, np.float64)[:, None]).astype(np.float64) * 100.0
    return _mean_per_keypoint(correct, visible)


#: below this spread ratio a model's predictions count as collapsed (a working detector is near 1)
COLLAPSED_SPREAD = 0.25


def spread_ratio(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> float:
    """How spread out the predicted keypoints are against the labels: the mean over instances of the RMS
    distance of the visible predicted keypoints from their centroid, divided by the same for the labels.

    pred, gt: [N, K, 2]; visible: [N, K] bool.  About 1 for a working detector; near 0 when the predictions
    have collapsed to one point (the trivial minimum of Eq. 3 and Eq. 5, which a detector that memorised its
    few labeled images can reach on every other image).  Instances with fewer than 2 visible keypoints are skipped.
    """
    v = visible.astype(bool)
    keep = v.sum(1) >= 2
    if not keep.any():
        raise ValueError("no instance with 2 visible keypoints to measure a spread")

    def radius(points: np.ndarray) -> np.ndarray:
        p, m = np.asarray(points, np.float64)[keep], v[keep][..., None]
        centre = (p * m).sum(1, keepdims=True) / m.sum(1, keepdims=True)
        return np.sqrt((((p - centre) ** 2).sum(-1) * m[..., 0]).sum(1) / m[..., 0].sum(1))

    label = radius(gt)
    return float((radius(pred) / np.maximum(label, 1e-9)).mean())


def normaliser(spec: MetricSpec, gt: np.ndarray, visible: np.ndarray, image_size: float | np.ndarray) -> np.ndarray:
    """The per-instance normalising length [N] of a card's metric.

    gt: [N, K, 2]; visible: [N, K]; image_size: larger image side (scalar or [N]).
    keypoints: distance between the two keypoints of ``spec.pair`` (e.g. outer eye corners).
    bbox_max_side / bbox_diag: of the box around the visible ground-truth keypoints.
    """
    gt = np.asarray(gt, np.float64)
    n = gt.shape[0]
    if spec.normalize == "keypoints":
        a, b = spec.pair
        return np.linalg.norm(gt[:, a] - gt[:, b], axis=-1)
    if spec.normalize == "image":
        return np.broadcast_to(np.asarray(image_size, np.float64), (n,)).copy()
    v = visible.astype(bool)
    lo = np.where(v[..., None], gt, np.inf).min(1)
    hi = np.where(v[..., None], gt, -np.inf).max(1)
    side = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    if spec.normalize == "bbox_max_side":
        return side.max(-1)
    return np.linalg.norm(side, axis=-1)


def score(spec: MetricSpec, pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
          image_size: float | np.ndarray) -> dict:
    """Score predictions with a card's metric.

    pred, gt: [N, K, 2] in pixels; visible: [N, K]; image_size: larger image side.
    Returns {"metric": "nme"|"pck", "value": mean %, "per_keypoint": [K] %, "mean_error_px": float}.
    Instances with no visible keypoint, a zero (or undefined) normaliser for NME, or a zero PCK threshold
    are left out; with ``min_threshold_px`` > 0 a PCK instance whose normaliser is zero (e.g. a single
    visible keypoint) is still scored against the floor threshold.
    """
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    visible = np.asarray(visible, bool)
    norm = normaliser(spec, gt, visible, image_size)
    if spec.kind == "nme":
        keep = visible.any(1) & (norm > 0)
    else:
        threshold = np.maximum(spec.alpha * norm, spec.min_threshold_px)
        keep = visible.any(1) & (threshold > 0)
    pred, gt, visible, norm = pred[keep], gt[keep], visible[keep], norm[keep]
    if spec.kind == "nme":
        value, per_kp = nme(pred, gt, visible, norm)
    else:
        value, per_kp = pck(pred, gt, visible, threshold[keep])
    err = keypoint_errors(pred, gt)
    return {"metric": spec.kind, "value": value, "per_keypoint": per_kp,
            "mean_error_px": float(err[visible].mean()), "median_error_px": float(np.median(err[visible])),
            "instances": int(keep.sum())}
