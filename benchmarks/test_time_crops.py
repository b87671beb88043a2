"""Test-time crops against the crop alone, on the held-out frames of finished `fskp label` runs.

For each `fskp label` output folder given (label.json, shots.txt, the run's checkpoint), predicts its held-out
labeled frames again with test-time crops (jobs/inference.py predict_frames_tta: the crop, moved by 4 % four
ways and scaled by 0.9 and 1.1, each keypoint the median of the 7) and from the crop alone, and prints for each:
mean / median error and PCK (the scoring of ../shared/data/README.md), and the cross-validated AUROC of the
calibrated likelihood for "the keypoint is right" -- fitted on certainty and novelty (what the crop alone
allows) and with the crops' spread as well (what `fskp label` now fits) -- then the paired differences,
mean +- std over the folders, and the mean error of each crop alone.  The model is not trained again.  Prints
figures, asserts nothing.

    .venv/bin/python benchmarks/test_time_crops.py benchmarks/out/rl_sup_coverage_draw1/round1 ...
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from label_runs import held_out_and_shots, read_run_folders, run_summary


def evaluate(project, folder: Path) -> dict:
    """{"one crop": (mean, median, PCK, AUROC), "test-time crops": (..., AUROC with the spread), "each crop":
    [mean error of each crop alone, in the order of CROP_JITTER]} of one run."""
    from jobs.inference import predict_frames_tta
    from jobs.labeling.confidence import fit_calibration
    from jobs.labeling.scoring import held_out_report, right_keypoints

    summary = run_summary(folder)
    held, train = held_out_and_shots(project, summary)
    gt, visible = np.stack([i.keypoints for i in held]), np.stack([i.visible for i in held])
    combined, passes = predict_frames_tta(summary["checkpoint"], [i.source for i in held + train],
                                          summary["crop_box"], progress=False)
    alone = passes[0]
    out = {"each crop": [held_out_report(project.card, p.keypoints[[p.index()[str(Path(i.source))] for i in held]],
                                         gt, visible)["mean_error_px"] for p in passes[1:]]}
    for name, preds, spread in (("one crop", alone, None), ("test-time crops", combined, combined.spread)):
        at = preds.index()
        rows = [at[str(Path(i.source))] for i in held]
        reference = preds.embedding[[at[str(Path(i.source))] for i in train]]
        pred = preds.keypoints[rows]
        report = held_out_report(project.card, pred, gt, visible)
        right, scored = right_keypoints(pred, gt, visible)
        calibration, _ = fit_calibration(preds.uncertainty[rows], preds.embedding[rows], reference, right, scored,
                                         None if spread is None else spread[rows])
        auroc = np.nan if calibration is None or calibration.cross_validated_auroc is None else \
            calibration.cross_validated_auroc
        out[name] = (report["mean_error_px"], report["median_error_px"], report["pck"], auroc)
    return out


def main() -> None:
    from jobs.inference import CROP_JITTER
    from models.precision import machine_summary

    folders, project = read_run_folders(__doc__)
    results = {}
    for folder in folders:
        results[folder] = evaluate(project, folder)
        print(f"{folder}: done", flush=True)
    print(f"\n{machine_summary()}")
    print("| run | crop alone: mean / median / PCK / AUROC | test-time crops: mean / median / PCK / AUROC | "
          "difference |")
    print("| --- | ---: | ---: | ---: |")
    fmt = "{:.1f} / {:.1f} / {:.1f} / {:.3f}".format
    for folder, r in results.items():
        print(f"| {folder} | {fmt(*r['one crop'])} | {fmt(*r['test-time crops'])} | "
              f"{fmt(*np.subtract(r['test-time crops'], r['one crop']))} |")
    print("\nmean error of each test-time crop alone (px), against the crop's own:")
    print("| run | the crop | " + " | ".join(f"dx {dx:+g}, dy {dy:+g}, x{s:g}" for dx, dy, s in CROP_JITTER) + " |")
    print("| --- | ---: |" + " ---: |" * len(CROP_JITTER))
    for folder, r in results.items():
        print(f"| {folder} | {r['one crop'][0]:.1f} | " + " | ".join(f"{e:.1f}" for e in r["each crop"]) + " |")
    diff = np.array([np.subtract(r["test-time crops"], r["one crop"]) for r in results.values()])
    print(f"| paired difference, mean +- std over {len(diff)} | | | "
          + " / ".join(f"{m:+.2f} +- {s:.2f}" for m, s in zip(diff.mean(0), diff.std(0, ddof=1) if len(diff) > 1
                                                              else np.zeros(4))) + " |")


if __name__ == "__main__":
    main()
