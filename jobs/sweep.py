"""`fskp reproduce`: the paper's result grids as Ray Tune sweeps of `fskp train` runs, resumable from MLflow.

A grid is a list of ``Cell``s (jobs/grid.py: the vocabulary this module shares with `fskp table`).

Each cell is one Ray Tune trial: a small function trainable (``_cell_trainable``, the Ray Train V2
pattern) that builds the ``TrainJob`` and calls ``jobs.training.run_training``, which starts a
``TorchTrainer`` and records one MLflow run.  The trial itself asks for a fraction of a CPU; the Train
workers ask for their own CPUs and, with ``gpu``, a fraction of a GPU, so several small runs share a GPU.
``max_concurrent`` caps how many trials run at once.

Resuming is done through MLflow, not Tune's experiment state: before launching, the experiment is searched
for a FINISHED run of each cell on the same prepared data (``data_fingerprint``) with the same
result-changing settings (``RESULT_PARAMS``); those cells are not trained again.  Runs left RUNNING by a
sweep whose driver died are marked KILLED and their cells are trained again.  So a sweep whose driver dies
is resumed by running the same command again, and a cell interrupted mid-training continues from its last
checkpoint (its Ray Train run name is fixed by the cell, its settings and its data: ``train_run_name``).
A driver is live while its process runs (same host, /proc) or while it keeps its MLflow heartbeat
(``HEARTBEAT_TAG``, every ``HEARTBEAT_S``; the only sign of life a driver on another host gives).
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs.grid import (CELLS_ARTIFACT, DRIVER_HOST_TAG, DRIVER_PID_TAG, KIND_TAG, Cell, all_runs,
                       cell_order, result_params, same_settings, settings_digest, unique_cells)
from pipeline.prepared import is_prepared
from pipeline.storage import join, resolve_location

DEFAULT_DATA_ROOT = "data"
#: Ray's built-in resource of the head node (trial drivers ask for a sliver of it)
HEAD_NODE_RESOURCE = "node:__internal_head__"
#: the sweep driver's heartbeat: a parent-run tag updated every HEARTBEAT_S seconds (epoch seconds)
HEARTBEAT_TAG, HEARTBEAT_S = "fskp.heartbeat", 30.0


# ---- datasets: a card name under the data root, or the path of a prepared dataset ---------------------------
def missing_data_message(card: str, folder: str | Path) -> str:
    """How to create the prepared dataset a card name points at."""
    from pipeline.converters import FORMATS, converter

    if card.startswith("synth_"):
        return (f"{folder}: no prepared dataset for card {card!r}. Render it with\n"
                f"    fskp synth {card[len('synth_'):]} --n 1000 --out {folder}")
    fmt = next((f for f in FORMATS if getattr(converter(f), "CARD", None) == card), None)
    steps = f"fskp download {card} --root datasets   (fetches it, or says how to obtain it)"
    if fmt:
        steps += f"\n    then: fskp prepare {fmt} --src datasets/{card} --out {folder}"
    else:
        steps += f"\n    then write it to {folder} (no converter for {card!r}: see `fskp cards {card}`)"
    return f"{folder}: no prepared dataset for card {card!r}. Create it with\n    {steps}"


def resolve_dataset(spec: str, data_root: str | Path = DEFAULT_DATA_ROOT) -> tuple[str, str]:
    """A dataset given on the command line → (card name, prepared folder).

    ``spec`` is the path of a prepared dataset (its card comes from its card.yaml), or a card name, which
    means ``<data_root>/<name>``.  The folder of a card name need not exist yet (see ``check_data``).
    """
    from pipeline.card import card_names
    from pipeline.prepared import PreparedDataset

    if is_prepared(spec):
        ds = PreparedDataset(spec)
        return ds.card.name, ds.root
    if spec in card_names():
        return spec, join(str(data_root), spec)
    if Path(spec).exists():
        raise FileNotFoundError(f"{spec} is not a prepared dataset (no meta.json); create one with `fskp prepare`")
    raise ValueError(f"{spec!r} is neither a prepared dataset folder nor a card name "
                     f"(cards: {', '.join(card_names())})")


def attach_data(cells: list[Cell], data_root: str | Path = DEFAULT_DATA_ROOT,
                folders: dict[str, str] | None = None) -> list[Cell]:
    """Give each cell its prepared folder: ``folders[card]`` if given, else ``<data_root>/<card>``."""
    folders = folders or {}
    return [c if c.data else replace(c, data=folders.get(c.card) or join(str(data_root), c.card)) for c in cells]


def check_data(cells: list[Cell]) -> None:
    """Raise one error naming every missing prepared dataset and how to create it."""
    missing = {}
    for c in cells:
        if not is_prepared(c.data):
            missing.setdefault(c.card, c.data)
    if missing:
        raise FileNotFoundError("\n".join(missing_data_message(card, folder) for card, folder in missing.items()))


# ---- resume: what MLflow already holds -----------------------------------------------------------------------
@dataclass
class Plan:
    """Which cells a sweep trains, and why the others are left out."""

    todo: list[Cell]
    done: dict[Cell, str] = field(default_factory=dict)          # cell → FINISHED run id
    running: dict[Cell, str] = field(default_factory=dict)       # cell → run id of a live sweep elsewhere
    stale: list[str] = field(default_factory=list)               # RUNNING run ids of dead drivers


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None if there is no such process.

    Together with the pid this names a process even after its pid is reused (a driver restarted in a
    fresh container often gets the same small pid)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:                     # no /proc (not Linux): fall back to asking the process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "unknown"
    return stat.rsplit(")", 1)[1].split()[19]


def _driver_tags() -> dict[str, str]:
    pid = os.getpid()
    return {DRIVER_HOST_TAG: socket.gethostname(), DRIVER_PID_TAG: f"{pid}:{_process_start(pid)}"}


def _driver_alive(tags: dict, now: float | None = None) -> bool:
    """Whether the sweep driver recorded in a parent run's tags is still running: on this host, its process
    (pid and start time); on another host, a heartbeat younger than three intervals."""
    if tags.get(DRIVER_HOST_TAG) != socket.gethostname():
        try:
            return (now or time.time()) - float(tags.get(HEARTBEAT_TAG, "")) < 3 * HEARTBEAT_S
        except ValueError:
            return False
    pid, _, start = tags.get(DRIVER_PID_TAG, "").partition(":")
    if not pid.isdigit() or int(pid) <= 0 or int(pid) == os.getpid():
        return False
    now = _process_start(int(pid))
    return now is not None and (now == start or "unknown" in (now, start))


def plan_sweep(cells: list[Cell], train_options: dict, experiment: str, tracking_uri: str) -> Plan:
    """Split ``cells`` into those to train and those MLflow already has (see the module docstring)."""
    from mlflow.tracking import MlflowClient

    from pipeline.prepared import PreparedDataset

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return Plan(todo=list(cells))
    wanted = {v: result_params(train_options, v) for v in {c.variant for c in cells}}
    fingerprints = {c.data: PreparedDataset(c.data).fingerprint for c in cells}
    by_key: dict[tuple, list] = {}
    parents: dict[str, object] = {}
    for run in all_runs(client, exp.experiment_id):
        tags = run.data.tags
        if tags.get(KIND_TAG) == "sweep":
            parents[run.info.run_id] = run
        elif "dataset" in tags:
            key = (tags["dataset"], tags.get("shots"), tags.get("variant"), tags.get("selection"), tags.get("seed"))
            by_key.setdefault(key, []).append(run)

    def live(run) -> bool:
        parent = parents.get(run.data.tags.get("mlflow.parentRunId", ""))
        return parent is not None and parent.info.status == "RUNNING" and _driver_alive(parent.data.tags)

    plan = Plan(todo=[])
    for cell in cells:
        same = [r for r in by_key.get(cell.key, [])
                if r.data.params.get("data_fingerprint") == fingerprints[cell.data]
                and same_settings(r.data.params, wanted[cell.variant])]
        finished = [r for r in same if r.info.status == "FINISHED"]
        running = [r for r in same if r.info.status == "RUNNING"]
        if finished:
            plan.done[cell] = max(finished, key=lambda r: r.info.start_time).info.run_id
        elif any(live(r) for r in running):
            plan.running[cell] = next(r for r in running if live(r)).info.run_id
        else:
            plan.todo.append(cell)
        plan.stale += [r.info.run_id for r in by_key.get(cell.key, []) if r.info.status == "RUNNING" and not live(r)]
    plan.stale += [rid for rid, r in parents.items() if r.info.status == "RUNNING" and not _driver_alive(r.data.tags)]
    plan.stale = sorted(set(plan.stale))
    return plan


# ---- the sweep ---------------------------------------------------------------------------------------------
@dataclass
class CellOutcome:
    cell: Cell
    status: str                         # "finished" | "failed" | "done before" | "running elsewhere"
    run_id: str | None = None
    metrics: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class SweepResult:
    experiment: str
    tracking_uri: str
    parent_run_id: str | None
    outcomes: list[CellOutcome]

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


def _cell_trainable(config: dict, cells: dict, base: dict, parent_run_id: str | None) -> None:
    """One Tune trial: the Ray Train run of `fskp train` for the cell named ``config["cell"]`` (Ray Train V2's
    Tune pattern: a function trainable that starts a TorchTrainer and forwards its reports to Tune)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.training import TrainJob, run_training

    cell = Cell(**cells[config["cell"]])
    job = TrainJob(**{**base, "data": cell.data, "shots": cell.shots, "variant": cell.variant,
                      "selection": cell.selection, "seed": cell.seed, "resume": True})
    result = run_training(job, parent_run_id=parent_run_id, callbacks=[TuneReportCallback()])
    if result.error:
        raise RuntimeError(f"{cell.name}: MLflow run {result.run_id} failed: {result.error}")
    final = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    tune.report({**final, "mlflow_run_id": result.run_id})


