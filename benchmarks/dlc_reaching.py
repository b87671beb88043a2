"""`fskp label` on the real DeepLabCut project against DeepLabCut 3 and SLEAP, same 10 frames, same scoring.

Trains on the 10 frames the reference runs used, predicts the other 45 labeled frames (190 labeled
keypoints) and scores them in source pixels: a keypoint is correct within 10 % of the largest side of that
frame's labeled-keypoint box, never under 20 px (../shared/data/README.md).  Runs each variant given
(default: full, then supervised) with identical settings and prints one table with the reference rows.

  python benchmarks/dlc_reaching.py                                  # the README's numbers
  python benchmarks/dlc_reaching.py --variants supervised --iterations 300 --size 128   # a quick look
  python benchmarks/dlc_reaching.py --draw 1 --out benchmarks/out/dlc_reaching_draw1    # another frame set
  python benchmarks/dlc_reaching.py --seed 1 --out benchmarks/out/dlc_reaching_seed1    # same frames, another run
  # the offline ImageNet weights (the package fskp installs) for the detector and the perceptual term
  python benchmarks/dlc_reaching.py --backbone efficientnet_lite0 --backbone-weights package \
      --perceptual-network efficientnet_lite0 --perceptual-weights package --out benchmarks/out/dlc_reaching_lite0

``--draw SEED`` trains on 10 frames drawn at random (numpy seed SEED) from the labeled frames that label
a keypoint, instead of the reference runs' frames; the other labeled frames are held out and scored.
DeepLabCut's and SLEAP's rows are for the reference frames only.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from models.config import BATCH_NORM_MODES
from models.precision import machine_summary

FRAMES = "img023,img068,img077,img103,img108,img116,img142,img145,img228,img245"
#: ../shared/data/README.md, measured by the task's authors on a 2-core CPU of this kind (one thread)
REFERENCE = [("DeepLabCut 3.0.2 (resnet_50, defaults, 200 epochs)", 87.6, 30.2, 47.4, "51 min"),
             ("SLEAP (sleap-nn 0.3.5, single-instance UNet, 2,000 steps)", 65.7, 17.6, 58.9, "66 min")]


def main() -> None:
    from jobs.commands.label import LABEL_DEFAULTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--project", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "dlc-reaching"))
    p.add_argument("--variants", default="full,supervised")
    p.add_argument("--iterations", type=int, default=LABEL_DEFAULTS["iterations"])
    p.add_argument("--size", type=int, default=LABEL_DEFAULTS["size"])
    p.add_argument("--backbone", default=LABEL_DEFAULTS["backbone"])
    p.add_argument("--backbone-weights", default="auto",
                   help="fskp label --backbone-weights (auto: the hub, else an installed package, else random)")
    p.add_argument("--perceptual-network", default=LABEL_DEFAULTS["perceptual_vit"])
    p.add_argument("--perceptual-weights", default="auto")
    p.add_argument("--batch-norm", default="batch", choices=BATCH_NORM_MODES, help="fskp label --batch-norm")
    p.add_argument("--precision", default=LABEL_DEFAULTS["precision"],
                   help="auto (fskp label's default: bf16 only where the CPU runs it natively and faster) | bf16 | fp32")
    p.add_argument("--threads", type=int, help="torch threads (default: fskp label's, the CPUs Ray gives the worker)")
    p.add_argument("--margin", type=float, default=0.1, help="crop margin per side (fskp label --margin)")
    p.add_argument("--heatmap-target", type=float, default=LABEL_DEFAULTS["heatmap_target"],
                   help="coefficient of the KL term from a Gaussian at each label to Eq. 1's weights (0: off)")
    p.add_argument("--out", default="benchmarks/out/dlc_reaching")
    p.add_argument("--draw", type=int, help="train on 10 frames drawn with this seed instead of the reference's")
    p.add_argument("--seed", type=int, default=0, help="training seed (fskp label --seed): same frames, another run")
    p.add_argument("--report-only", action="store_true", help="print the table from an earlier run's --out")
    args = p.parse_args()

    from jobs.labeling.inputs import read_dlc_project
    from jobs.labeling.job import label

    out = Path(args.out).resolve()
    project = read_dlc_project(args.project)
    frames = FRAMES.split(",") if args.draw is None else drawn_frames(project, args.draw)
    print(f"training frames ({'reference' if args.draw is None else f'draw {args.draw}'}): {', '.join(frames)}",
          flush=True)
    rows, checks = [], []
    for variant in args.variants.split(","):
        if args.report_only:
            saved = json.loads((out / variant / "benchmark.json").read_text())
            r, minutes = saved["held_out"], saved["minutes"]
            for name, key in (("iterations", "iterations"), ("size", "size"), ("backbone", "backbone"),
                              ("precision", "precision"), ("threads", "threads"), ("seed", "seed")):
                setattr(args, name, saved["options"][key])
            for name, key, before in (("backbone_weights", "backbone_weights", "auto"),
                                      ("perceptual_network", "perceptual_vit", LABEL_DEFAULTS["perceptual_vit"]),
                                      ("perceptual_weights", "perceptual_weights", "auto"),
                                      ("batch_norm", "batch_norm", "batch"),
                                      ("heatmap_target", "heatmap_target", 0.0)):   # runs from before the options
                setattr(args, name, saved["options"].get(key, before))
            args.margin = saved["margin"]
            rows += label_rows(variant, r, minutes)
            checks.append((variant, *suggestion_check(Path(args.project), out / variant)))
            continue
        options = dict(LABEL_DEFAULTS, iterations=args.iterations, size=args.size, backbone=args.backbone,
                       precision=args.precision, threads=args.threads, variant=variant, unlabeled_batch=4, seed=args.seed,
                       heatmap_target=args.heatmap_target, backbone_weights=args.backbone_weights,
                       perceptual_vit=args.perceptual_network, perceptual_weights=args.perceptual_weights,
                       batch_norm=args.batch_norm, experiment="dlc-reaching", tracking_uri=f"sqlite:///{out}/mlflow.db")
        t0 = time.time()
        result = label(project, out / variant, frames=frames,
                       margin=args.margin, job_options=options, overlay=False, suggestions=20)
        minutes = (time.time() - t0) / 60
        r = result.held_out
        rows += label_rows(variant, r, minutes)
        (out / variant / "benchmark.json").write_text(json.dumps({"options": options, "margin": args.margin,
                                                                   "minutes": minutes,
                                                                   "held_out": r}, indent=2))
        checks.append((variant, *suggestion_check(Path(args.project), out / variant)))
    reference = REFERENCE if args.draw is None else []
    print(f"\ndlc-reaching, 10 labeled frames ({'reference set' if args.draw is None else f'draw {args.draw}'}), "
          f"{r['frames']} held out ({r['keypoints']} keypoints); {args.iterations} iterations, "
          f"{args.size} px, crop margin {args.margin}, {args.backbone} (weights {args.backbone_weights}), "
          f"perceptual {args.perceptual_network} (weights {args.perceptual_weights}), BatchNorm {args.batch_norm}, "
          f"precision {args.precision}, "
          f"threads {args.threads or 'auto'}, seed {args.seed}"
          f"{f', heatmap target {args.heatmap_target}' if args.heatmap_target else ''}; {machine_summary()}")
    print("| system | mean error | median | PCK | time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, mean, median, pck, took in reference + rows:
        print(f"| {name} | {mean:.1f} px | {median:.1f} px | {pck:.1f} % | {took} |")
    for variant, top, everyone in checks:
        print(f"{variant}: the 5 frames suggested first have a mean error of {top:.1f} px; all held-out frames "
              f"{everyone:.1f} px")
        confidence = json.loads((out / variant / "held_out.json").read_text()).get("confidence", {})
        if confidence.get("auroc_likelihood_right") is not None:
            print(f"{variant}: likelihood AUROC for a right keypoint {confidence['auroc_likelihood_right']:.3f} "
                  f"({confidence['likelihood']}); the model's certainty alone "
                  f"{confidence['auroc_uncalibrated']:.3f}")


def label_rows(variant: str, report: dict, minutes: float) -> list[tuple]:
    """Table rows of one `fskp label` run: its predictions (test-time crops by default), and, when it used
    them, the same checkpoint's predictions from the crop alone."""
    rows = [(f"fskp label --variant {variant}", report["mean_error_px"], report["median_error_px"], report["pck"],
             f"{minutes:.0f} min")]
    if "one_crop" in report:
        alone = report["one_crop"]
        rows.append(("  the same model, crop alone (--no-tta)", alone["mean_error_px"], alone["median_error_px"],
                     alone["pck"], ""))
    return rows


