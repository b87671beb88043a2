"""Reproduce the paper's result grids: one Ray Tune trial per cell, each the Ray Train run of `fskp train`.

A grid is the product of --datasets, --shots, --variants, --selection and --seeds, or a preset that expands
to exactly the cells of one of the paper's tables (read from the dataset cards' paper numbers):
  --table 1  WFLW, SynthesEyes, CUB, ATRW, CarFusion x 1/10/20/50/5%/20%/100% shots x full, supervised
  --table 2  SynthesisAI faces x the same shots x full, xiao-depth (Xiao et al. with depth from 3D labels)
  --table 3  WFLW, ATRW x shots x full and the ablations no-recon, no-2d, no-3d, no-uncertainty, plus
             full with random shots (seeds 0, 1, 2; the paper averages 3 runs; not at 100%)
  --table 4  FFHQ (dlib 68) x 1/10/20/50 x full
  --table 5  LSP x shots x full, supervised
  --table 6  H36M, 300W x 1/10/20/50/500/5000/100% x full, supervised (300W has no 5000 column)
  --table 7  the cells of Table 1 (Table 7 is their other metric: fskp table --metric other)
With --table, the grid options narrow the preset (e.g. --table 1 --datasets wflw --shots 10).

A dataset is a card name, meaning the prepared dataset <data-root>/<name>, or the path of a prepared dataset.
Percent shots are that share of the training split.  Every `fskp train` option applies to every cell;
--gpu with --gpu-fraction 0.25 lets four runs share a GPU, --max-concurrent caps the trials running at once.

Resuming: a sweep whose driver died is resumed by running the same command again.  Cells with a FINISHED
MLflow run on the same data and settings are not trained again; runs left RUNNING by the dead driver are
marked KILLED and their cells trained again.

Examples:
  fskp reproduce --table 1 --dry-run
  fskp reproduce --datasets wflw,cub --shots 10,5% --variants full,supervised --iterations 2000
  fskp reproduce --table 3 --gpu --gpu-fraction 0.25 --max-concurrent 8 --experiment table3
  fskp table --experiment table3
"""
from __future__ import annotations

import os
from pathlib import Path

from jobs.grid import VARIANTS

HELP = "run a grid of trainings (or a paper table's grid) as parallel Ray Tune trials; resumable"

#: --smoke-test: the same code, tiny (Ray examples' convention); explicit options still win
SMOKE_TEST = dict(iterations=4, backbone="resnet18", size=64, log_every=2, checkpoint_every=4,
                  perceptual_vit="vit_tiny_patch16_224", backbone_weights="none", perceptual_weights="none", unlabeled_batch=4)


def add_grid_options(p) -> None:
    """Options shared by `fskp reproduce` and `fskp tune-coefficients`: where the data is, how Ray runs."""
    p.add_argument("--data-root", default="data",
                   help="folder of prepared datasets: a card name NAME means DATA_ROOT/NAME (default ./data)")
    p.add_argument("--max-concurrent", type=int,
                   help="trials running at once (default: as many as the cluster's nodes hold, each trial leaving "
                        "its Ray Data tasks their share)")
    p.add_argument("--cluster-config", help="the cluster's launcher config: its worker node types (max_workers x "
                                            "resources) size the sweep for the nodes the autoscaler can add (default: "
                                            "$FSKP_CLUSTER_CONFIG, or ~/ray_bootstrap_config.yaml on the head)")
    p.add_argument("--num-cpus", type=int, help="logical CPUs of a local Ray instance (default: this machine's; "
                                                "ignored on a cluster); never needed to make progress")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny settings for a quick check: 4 iterations, resnet18, 64 px, a tiny ViT, no pretrained "
                        "weights (options given explicitly still apply)")


def register(p):
    g = p.add_argument_group("grid")
    g.add_argument("--table", type=int, help="preset: the cells of the paper's Table N (1-7)")
    g.add_argument("--datasets", help="comma-separated card names or prepared dataset folders")
    g.add_argument("--shots",
                   help="comma-separated shot counts or shares of the train split: 1,10,20,50,5%%,20%%,100%%")
    g.add_argument("--variants", help="comma-separated: " + ", ".join(VARIANTS) + " (default full)")
    g.add_argument("--selection", help="comma-separated shot selection: kmeans, random (default kmeans)")
    g.add_argument("--seeds", help="comma-separated seeds (default: --seed)")
    g.add_argument("--dry-run", action="store_true", help="list the cells and their state; train nothing")
    add_grid_options(p)
    from jobs.commands.train import add_train_options

    add_train_options(p)