def cell_progress(log, total: int, metric_of: dict[str, str] | None = None, on_end=None):
    """A Tune callback saying one line per cell event: started, finished (time, test metrics, and whether the
    predictions collapsed), failed; ``log`` None says nothing.  ``metric_of``: cell name → its card's test metric,
    shown first (then the 3D error or the pixel error).  ``on_end()`` runs after each cell ends (e.g. logging
    the results table so far)."""
    from ray.tune import Callback

    from models.metrics import COLLAPSED_SPREAD

    say = log or (lambda _: None)

    class CellProgress(Callback):
        def __init__(self):
            self.started: dict[str, float] = {}
            self.ended = 0

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.time()
            say(f"  started  {_trial_name(trial)}")

        def _end(self, trial, what: str, extra: str = ""):
            self.ended += 1
            minutes = (time.time() - self.started.get(trial.trial_id, time.time())) / 60
            say(f"  {what:8} {_trial_name(trial)} in {minutes:.1f} min{extra} [{self.ended}/{total}]")
            if on_end is not None:
                on_end()

        def on_trial_complete(self, iteration, trials, trial, **info):
            result = trial.last_result or {}
            first = (metric_of or {}).get(_trial_name(trial))
            keys = [first] if first else ["test/nme", "test/pck_0.1"]
            shown = [(k, result[k]) for k in keys + ["test/aligned_3d_error", "test/mean_error_px"]
                     if isinstance(result.get(k), (int, float))][:2]
            spread = result.get("test/spread_ratio")
            collapsed = (f" -- predictions collapsed (spread {spread:.2f} of the labels')"
                         if isinstance(spread, (int, float)) and spread < COLLAPSED_SPREAD else "")
            self._end(trial, "finished", "".join(f", {k} {v:.2f}" for k, v in shown) + collapsed)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._end(trial, "FAILED")

    return CellProgress()


