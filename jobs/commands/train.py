"""Train a detector on a prepared dataset with Ray Train, evaluate it, and record one MLflow run.

The labeled shots come from the training split (k-means choice by default, paper §3.6); the whole training
split (or --pool: a folder of images or a video) is the unlabeled pool, streamed by Ray Data and sharded
across workers. Paper settings are the defaults (20k iterations, resnet50, 128 px, coefficients 1,1,1,0.1).

Examples:
  fskp train --data data/synth_face --shots 10 --variant full --iterations 2000 --backbone resnet18
  fskp train --data data/wflw --shots 10 --workers 4 --gpu             # on a cluster: 4 GPU workers
  mlflow ui --backend-store-uri sqlite:///mlflow.db                     # browse the runs
"""
from __future__ import annotations

import argparse

from models.config import BATCH_NORM_MODES
from models.variants import VARIANTS

HELP = "train and evaluate one model (Ray Train; one MLflow run)"


def add_train_options(p) -> None:
    """Options shared by `fskp train`, `fskp reproduce` and `fskp label`."""
    g = p.add_argument_group("training")
    g.add_argument("--iterations", type=int, default=20000, help="training iterations (paper: 20000)")
    g.add_argument("--backbone", default="resnet50", help="timm backbone (paper: resnet50; resnet18 is 4x cheaper)")
    g.add_argument("--size", type=int, default=128, help="working resolution; must match the prepared data")
    g.add_argument("--seed", type=int, default=0, help="random seed (paper: 0)")
    g.add_argument("--coefficients", default="1,1,1,0.1",
                   help="loss coefficients: few-shot, reconstruction, 2D, 3D (paper §3.6: 1,1,1,0.1)")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    g.add_argument("--heatmap-target", type=float, default=0.0, metavar="COEFFICIENT",
                   help="not the paper's: add this times KL(Gaussian at each label || Eq. 1's weights) on the labeled "
                        "images, so each heatmap is one narrow mode at its label (default 0, off; fskp label: 0.2; the xiao "
                        "variants regress heatmaps already and ignore it; README: 'The heatmap target, measured')")
    g.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="fp32",
                   help="fp32 (default here: the paper trains in float32, and no measurement yet shows bf16 leaves "
                        "every metric within the seed spread), auto: bf16 autocast where the device runs it natively "
                        "and faster (GPUs with bf16, CPUs with AMX or a measured gain), else float32; bf16; printed "
                        "and recorded in MLflow (fskp label and quickstart use auto)")
    g.add_argument("--perceptual-network", "--perceptual-vit", dest="perceptual_vit", default="vit_small_patch8_224.dino",
                   help="timm network of the perceptual loss (Eq. 9): a ViT, the paper's keys + [CLS] term "
                        "(default: [75]'s self-supervised DINO ViT-S/8, a 16x16 token grid at 128 px; "
                        "vit_tiny_patch16_224 is far cheaper on a CPU), or a CNN, the offline variant "
                        "(efficientnet_lite0 with --perceptual-weights package)")
    g.add_argument("--backbone-weights", default="auto", metavar="auto|hub|package|none|FILE",
                   help="the detector backbone's weights: hub (timm's pretrained, error if they cannot be had), "
                        "package (a registry package's, offline: efficientnet_lite0 with fskp[offline-weights]), "
                        "none (random), a state-dict file, or auto (hub, else package, else random with a "
                        "warning); recorded in MLflow")
    g.add_argument("--perceptual-weights", default="auto", metavar="auto|hub|package|none|FILE",
                   help="the perceptual network's weights (Eq. 9), chosen the same way")
    g.add_argument("--selection-backbone", default="vgg16",
                   help="timm network whose features k-means clusters to choose the shots (paper §3.6: vgg16)")
    g.add_argument("--selection-weights", default="auto", metavar="auto|hub|package|none|FILE",
                   help="its weights, chosen the same way (offline: --selection-backbone efficientnet_lite0 "
                        "--selection-weights package)")
    g.add_argument("--batch-norm", choices=BATCH_NORM_MODES, default="batch",
                   help="batch (default): the detector's BatchNorm normalises by each training batch, labeled and "
                        "unlabeled images together; frozen-backbone: the backbone's keeps its pretrained statistics "
                        "(needs pretrained --backbone-weights: refused before training where the backbone would "
                        "start random); frozen: every detector BatchNorm keeps its stored ones "
                        "(README: Accuracy, 'The detector's BatchNorm frozen')")
    g.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers")
    g.add_argument("--gpu", action="store_true", help="one GPU per worker")
    g.add_argument("--gpu-fraction", type=float, default=1.0, help="share of a GPU per worker (<1 shares GPUs)")
    g.add_argument("--cpus-per-worker", type=float,
                   help="logical CPUs per worker (default: the node's CPUs, less Ray Data's share, split among the "
                        "jobs that run at once; see jobs/resources.py)")
    g.add_argument("--threads", type=int, help="torch threads per worker (default: the CPUs Ray gave it, rounded up)")
    g.add_argument("--stall-timeout", type=float, default=600.0,
                   help="seconds without an unlabeled batch (or a collective between workers) before the run stops "
                        "with an error saying what is starved (default 600)")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="iterations between checkpoints")
    g.add_argument("--log-every", type=int, default=50, help="iterations between progress lines")
    g.add_argument("--experiment", default="fskp", help="MLflow experiment name")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    g.add_argument("--storage-path", help="Ray Train storage for checkpoints (shared storage on a cluster; default ./runs)")