def train_options(args) -> dict:
    """TrainJob fields from the `fskp train` options, with --smoke-test's tiny settings where not given."""
    import argparse

    from jobs.commands.train import add_train_options, job_kwargs

    options = job_kwargs(args)
    if getattr(args, "smoke_test", False):
        defaults = argparse.ArgumentParser(add_help=False)
        add_train_options(defaults)
        defaults = vars(defaults.parse_args([]))
        for key, value in SMOKE_TEST.items():
            if key not in defaults or options.get(key) == defaults[key]:
                options[key] = value
    return options


def grid_cells(args) -> tuple[list, str]:
    """The cells the options ask for, with their data folders; and a one-line description of the grid."""
    from jobs.grid import check_shots, expand_grid, filter_cells, parse_list, table_cells
    from jobs.sweep import attach_data, resolve_dataset

    datasets = [resolve_dataset(d, args.data_root) for d in parse_list(args.datasets)]
    shots = [check_shots(s) for s in parse_list(args.shots)]
    variants, selections = parse_list(args.variants), parse_list(args.selection)
    seeds = [int(s) for s in parse_list(args.seeds)]
    folders = {card: path for card, path in datasets}
    if args.table is not None:
        cells = filter_cells(table_cells(args.table), cards=set(folders), shots=shots, variants=variants,
                             selections=selections, seeds=seeds)
        if not cells:
            raise ValueError(f"the filters leave no cell of paper table {args.table}")
        what = f"paper table {args.table}"
    else:
        cells = expand_grid(datasets, shots, variants or ["full"], selections or ["kmeans"], seeds or [args.seed])
        what = "grid"
    return attach_data(cells, args.data_root, folders), what


def _paper_value(cell, cards: dict):
    from jobs.table import format_number
    from pipeline.card import CardError, load_card
    from pipeline.prepared import PreparedDataset

    if cell.card not in cards:
        try:
            cards[cell.card] = load_card(cell.card)
        except CardError:
            try:
                cards[cell.card] = PreparedDataset(cell.data).card
            except (OSError, ValueError):
                cards[cell.card] = None
    card = cards[cell.card]
    value = card.paper_value(cell.paper_variant, cell.shots) if card and cell.paper_variant else None
    return "-" if value is None else format_number(value)


def print_dry_run(cells, what: str, options: dict) -> None:
    """One line per cell: its grid position, the paper's number, and its state in MLflow or on disk."""
    from pathlib import Path

    from jobs.sweep import is_prepared, plan_sweep
    from jobs.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(options.get("tracking_uri"))
    ready = [c for c in cells if is_prepared(c.data)]
    state = {c: "data missing" for c in cells if c not in ready}
    db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if ready and (db is None or db.exists()):
        plan = plan_sweep(ready, options, options["experiment"], uri)
        state.update({c: f"done ({run_id[:8]})" for c, run_id in plan.done.items()})
        state.update({c: f"running ({run_id[:8]})" for c, run_id in plan.running.items()})
    cards: dict = {}
    print(f"{what}: {len(cells)} cells; experiment {options['experiment']!r} at {uri}")
    print(f"{'dataset':18s} {'shots':>6s} {'variant':15s} {'selection':9s} {'seed':>4s} {'paper':>7s}  "
          f"{'state':16s} data")
    for c in cells:
        print(f"{c.card:18s} {c.shots:>6s} {c.variant:15s} {c.selection:9s} {c.seed:4d} "
              f"{_paper_value(c, cards):>7s}  {state.get(c, 'to train'):16s} {c.data}")


def run(args) -> int:
    from jobs.sweep import run_sweep

    options = train_options(args)
    cells, what = grid_cells(args)
    if args.dry_run:
        print_dry_run(cells, what, options)
        return 0
    if args.cluster_config:                         # read by jobs.resources.cluster_nodes when sizing the sweep
        os.environ["FSKP_CLUSTER_CONFIG"] = str(Path(args.cluster_config).resolve())
    result = run_sweep(cells, options, max_concurrent=args.max_concurrent, num_cpus=args.num_cpus)
    for o in result.outcomes:
        c = o.cell
        shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(o.metrics.items()) if k.count("/") == 1)
        detail = o.error or shown
        print(f"{o.status:17s} {c.card} {c.shots} {c.variant} {c.selection} seed {c.seed}"
              f"{'  run ' + o.run_id if o.run_id else ''}{'  ' + detail if detail else ''}")
    print(f"{len(result.failed)} failed of {len(result.outcomes)} cells; the grid: "
          f"fskp table --experiment {result.experiment}"
          + (f" --tracking-uri {result.tracking_uri}" if options.get("tracking_uri") else ""))
    return 0 if result.ok else 1