def _metric_names(cells: list[Cell]) -> dict[str, str]:
    """Cell name → the MLflow name of its card's test metric."""
    from jobs.evaluation import metric_name
    from pipeline.prepared import PreparedDataset

    cards = {}
    return {c.name: metric_name(cards.setdefault(c.data, PreparedDataset(c.data).card).metric) for c in cells}


def _trial_name(trial) -> str:
    return trial.config["cell"]


def _trial_dirname(trial) -> str:
    return f"{trial.config['cell']}-{trial.trial_id}"


def size_trials(train_options: dict, max_concurrent: int | None, driver_cpus: float):
    """Trials at once and the CPUs of each Train worker, from the cluster's nodes (jobs/resources.py): each trial
    leaves its Ray Data tasks their share, so no trial waits forever for its data.  Returns the
    ``TrainingPlan`` and the options with ``cpus_per_worker`` set."""
    from jobs.resources import cluster_nodes, plan_training

    plan = plan_training(cluster_nodes(), workers=int(train_options.get("workers", 1)),
                         gpu=bool(train_options.get("gpu")), gpu_fraction=float(train_options.get("gpu_fraction", 1.0)),
                         cpus_per_worker=train_options.get("cpus_per_worker"), concurrent=max_concurrent,
                         driver_cpus=driver_cpus)
    return plan, {**train_options, "cpus_per_worker": plan.cpus_per_worker}


