"""How the heatmaps are read: the same heatmaps of finished `fskp label` runs, decoded several ways.

For each `fskp label` output folder given (label.json, the run's checkpoint), predicts its held-out labeled
frames once -- the crop and its six test-time copies (jobs/inference.py ``jittered_boxes``) -- and decodes the
heatmaps with Eq. 1 over the whole map (what training optimises and `fskp label` writes), Eq. 1 over a window
of (2r+1)^2 heatmap pixels around the peak (models/detector.py ``local_soft_argmax``), and the arg-max with
Xiao et al.'s quarter-pixel shift; and how far Eq. 1's weights spread around the keypoint.  Each is scored from the crop alone and as the median of the seven crops,
with the scoring of ../shared/data/README.md; then the paired difference to Eq. 1 over the folders.  Nothing
is trained.  Prints figures, asserts nothing.

    .venv/bin/python benchmarks/decoding.py benchmarks/out/ref_seed0/full benchmarks/out/ref_seed1/full ...
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from label_runs import held_out_and_shots, read_run_folders, run_summary

RADII = (1, 2, 3)


def heatmaps_of(folder: Path, project) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """(held-out labeled images, heatmaps [N, V, K, h, w], crops [N, V, 4] in source px) of one run."""
    import torch
    from PIL import Image

    from jobs.evaluation import load_checkpoint
    from jobs.inference import jittered_boxes
    from models.precision import resolve_precision
    from pipeline.pool import cut_views

    summary = run_summary(folder)
    held, _ = held_out_and_shots(project, summary)
    model, _ = load_checkpoint(summary["checkpoint"])
    detector = model.detector.inference_copy()
    autocast = resolve_precision("auto", "cpu").autocast_dtype
    boxes = jittered_boxes(summary["crop_box"])
    maps, crops = [], []
    for image in held:
        with Image.open(image.source) as im:
            views, crop = cut_views(np.asarray(im.convert("RGB")), summary["size"], None, boxes)
        x = torch.from_numpy(views).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode(), torch.autocast("cpu", dtype=autocast or torch.float32,
                                                    enabled=autocast is not None):
            maps.append(detector.maps(x).chunk(3, dim=1)[0].float())                  # heatmaps [V, K, h, w]
        crops.append(crop)
    return held, torch.stack(maps), np.stack(crops)


def decodings(heatmaps) -> dict[str, np.ndarray]:
    """{name: keypoints [N, V, K, 2] in [-1, 1]} for heatmaps [N, V, K, h, w]."""
    from models.detector import argmax_decode, local_soft_argmax, soft_argmax

    n, v, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n * v, k, h, w)
    out = {"Eq. 1, whole map": soft_argmax(flat)[0]}
    out.update({f"Eq. 1, {2 * r + 1}x{2 * r + 1} window": local_soft_argmax(flat, r) for r in RADII})
    out["arg-max + quarter pixel"] = argmax_decode(flat)
    return {name: kp.reshape(n, v, k, 2).numpy() for name, kp in out.items()}


def spread_px(heatmaps, crops: np.ndarray) -> float:
    """Median over the crops' keypoints of the spread of Eq. 1's weights w(p): sqrt(sum_p w(p) |p - k|^2), in
    source pixels.  heatmaps [N, V, K, h, w] (the crop's own view, V = 0, is used), crops [N, V, 4]."""
    from models.detector import pixel_centres

    hm = heatmaps[:, 0]
    n, k, h, w = hm.shape
    weights = hm.reshape(n, k, h * w).softmax(-1)
    centres = pixel_centres(h, w)                                                   # [h*w, 2] in [-1, 1]
    mean = weights @ centres
    var = (weights * ((centres[None, None] - mean[..., None, :]) ** 2).sum(-1)).sum(-1)   # [N, K]
    side = (crops[:, 0, 2] - crops[:, 0, 0]) / 2.0                                  # [-1, 1] -> source px
    return float(np.median(var.sqrt().numpy() * side[:, None]))


def evaluate(project, folder: Path) -> dict[str, tuple]:
    """{decoding: (mean, median, PCK from the crop alone, then mean, median, PCK of the median of 7 crops)};
    under "spread", Eq. 1's weights' spread in source px (``spread_px``)."""
    from jobs.labeling.scoring import held_out_report

    held, heatmaps, crops = heatmaps_of(folder, project)
    gt, visible = np.stack([i.keypoints for i in held]), np.stack([i.visible for i in held])
    scale = (crops[..., 2] - crops[..., 0]) / 2.0                                    # [N, V]
    out = {}
    for name, kp in decodings(heatmaps).items():
        source = crops[:, :, None, :2] + (kp + 1.0) * scale[..., None, None]          # [N, V, K, 2]
        row = ()
        for pred in (source[:, 0], np.median(source, axis=1)):
            r = held_out_report(project.card, pred, gt, visible)
            row += (r["mean_error_px"], r["median_error_px"], r["pck"])
        out[name] = row
    out["spread"] = spread_px(heatmaps, crops)
    return out


def main() -> None:
    from models.precision import machine_summary

    folders, project = read_run_folders(__doc__)
    results = {folder: evaluate(project, folder) for folder in folders}
    spreads = {folder: rows.pop("spread") for folder, rows in results.items()}
    print(f"\n{machine_summary()}")
    for folder, spread in spreads.items():
        print(f"{folder}: Eq. 1's weights spread {spread:.1f} source px around the keypoint (median over keypoints)")
    print("| run | decoding | crop alone: mean / median / PCK | 7 crops: mean / median / PCK |")
    print("| --- | --- | ---: | ---: |")
    fmt = "{:.1f} / {:.1f} / {:.1f}".format
    for folder, rows in results.items():
        for name, r in rows.items():
            print(f"| {folder} | {name} | {fmt(*r[:3])} | {fmt(*r[3:])} |")
    base = "Eq. 1, whole map"
    print(f"\npaired difference to {base!r}, mean +- std over {len(results)} runs:")
    print("| decoding | crop alone: mean / median / PCK | 7 crops: mean / median / PCK |")
    print("| --- | ---: | ---: |")
    for name in next(iter(results.values())):
        d = np.array([np.subtract(rows[name], rows[base]) for rows in results.values()])
        m, s = d.mean(0), d.std(0, ddof=1) if len(d) > 1 else np.zeros(d.shape[1])
        cell = lambda a, b: " / ".join(f"{x:+.2f} ± {y:.2f}" for x, y in zip(m[a:b], s[a:b]))
        print(f"| {name} | {cell(0, 3)} | {cell(3, 6)} |")


if __name__ == "__main__":
    main()