def drawn_frames(project, seed: int, n: int = 10) -> list[str]:
    """``n`` labeled frames that label at least one keypoint, drawn without replacement (numpy seed ``seed``)."""
    import numpy as np

    ids = sorted(i.id for i in project.labeled if i.visible.any())
    return sorted(np.random.default_rng(seed).choice(ids, size=n, replace=False).tolist())


def truth_and_predictions(project: Path, out: Path) -> tuple[dict, dict]:
    """The project's labeled frames and the machine labels `fskp label` wrote to ``out``, by frame id."""
    from pipeline.converters import dlc

    card = dlc.card_for(project)
    truth = {f.id: f for path in dlc.label_files(project, None)
             for f in dlc.read_label_file(path, project, card.keypoints)}
    pred_csv = next((out / "predictions").glob("labeled-data_*.csv"))
    pred = {f.id: f for f in dlc.read_label_file(pred_csv, project, card.keypoints, pcutoff=0.0)}
    return truth, pred


def suggested_frames(out: Path, n: int) -> list[str]:
    """The first ``n`` frames of the suggestions.csv in ``out``, as frame ids (reachingvideo1/img123)."""
    import csv

    with open(out / "suggestions.csv", newline="") as f:
        return [Path(r["source"]).parent.name + "/" + Path(r["source"]).stem for r in csv.DictReader(f)][:n]


def frame_error(truth, pred) -> float:
    """Mean error (source px) over the keypoints ``truth`` labels; truth, pred: frames of ``truth_and_predictions``."""
    import numpy as np

    return float(np.linalg.norm(truth.keypoints - pred.keypoints, axis=1)[truth.visible].mean())


def suggestion_check(project: Path, out: Path, top: int = 5) -> tuple[float, float]:
    """Mean per-frame error of the first ``top`` suggested frames vs of every held-out frame (source px)."""
    import numpy as np

    truth, pred = truth_and_predictions(project, out)
    shots = {Path(line).stem for line in (out / "shots.txt").read_text().split()}
    error = {i: frame_error(t, pred[i]) for i, t in truth.items() if Path(i).name not in shots and t.visible.any()}
    picked = [error[i] for i in suggested_frames(out, top) if i in error]
    return float(np.mean(picked)), float(np.mean(list(error.values())))


if __name__ == "__main__":
    main()