def check_cells(cells: list[Cell], train_options: dict) -> None:
    """Refuse, before Ray starts, every cell whose options cannot train on its dataset: one line per problem."""
    from jobs.training import TrainJob, check_job
    from pipeline.prepared import PreparedDataset

    problems: dict[str, list[str]] = {}
    datasets: dict[str, object] = {}
    for c in cells:
        ds = datasets.setdefault(c.data, PreparedDataset(c.data))
        job = TrainJob(**{**train_options, "data": c.data, "shots": c.shots, "variant": c.variant,
                          "selection": c.selection, "seed": c.seed})
        try:
            check_job(job, ds)
        except ValueError as e:
            lines = [line.strip() for line in str(e).splitlines()[1:]] or [str(e).split(": ", 1)[-1]]
            for line in lines:
                problems.setdefault(line, []).append(c.name)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) found before starting Ray; nothing was trained:\n" + "\n".join(
            f"  {line}  (cells: {', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            for line, names in problems.items()))


def init_ray(num_cpus: int | None = None, worker_output: bool = True) -> None:
    """Connect to the cluster ($RAY_ADDRESS, e.g. under `ray job submit`) or start a local one.
    ``worker_output=False``: the workers' output stays in Ray's log files instead of the console."""
    import ray

    from jobs.raystart import start_ray

    if ray.is_initialized():
        return
    start_ray(logging_level="WARNING", log_to_driver=worker_output,
              **({} if num_cpus is None else {"num_cpus": num_cpus}))
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False


def print_line(text: str) -> None:
    """The sweep's progress output.  Not the builtin ``print`` itself: Ray Tune pickles the callbacks that hold
    ``log``, and cloudpickle refuses a builtin ``print`` once Ray's tqdm integration has replaced
    ``builtins.print`` in the driver (seen in a job started from pytest)."""
    print(text, flush=True)


def run_sweep(cells: list[Cell], train_options: dict, *, experiment: str | None = None,
              tracking_uri: str | None = None, max_concurrent: int | None = None, driver_cpus: float | None = None,
              num_cpus: int | None = None, log=print_line, quiet: bool = False) -> SweepResult:
    """Train every cell MLflow does not already hold, as parallel Ray Tune trials; one MLflow run per cell.

    cells: with ``data`` set (see ``attach_data``).  train_options: ``TrainJob`` fields shared by every
    cell (``jobs.commands.train.job_kwargs``); ``experiment`` and ``tracking_uri`` override theirs.
    max_concurrent: trials at once (default: as many as the cluster's nodes hold, ``size_trials``).
    driver_cpus: what each trial's own process asks for (default ``TRIAL_DRIVER_CPUS``; the Train workers and
    Ray Data tasks ask for theirs).
    num_cpus: CPUs of a local Ray instance started here (ignored when connecting to a cluster).
    quiet: one line per cell event (started, finished with its test metric, failed) instead of Ray's and
    the workers' output, which stays in Ray's log files.
    The sweep gets a parent MLflow run (the grid as cells.json, the results table as table.md); each
    cell's run is nested under it.
    """
    from mlflow.tracking import MlflowClient

    from jobs.resources import TRIAL_DRIVER_CPUS
    from jobs.tracking import code_version, flat_params, resolve_tracking_uri
    from pipeline.prepared import PreparedDataset

    check_data(cells)
    cells = unique_cells(replace(c, data=resolve_location(c.data)) for c in cells)
    check_cells(cells, train_options)
    driver_cpus = TRIAL_DRIVER_CPUS if driver_cpus is None else driver_cpus
    experiment = experiment or train_options.get("experiment") or "fskp"
    tracking_uri = resolve_tracking_uri(tracking_uri or train_options.get("tracking_uri"))
    storage = resolve_location(train_options.get("storage_path") or "runs")
    base = {**{k: v for k, v in train_options.items() if k not in ("data", "shots", "variant", "selection", "seed")},
            "experiment": experiment, "tracking_uri": tracking_uri, "storage_path": storage}

    plan = plan_sweep(cells, base, experiment, tracking_uri)
    client = MlflowClient(tracking_uri)
    for run_id in plan.stale:
        client.set_terminated(run_id, status="KILLED")
    if plan.stale:
        log(f"marked {len(plan.stale)} run(s) left RUNNING by a dead sweep driver as KILLED")
    outcomes = [CellOutcome(c, "done before", run_id) for c, run_id in plan.done.items()]
    outcomes += [CellOutcome(c, "running elsewhere", run_id) for c, run_id in plan.running.items()]
    log(f"{len(cells)} cells: {len(plan.done)} already finished in MLflow, {len(plan.running)} running in "
        f"another live sweep, {len(plan.todo)} to train (experiment {experiment!r}, {tracking_uri})")
    if not plan.todo:
        return SweepResult(experiment, tracking_uri, None, _ordered(outcomes))

    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = client.create_run(exp_id, run_name=f"sweep-{stamp}", tags={
        KIND_TAG: "sweep", HEARTBEAT_TAG: str(time.time()), **_driver_tags()})
    parent_id = parent.info.run_id
    heartbeat = _Heartbeat(client, parent_id)
    client.log_batch(parent_id, params=[_param(k, v) for k, v in {
        **flat_params("", {k: v for k, v in base.items() if k != "tracking_uri"}),
        "cells": len(cells), "cells_to_train": len(plan.todo), "code_version": code_version()}.items()])
    fingerprints = {c.data: PreparedDataset(c.data).fingerprint for c in cells}
    client.log_text(parent_id, json.dumps([{**c.to_dict(), "settings": settings_digest(result_params(base, c.variant),
                                                                                       fingerprints[c.data])}
                                           for c in cells], indent=1), CELLS_ARTIFACT)

    def log_table():
        try:
            from jobs.table import build_table

            client.log_text(parent_id, build_table(experiment, tracking_uri, "md"), "table.md")
        except Exception as e:                # the table is a convenience; the runs are what count
            log(f"could not log the results table: {e}")

    try:
        outcomes += _tune(plan.todo, base, parent_id, stamp, storage, max_concurrent, driver_cpus, num_cpus, log,
                          quiet, log_table)
    except BaseException:
        heartbeat.stop()
        client.set_terminated(parent_id, status="KILLED")
        raise
    heartbeat.stop()
    result = SweepResult(experiment, tracking_uri, parent_id, _ordered(outcomes))
    log_table()
    client.set_terminated(parent_id, status="FINISHED" if result.ok else "FAILED")
    return result


