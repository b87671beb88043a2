"""Which per-keypoint signal tells a right prediction from a wrong one, on the held-out frames of a `fskp label` run.

Reads a finished `fskp label` output folder (label.json, shots.txt, the run's checkpoints) and the project it
labeled, predicts the held-out labeled frames again in several ways and prints, for each candidate confidence,
the AUROC for "the keypoint is right" (the PCK rule of ../shared/data/README.md: error <= max(0.1 x the frame's
labeled-box side, 20 px)); 0.5 is chance.  Candidates:

- likelihood: sigmoid(v), the edge strength of paper Eq. 7 -- what every output writes today;
- snapshots: agreement between the run's checkpoints (the last one against each earlier one kept: the same
  training seen at two points of its schedule) -- free at training time, one more prediction pass;
- shifts: agreement under test-time crop shifts (+-4 % of the crop side in x and y) and scales (0.9, 1.1);
- novelty: how unlike the training frames the frame looks (cosine distance of the detector's pooled features to
  the nearest training frame), one value per frame;
- combinations: the mean of the candidates' ranks;
- calibrated: the likelihood `fskp label` writes (jobs/labeling/confidence.py: a logistic regression on the
  certainty and the novelty, fitted on the held-out frames), each frame's value from a fit without it.

Prints figures, asserts nothing.

    .venv/bin/python benchmarks/dlc_reaching.py --variants full        # writes benchmarks/out/dlc_reaching/full
    .venv/bin/python benchmarks/confidence.py --label-out benchmarks/out/dlc_reaching/full
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from label_runs import REACHING, held_out_and_shots, run_summary


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1] of a flat array (ties broken by order)."""
    order = np.argsort(np.argsort(x, kind="stable"), kind="stable")
    return order / max(len(x) - 1, 1)


def checkpoints_of(checkpoint: str) -> list[tuple[int, Path]]:
    """(step, model.pt) of every checkpoint kept beside ``checkpoint`` (the run's last), by step."""
    import torch

    found = []
    for folder in sorted(Path(checkpoint).parent.glob("checkpoint_*")):
        model = folder / "model.pt"
        if model.exists():
            found.append((int(torch.load(model, map_location="cpu", weights_only=True)["step"]), model))
    return sorted(found)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", default=str(REACHING))
    p.add_argument("--label-out", required=True, help="a finished `fskp label` output folder")
    args = p.parse_args()

    from sklearn.metrics import roc_auc_score

    from jobs.inference import jittered_boxes, predict_frames, predict_views
    from jobs.labeling.confidence import fit_calibration, novelty
    from jobs.labeling.inputs import read_dlc_project
    from jobs.labeling.scoring import right_keypoints
    from models.precision import machine_summary

    out = Path(args.label_out)
    summary = run_summary(out)
    inp = read_dlc_project(args.project)
    held, train = held_out_and_shots(inp, summary)
    crop = tuple(summary["crop_box"])
    sources = [i.source for i in held]
    gt, visible = np.stack([i.keypoints for i in held]), np.stack([i.visible for i in held])

    base = predict_frames(summary["checkpoint"], sources + [i.source for i in train], crop, progress=False)
    at = base.index()
    rows = [at[str(Path(s))] for s in sources]
    pred = base.keypoints[rows]
    right_all, scored = right_keypoints(pred, gt, visible)
    right = right_all[scored]

    signals: dict[str, np.ndarray] = {"likelihood": (1.0 - base.uncertainty[rows])[scored]}
    steps = checkpoints_of(summary["checkpoint"])
    for step, model in steps[:-1]:
        other = predict_frames(model, sources, crop, progress=False)
        signals[f"snapshots (step {step} vs {steps[-1][0]})"] = -np.linalg.norm(
            other.keypoints[[other.index()[str(Path(s))] for s in sources]] - pred, axis=-1)[scored]
    spread = [np.linalg.norm(other.keypoints[[other.index()[str(Path(s_))] for s_ in sources]] - pred, axis=-1)
              for other in predict_views(summary["checkpoint"], sources, jittered_boxes(crop)[1:], progress=False)]
    signals["shifts (+-4 %, x0.9 / x1.1)"] = -np.mean(spread, axis=0)[scored]
    train_emb = base.embedding[[at[str(Path(i.source))] for i in train]]
    frame_novelty = novelty(base.embedding[rows], train_emb)
    signals["novelty (per frame)"] = -np.broadcast_to(frame_novelty[:, None], visible.shape)[scored]
    calibration, out_of_fold = fit_calibration(base.uncertainty[rows], base.embedding[rows], train_emb,
                                               right_all, scored)
    names = list(signals)
    if calibration is not None:           # what `fskp label` writes, judged as its held_out.json judges it
        signals["calibrated: certainty + novelty (fskp label's likelihood, out-of-fold)"] = out_of_fold[scored]
    agreement = [n for n in names if n.startswith(("snapshots", "shifts"))]
    signals["rank mean: " + " + ".join(n.split(" ")[0] for n in agreement)] = np.mean(
        [ranks(signals[n]) for n in agreement], axis=0)
    signals["rank mean: " + ", ".join(n.split(" ")[0] for n in names)] = np.mean([ranks(signals[n]) for n in names],
                                                                                axis=0)

    print(f"{out}: {len(held)} held-out frames, {int(scored.sum())} labeled keypoints, {int((~right).sum())} wrong "
          f"({100 * (~right).mean():.0f} %); {machine_summary()}")
    print("| confidence | AUROC for a right keypoint |")
    print("| --- | ---: |")
    for name, values in signals.items():
        print(f"| {name} | {roc_auc_score(right, values):.3f} |")


if __name__ == "__main__":
    main()
