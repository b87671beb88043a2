"""Search the loss coefficients on validation splits with Ray Tune (paper §3.6); the best set goes to MLflow.

The paper weighs L_few-shot (Eq. 2), L_recon (Eq. 9), L_2d-geo (Eq. 3) and L_3d-geo (Eq. 5) by
(1, 1, 1, 0.1), "decided by the validation sets" and shared by all datasets.  Each Tune trial here is one
coefficient set: it trains the full method on every --datasets entry (k-means shots, --shots) and scores the
final model on that dataset's val split; the trial's objective is the mean validation error over the
datasets (NME, or 100 - PCK), lower is better.  Validation is used only here: no training run ever picks a
model by it (a run's result is its last model).

The few-shot coefficient stays 1: Adam's update does not change when every loss is scaled by one factor, so
only the ratios matter.  The other three are drawn log-uniformly from --range by Tune's seeded random search
(BasicVariantGenerator); the paper's set is always the first trial.  Every training is an MLflow run nested
under the search's run, which records each trial's coefficients and objective (trials.json) and the best set.

Examples:
  fskp tune-coefficients --datasets cub,wflw --shots 10 --num-samples 16 --iterations 5000 --gpu --gpu-fraction 0.5
  fskp tune-coefficients --datasets data/my_prepared --shots 10 --num-samples 4 --smoke-test
"""
from __future__ import annotations

HELP = "search the four loss coefficients on validation splits (Ray Tune); log the best set to MLflow"

SEARCH_KIND = "coefficient-search"
PAPER_COEFFICIENTS = (1.0, 1.0, 1.0, 0.1)


def register(p):
    from jobs.commands.reproduce import add_grid_options
    from jobs.commands.train import add_train_options

    g = p.add_argument_group("search")
    g.add_argument("--datasets", required=True, help="comma-separated card names or prepared dataset folders; "
                                                     "each needs a val split")
    g.add_argument("--shots", default="10", help="labeled examples per training (default 10, as the paper)")
    g.add_argument("--num-samples", type=int, default=12, help="coefficient sets to try (default 12)")
    g.add_argument("--range", default="0.01,10", help="low,high of the log-uniform search of the recon, 2D and "
                                                      "3D coefficients (default 0.01,10)")
    g.add_argument("--search-seed", type=int, default=0, help="seed of the random search (default 0)")
    add_grid_options(p)
    add_train_options(p)
    p.set_defaults(experiment="fskp-coefficients")


def _trial(config: dict, base: dict, datasets: list, shots: str, parent_run_id: str) -> None:
    """One coefficient set: train on each dataset, score its val split, report the mean validation error."""
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.evaluation import evaluate_model, load_checkpoint
    from jobs.training import TrainJob, run_training
    from pipeline.prepared import PreparedDataset

    coefficients = (1.0, config["recon"], config["geo2d"], config["geo3d"])
    errors, report = [], {}
    for card, data in datasets:
        job = TrainJob(**{**base, "data": data, "shots": shots, "variant": "full", "selection": "kmeans",
                          "coefficients": coefficients})
        result = run_training(job, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()])
        if result.error:
            raise RuntimeError(f"{card}: MLflow run {result.run_id} failed: {result.error}")
        ds = PreparedDataset(data)
        model, _ = load_checkpoint(result.checkpoint_path, card=ds.card)
        val = evaluate_model(model, ds, split="val")["metrics"]
        MlflowClient(job.tracking_uri).log_batch(result.run_id, metrics=[_metric(k, v) for k, v in val.items()])
        key = next(k for k in val if k.count("/") == 1 and k.split("/")[1].split("_")[0] in ("nme", "pck"))
        errors.append(val[key] if key == "val/nme" else 100.0 - val[key])
        report[f"{card}/{key}"] = val[key]
    tune.report({"objective": sum(errors) / len(errors), **report})


