"""Held-out scoring in source pixels (the scoring of ../shared/data/README.md)."""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from pipeline.card import Card, MetricSpec


#: README scoring of the DeepLabCut/SLEAP comparison: PCK@0.1 of the labeled-keypoint box, 20 px floor
HELD_OUT_METRIC = MetricSpec(kind="pck", normalize="bbox_max_side", alpha=0.1, min_threshold_px=20.0)


def held_out_report(card: Card, pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
                    frame_ids: Sequence[str] = ()) -> dict:
    """Held-out error in source pixels with the README's scoring.  pred, gt [N, K, 2]; visible [N, K];
    frame_ids [N] names the frames of ``per_frame_px`` (mean error over each frame's labeled keypoints)."""
    from models.metrics import _mean_per_keypoint, keypoint_errors, score

    s = score(HELD_OUT_METRIC, pred, gt, visible, image_size=1.0)
    err = keypoint_errors(pred, gt)
    _, per_part_px = _mean_per_keypoint(err, visible)
    return {"frames": int(len(gt)), "keypoints": int(visible.sum()),
            "mean_error_px": s["mean_error_px"], "median_error_px": s["median_error_px"], "pck": s["value"],
            "per_bodypart_px": {n: float(v) for n, v in zip(card.keypoints, per_part_px)},
            "per_bodypart_pck": {n: float(v) for n, v in zip(card.keypoints, s["per_keypoint"])},
            "per_frame_px": {f: float(e[v].mean()) for f, e, v in zip(frame_ids, err, visible) if v.any()},
            "scoring": "PCK: error <= max(0.1 x largest side of the frame's labeled-keypoint box, 20 px)"}


def print_held_out(report: dict, out=None) -> None:
    """The held-out report as text, to ``out`` (default: the sys.stdout of the moment, not of the import)."""
    out = out or sys.stdout
    print(f"held-out: {report['frames']} frames, {report['keypoints']} labeled keypoints: mean error "
          f"{report['mean_error_px']:.1f} px, median {report['median_error_px']:.1f} px, PCK {report['pck']:.1f} %",
          file=out)
    for name, px in report["per_bodypart_px"].items():
        if np.isfinite(px):
            print(f"  {name:20s} {px:7.1f} px   PCK {report['per_bodypart_pck'][name]:5.1f} %", file=out)
    if "one_crop" in report:
        alone = report["one_crop"]
        print(f"  (the crop alone, without test-time crops: mean error {alone['mean_error_px']:.1f} px, median "
              f"{alone['median_error_px']:.1f} px, PCK {alone['pck']:.1f} %)", file=out)
    confidence = report.get("confidence", {})
    auroc, raw = confidence.get("auroc_likelihood_right"), confidence.get("auroc_uncalibrated")
    if auroc is not None:
        which = "calibrated likelihood (out-of-fold)" if confidence.get("likelihood", "").startswith("calibrated") \
            else "likelihood"
        print(f"{which} as a predictor of a right keypoint: AUROC {auroc:.2f} (0.5: chance; reliability.png)"
              + (f"; the model's own certainty alone {raw:.2f}" if raw is not None and raw != auroc else ""),
              file=out)




def right_keypoints(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(right, scored), both [N, K] bool: the keypoint is within the PCK threshold of ``HELD_OUT_METRIC``
    (max(0.1 x the frame's labeled-box side, 20 px)); scored: labeled and predicted.  pred, gt [N, K, 2]."""
    from models.metrics import normaliser

    v = np.asarray(visible, bool)
    threshold = np.maximum(HELD_OUT_METRIC.alpha * normaliser(HELD_OUT_METRIC, gt, v, 1.0),
                           HELD_OUT_METRIC.min_threshold_px)
    err = np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)
    return err <= threshold[:, None], v & np.isfinite(err)


def confidence_report(likelihood: np.ndarray, pred: np.ndarray, gt: np.ndarray, visible: np.ndarray,
                      bins: int = 5) -> dict:
    """How well the likelihood tells right keypoints from wrong ones on held-out frames.

    likelihood [N, K]; pred, gt [N, K, 2] source pixels; visible [N, K].  "Wrong" is the PCK rule of
    ``HELD_OUT_METRIC`` (error above max(0.1 x the frame's labeled-box side, 20 px)).  Returns the AUROC of the
    likelihood for "right" (1.0: every right keypoint has a higher likelihood than every wrong one; 0.5: no
    better than chance; None when all are right or all wrong) and the reliability table: per likelihood bin of
    equal width, the keypoints in it and the fraction of them that are right (what a pcutoff in that bin keeps).
    """
    from sklearn.metrics import roc_auc_score

    right_all, scored = right_keypoints(pred, gt, visible)
    scored &= np.isfinite(likelihood)
    right = right_all[scored]
    lk = np.asarray(likelihood, np.float64)[scored]
    auroc = float(roc_auc_score(right, lk)) if 0 < right.sum() < right.size else None
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(lk, edges[1:-1]), 0, bins - 1)
    table = [{"likelihood": [round(float(edges[b]), 6), round(float(edges[b + 1]), 6)],
              "keypoints": int((which == b).sum()),
              "right": float(right[which == b].mean()) if (which == b).any() else None} for b in range(bins)]
    return {"keypoints": int(scored.sum()), "right": float(right.mean()) if right.size else None,
            "auroc_likelihood_right": auroc, "reliability": table,
            "rule": "right: error <= max(0.1 x largest side of the frame's labeled-keypoint box, 20 px)"}


def draw_reliability(report: dict, path, title: str = "") -> None:
    """A reliability plot (PNG) of ``confidence_report``: for each likelihood bin, a bar as high as the fraction
    of its keypoints that are right (the diagonal: a calibrated likelihood), the count written on it."""
    from PIL import Image, ImageDraw

    from pipeline.atomic import atomic_path

    w, h, left, bottom, top = 480, 360, 60, 50, 40
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    x = lambda p: left + p * (w - left - 20)                        # noqa: E731  likelihood -> pixel
    y = lambda f: h - bottom - f * (h - bottom - top)               # noqa: E731  fraction right -> pixel
    d.line([(x(0), y(0)), (x(1), y(1))], fill=(170, 170, 170), width=1)
    for b in report["reliability"]:
        lo, hi = b["likelihood"]
        if b["right"] is not None:
            d.rectangle([x(lo) + 3, y(b["right"]), x(hi) - 3, y(0)], fill=(70, 130, 180))
        d.text((x(lo) + 6, y(b["right"] or 0) - 14), f"n={b['keypoints']}", fill="black")
    d.line([(x(0), y(0)), (x(1), y(0))], fill="black"), d.line([(x(0), y(0)), (x(0), y(1))], fill="black")
    for t in (0.0, 0.5, 1.0):
        d.text((x(t) - 8, y(0) + 6), f"{t:g}", fill="black"), d.text((x(0) - 28, y(t) - 6), f"{t:g}", fill="black")
    d.text((x(0.3), h - 20), "likelihood (bin)", fill="black")
    d.text((4, top - 30), "fraction of keypoints right (PCK rule)", fill="black")
    auroc = report["auroc_likelihood_right"]
    d.text((x(0.02), top - 14), f"{title}  AUROC {auroc:.2f}" if auroc is not None else f"{title}  AUROC n/a",
           fill="black")
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
