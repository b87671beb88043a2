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