def _metric(key: str, value: float):
    import time

    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), 0)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    from mlflow.tracking import MlflowClient
    from ray import tune

    from jobs.commands.reproduce import train_options
    from jobs.resources import TRIAL_DRIVER_CPUS
    from jobs.grid import Cell, check_shots, parse_list
    from jobs.sweep import check_cells, check_data, init_ray, resolve_dataset, size_trials
    from jobs.tracking import resolve_tracking_uri
    from pipeline.prepared import PreparedDataset

    options = train_options(args)
    shots = check_shots(args.shots)
    low, high = (float(x) for x in args.range.split(","))
    if not 0 < low < high:
        raise ValueError(f"--range needs 0 < low < high, got {args.range!r}")
    datasets = [resolve_dataset(d, args.data_root) for d in parse_list(args.datasets)]
    if not datasets:
        raise ValueError("--datasets names no dataset")
    check_data([Cell(card, shots, data=data) for card, data in datasets])
    check_cells([Cell(card, shots, data=data) for card, data in datasets], options)    # before Ray starts
    for card, data in datasets:
        if PreparedDataset(data).count("val") == 0:
            raise ValueError(f"{data}: the prepared dataset of {card!r} has no val split; the coefficient search "
                             f"scores validation images only (never the test split)")
    uri = resolve_tracking_uri(options.get("tracking_uri"))
    storage = options.get("storage_path") or "runs"
    storage = storage if "://" in storage else str(Path(storage).resolve())
    base = {**options, "tracking_uri": uri, "storage_path": storage}
    datasets = [(card, str(Path(data).resolve())) for card, data in datasets]

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(options["experiment"])
    exp_id = exp.experiment_id if exp else client.create_experiment(options["experiment"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = client.create_run(exp_id, run_name=f"coefficients-{stamp}", tags={"fskp.kind": SEARCH_KIND}).info.run_id
    for k, v in {"datasets": ",".join(c for c, _ in datasets), "shots": shots, "num_samples": args.num_samples,
                 "range": args.range, "search_seed": args.search_seed, "iterations": options["iterations"],
                 "backbone": options["backbone"]}.items():
        client.log_param(parent, k, str(v))

    init_ray(args.num_cpus)
    plan, base = size_trials(base, args.max_concurrent, TRIAL_DRIVER_CPUS)
    print(f"at most {plan.concurrent} trials at once: {plan.note}", flush=True)
    space = {name: tune.loguniform(low, high) for name in ("recon", "geo2d", "geo3d")}
    search = tune.search.BasicVariantGenerator(
        points_to_evaluate=[dict(zip(("recon", "geo2d", "geo3d"), PAPER_COEFFICIENTS[1:]))],
        random_state=args.search_seed)
    trainable = tune.with_resources(tune.with_parameters(_trial, base=base, datasets=datasets, shots=shots,
                                                         parent_run_id=parent), {"CPU": TRIAL_DRIVER_CPUS})
    tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(
        search_alg=search, num_samples=args.num_samples,
        max_concurrent_trials=plan.concurrent),
        run_config=tune.RunConfig(name=f"coefficients-{stamp}", storage_path=storage,
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=1))
    try:
        grid = tuner.fit()
    except BaseException:
        client.set_terminated(parent, "KILLED")
        raise
    trials = []
    for r in grid:
        metrics = r.metrics or {}
        trials.append({"coefficients": [1.0, r.config["recon"], r.config["geo2d"], r.config["geo3d"]],
                       "objective": metrics.get("objective") if r.error is None else None,
                       "val": {k: v for k, v in metrics.items() if "/val/" in k},
                       "error": str(r.error).strip().splitlines()[-1] if r.error is not None else None})
    trials.sort(key=lambda t: (t["objective"] is None, t["objective"] or 0.0))
    client.log_text(parent, json.dumps(trials, indent=1), "trials.json")
    scored = [t for t in trials if t["objective"] is not None]
    for t in trials:
        shown = "failed: " + t["error"] if t["objective"] is None else f"mean val error {t['objective']:.3f}"
        print(" ".join(f"{c:.3g}" for c in t["coefficients"]) + f"   {shown}")
    if not scored:
        client.set_terminated(parent, "FAILED")
        print("fskp tune-coefficients: every trial failed")
        return 1
    best = scored[0]
    client.log_param(parent, "best_coefficients", ",".join(f"{c:.4g}" for c in best["coefficients"]))
    client.log_metric(parent, "best/objective", best["objective"])
    client.set_terminated(parent, "FINISHED" if len(scored) == len(trials) else "FAILED")
    print(f"best coefficients (few-shot, recon, 2D, 3D): {','.join(f'{c:.4g}' for c in best['coefficients'])}"
          f"  mean val error {best['objective']:.3f}; MLflow run {parent} (experiment {options['experiment']})")
    print(f"use them with: fskp reproduce ... --coefficients {','.join(f'{c:.4g}' for c in best['coefficients'])}")
    return 0