class _Heartbeat:
    """Sets the parent run's HEARTBEAT_TAG every HEARTBEAT_S seconds from a daemon thread until stopped."""

    def __init__(self, client, run_id: str):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(client, run_id), daemon=True, name="fskp-heartbeat")
        self._thread.start()

    def _beat(self, client, run_id: str) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                client.set_tag(run_id, HEARTBEAT_TAG, str(time.time()))
            except Exception:                 # a tracking-server hiccup: the next beat tries again
                pass

    def stop(self) -> None:
        self._stop.set()


def _param(key: str, value):
    """An MLflow Param (values are capped at 500 characters, as ``flat_params`` does)."""
    from mlflow.entities import Param

    return Param(key, str(value)[:500])


def _ordered(outcomes: list[CellOutcome]) -> list[CellOutcome]:
    return sorted(outcomes, key=lambda o: cell_order(o.cell))


def _tune(todo: list[Cell], base: dict, parent_id: str, stamp: str, storage: str, max_concurrent: int | None,
          driver_cpus: float, num_cpus: int | None, log, quiet: bool = False, on_cell_end=None) -> list[CellOutcome]:
    from ray import tune

    init_ray(num_cpus, worker_output=not quiet)
    plan, base = size_trials(base, max_concurrent, driver_cpus)
    concurrent = plan.concurrent
    log(f"running {len(todo)} trials, at most {concurrent} at once: {plan.note}")
    cells = {c.name: c.to_dict() for c in todo}
    trainable = tune.with_resources(
        tune.with_parameters(_cell_trainable, cells=cells, base=base, parent_run_id=parent_id),
        {"CPU": driver_cpus, HEAD_NODE_RESOURCE: 0.01})       # trial drivers on the head: never on a spot worker
    tuner = tune.Tuner(
        trainable,
        param_space={"cell": tune.grid_search(list(cells))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, trial_name_creator=_trial_name,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=f"sweep-{stamp}", storage_path=storage,
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0 if quiet else 1,
                                  callbacks=[cell_progress(log if quiet else None, len(todo), _metric_names(todo),
                                                           on_cell_end)]))
    grid = tuner.fit()
    outcomes = []
    for r in grid:
        cell = Cell(**cells[r.config["cell"]])
        metrics = dict(r.metrics or {})
        if r.error is not None or "mlflow_run_id" not in metrics:
            text = str(r.error) if r.error is not None else "the trial reported no result"
            failed = re.search(r"MLflow run ([0-9a-f]{32}) failed: (.*)", text)
            message = failed.group(2).strip() if failed else text.strip().splitlines()[-1]
            outcomes.append(CellOutcome(cell, "failed", failed.group(1) if failed else None, error=message))
        else:
            outcomes.append(CellOutcome(cell, "finished", metrics.pop("mlflow_run_id"),
                                        {k: v for k, v in metrics.items() if k.startswith("test/")}))
    return outcomes