def add_init_option(p) -> None:
    p.add_argument("--init-from", metavar="RUN|CHECKPOINT|LABEL_OUT",
                   help="start from the weights of an earlier run (MLflow run id, checkpoint folder / model.pt, or "
                        "an fskp label output folder) instead of the pretrained backbone: a refine round continues "
                        "from the last; same keypoints, backbone, size and perceptual network, checked before training")


def resolve_init(spec: str | None, tracking_uri: str | None = None) -> str | None:
    """The checkpoint ``--init-from`` names: an ``fskp label`` output folder's (its label.json), a checkpoint
    path or URI as given, or an MLflow run id's ``checkpoint_path`` tag."""
    import json
    from pathlib import Path

    from jobs.commands.export import resolve
    from pipeline.storage import is_uri

    if not spec:
        return None
    if (Path(spec) / "label.json").is_file():
        return json.loads((Path(spec) / "label.json").read_text())["checkpoint"]
    if is_uri(spec):
        return spec
    try:
        return resolve(spec, tracking_uri)[0]
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--init-from {spec}: neither an fskp label output folder, a checkpoint on disk nor "
                                f"an MLflow run ({str(e).split('(', 1)[-1].rstrip(')')})") from None


def parse_coefficients(text: str) -> tuple[float, float, float, float]:
    """``--coefficients few-shot,recon,2D,3D`` (§3.6) -> four floats; ValueError naming the option otherwise."""
    coefficients = tuple(float(c) for c in text.split(","))
    if len(coefficients) != 4:
        raise ValueError(f"--coefficients needs 4 numbers (few-shot, recon, 2D, 3D), got {text!r}")
    return coefficients


def job_kwargs(args) -> dict:
    coefficients = parse_coefficients(args.coefficients)
    return dict(iterations=args.iterations, backbone=args.backbone, size=args.size, seed=args.seed,
                coefficients=coefficients, lr=args.lr, precision=args.precision, batch_norm=args.batch_norm,
                heatmap_target=args.heatmap_target,
                perceptual_vit=args.perceptual_vit, backbone_weights=args.backbone_weights,
                perceptual_weights=args.perceptual_weights, selection_backbone=args.selection_backbone,
                selection_weights=args.selection_weights, workers=args.workers, gpu=args.gpu,
                gpu_fraction=args.gpu_fraction, cpus_per_worker=args.cpus_per_worker, threads=args.threads,
                stall_timeout=args.stall_timeout,
                checkpoint_every=args.checkpoint_every, log_every=args.log_every, experiment=args.experiment,
                tracking_uri=args.tracking_uri, storage_path=args.storage_path)


def register(p):
    p.add_argument("--data", required=True, help="prepared dataset folder (fskp prepare / fskp synth)")
    p.add_argument("--shots", default="10", help="labeled examples: a count or a share of the train split (5%%)")
    p.add_argument("--selection", choices=["kmeans", "random"], default="kmeans", help="how shots are chosen")
    p.add_argument("--variant", default="full",
                   choices=list(VARIANTS),
                   help="the method, one of its ablations (paper Table 3), or a baseline: supervised (the same "
                        "detector and few-shot loss on the labeled images alone), xiao (Xiao et al.'s heatmap "
                        "regression recipe) or xiao-depth (xiao plus depth from 3D labels: Table 2's baseline)")
    p.add_argument("--pool", help="unlabeled pool: folder of images or a video (default: the train split)")
    p.add_argument("--fail-at-step", type=int, help=argparse.SUPPRESS)   # tests only: kill rank 0 once
    add_init_option(p)
    add_train_options(p)


def run(args) -> int:
    from jobs.training import TrainJob, run_training

    job = TrainJob(data=args.data, shots=args.shots, selection=args.selection, variant=args.variant,
                   pool=args.pool, fail_at_step=args.fail_at_step,
                   init_from=resolve_init(args.init_from, args.tracking_uri), **job_kwargs(args))
    result = run_training(job)
    if result.error:
        print(f"fskp train: run {result.run_id} failed: {result.error}")
        if result.checkpoint_path:
            print(f"  last good checkpoint: {result.checkpoint_path}")
        return 1
    shown = {k: v for k, v in result.metrics.items() if k.count("/") == 1 and k.startswith("test/")}
    print(f"run {result.run_id}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())))
    print(f"checkpoint: {result.checkpoint_path}")
    return 0
