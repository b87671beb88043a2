"""What each part of a job asks Ray for, sized from the nodes that will run it, so that every job makes progress.

A training job on Ray is three kinds of process: the Train workers (the model), Ray Data's read/decode tasks
(the unlabeled pool), and, in a sweep, each trial's own driver process (shot selection, MLflow, waiting).
Ray schedules by *logical* CPUs: a task that asks for one CPU never starts while the Train workers hold every
CPU of the node, and the training loop then waits forever for its first unlabeled batch.  So here:

- every Ray Data task asks for ``DATA_TASK_CPUS`` (a quarter CPU: decoding a block of images is short work);
- every training job leaves ``DATA_RESERVE_CPUS`` of its node to its data tasks;
- a sweep trial's driver asks for ``TRIAL_DRIVER_CPUS``;
- the Train workers get the rest of the node, shared among the trials that run on it at once.

A worker's torch threads follow what Ray gave it, on its own node (``worker_threads``): a fraction of a core
is still one thread, 1.5 CPUs are two.  ``plan_training`` does the arithmetic for one job or a sweep and
says how it sized things; a configuration that cannot fit is refused before anything starts.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

from pipeline.pool import DATA_TASK_CPUS  # each Ray Data read/decode task asks for this (a quarter CPU)

#: CPUs each training job leaves free on its node for its Ray Data tasks (two tasks at a time)
DATA_RESERVE_CPUS = 2 * DATA_TASK_CPUS
#: CPUs of a sweep trial's own process (it selects shots, talks to MLflow and waits for its Train run)
TRIAL_DRIVER_CPUS = 0.1
#: the least a Train worker is given; below this a plan puts fewer trials on a node
MIN_WORKER_CPUS = 0.25


@dataclass(frozen=True)
class NodeShape:
    """The logical resources of one Ray node."""

    cpus: float
    gpus: float = 0.0


#: where Ray's cluster launcher leaves the cluster's config on the head node (`ray up`)
RAY_BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def autoscaler_node_types(config_path: str | None = None) -> list[tuple[NodeShape, int]]:
    """(shape, max_workers) of each worker node type the autoscaler may start, from a cluster config
    (``config_path``, $FSKP_CLUSTER_CONFIG, or Ray's bootstrap config on the head); [] without one."""
    from pathlib import Path

    import yaml

    path = Path(os.path.expanduser(config_path or os.environ.get("FSKP_CLUSTER_CONFIG") or RAY_BOOTSTRAP_CONFIG))
    if not path.is_file():
        if config_path:
            raise FileNotFoundError(f"{path}: no such cluster config")
        return []
    config = yaml.safe_load(path.read_text()) or {}
    head = config.get("head_node_type")
    out = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == head or int(node_type.get("max_workers", 0)) <= 0:
            continue
        res = node_type.get("resources") or {}
        out.append((NodeShape(float(res.get("CPU", 0.0)), float(res.get("GPU", 0.0))), int(node_type["max_workers"])))
    return out


def cluster_nodes(config_path: str | None = None) -> list[NodeShape]:
    """The nodes a sweep can use: the alive nodes of the Ray cluster this process is connected to, plus the worker
    nodes the autoscaler may still add (``autoscaler_node_types``): an autoscaling cluster starts with its head
    only, and sizing a sweep from that would run one cell at a time on a cluster of many GPUs."""
    import ray

    alive = [NodeShape(float(n["Resources"].get("CPU", 0.0)), float(n["Resources"].get("GPU", 0.0)))
             for n in ray.nodes() if n.get("Alive")]
    nodes = list(alive)
    for shape, most in autoscaler_node_types(config_path):
        nodes += [shape] * max(0, most - sum(1 for n in alive if n == shape))
    return nodes


def threads_for(cpus: float | None) -> int:
    """Torch threads for a process Ray gave ``cpus`` CPUs: at least one, fractions rounded up."""
    return max(1, math.ceil((cpus or 1.0) - 1e-9))


def worker_threads(requested: int | None = None) -> int:
    """Torch threads for this Ray worker or actor: ``requested``, else the CPUs Ray assigned to it (never
    more than this node's cores)."""
    if requested:
        return requested
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU") if ray.is_initialized() else None
    return min(threads_for(cpus), os.cpu_count() or 1)


@dataclass(frozen=True)
class TrainingPlan:
    """How many training jobs run at once and what each Train worker asks for."""

    concurrent: int             # jobs (sweep trials) at once
    cpus_per_worker: float      # logical CPUs per Train worker
    note: str                   # how it was sized, for people

    @property
    def threads(self) -> int:
        return threads_for(self.cpus_per_worker)


def shared_gpu_problem(workers: int, gpu: bool, gpu_fraction: float) -> str | None:
    """Why several Train workers of one run cannot take fractions of GPUs (None when they can)."""
    if gpu and gpu_fraction < 1.0 and workers > 1:
        return (f"--gpu-fraction {gpu_fraction:g} with --workers {workers} would put several NCCL ranks of one run on "
                f"one GPU, which NCCL refuses; use whole GPUs (--gpu-fraction 1) with several workers")
    return None


def _footprint(per_node: int, workers: int, cpus_per_worker: float, driver_cpus: float) -> float:
    return per_node * (driver_cpus + DATA_RESERVE_CPUS + workers * cpus_per_worker)


def plan_training(nodes: list[NodeShape], *, workers: int = 1, gpu: bool = False, gpu_fraction: float = 1.0,
                  cpus_per_worker: float | None = None, concurrent: int | None = None,
                  driver_cpus: float = 0.0) -> TrainingPlan:
    """Size ``concurrent`` jobs of ``workers`` Train workers each on ``nodes`` so that each job's data tasks fit.

    cpus_per_worker / concurrent: None = as many as fit (a CPU job: one core per worker; a GPU job:
    ``1 / (workers * gpu_fraction)`` jobs per GPU), the workers sharing what the data tasks and trial drivers
    leave.  driver_cpus: what each job's own process holds (a sweep trial's driver; 0 for `fskp train`).
    Raises ValueError when a given value cannot fit, naming what to change.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    problem = shared_gpu_problem(workers, gpu, gpu_fraction)
    if problem:
        raise ValueError(problem)
    kind = [n for n in nodes if n.gpus > 0] if gpu else [n for n in nodes if n.cpus > 0]
    if not kind:
        if concurrent is None and cpus_per_worker is None and gpu:
            return TrainingPlan(1, 1.0, "no GPU node is up yet: one job at a time, 1 CPU per worker, until the "
                                        "cluster grows")
        if not gpu or not nodes:
            raise ValueError("the Ray cluster has no node with CPUs" if not gpu else "the Ray cluster has no node")
        return TrainingPlan(concurrent or 1, cpus_per_worker or 1.0, "no GPU node is up yet")
    node = max(kind, key=lambda n: (n.gpus, n.cpus))
    if gpu:
        per_gpu_job = workers * gpu_fraction
        if per_gpu_job > node.gpus + 1e-9 and workers <= 1:
            raise ValueError(f"a job asks for {per_gpu_job:g} GPU but the largest node has {node.gpus:g}")
        fit = max(1, math.floor(node.gpus / per_gpu_job + 1e-9))
    else:
        fit = max(1, math.floor(node.cpus / workers + 1e-9))
    per_node = math.ceil(concurrent / len(kind)) if concurrent else fit

    if cpus_per_worker is None:
        while True:
            share = (node.cpus - per_node * (driver_cpus + DATA_RESERVE_CPUS)) / (per_node * workers)
            if share >= MIN_WORKER_CPUS or per_node == 1 or concurrent:
                break
            per_node -= 1
        if share < MIN_WORKER_CPUS:
            raise ValueError(f"{per_node} job(s) of {workers} worker(s) do not fit a node of {node.cpus:g} CPUs "
                             f"with {DATA_RESERVE_CPUS:g} CPU per job left to Ray Data"
                             + (f" and {driver_cpus:g} per trial driver" if driver_cpus else "")
                             + ": lower --max-concurrent or --workers, or use larger nodes")
        cpus_per_worker = round(share, 3)
        how = f"{cpus_per_worker:g} CPU per worker (the node's {node.cpus:g} CPUs shared by {per_node} job(s), " \
              f"{DATA_RESERVE_CPUS:g} CPU each left to Ray Data)"
    else:
        while _footprint(per_node, workers, cpus_per_worker, driver_cpus) > node.cpus + 1e-9 and per_node > 1 \
                and not concurrent:
            per_node -= 1
        if _footprint(per_node, workers, cpus_per_worker, driver_cpus) > node.cpus + 1e-9:
            need = _footprint(per_node, workers, cpus_per_worker, driver_cpus)
            raise ValueError(f"{per_node} job(s) of {workers} worker(s) x {cpus_per_worker:g} CPU need {need:g} CPUs "
                             f"with Ray Data's share ({DATA_RESERVE_CPUS:g} per job), more than a node's "
                             f"{node.cpus:g}: lower --cpus-per-worker"
                             + (" or the jobs at once (--max-concurrent)" if concurrent and concurrent > 1 else "")
                             + ", or leave them to the default")
        how = f"{cpus_per_worker:g} CPU per worker (asked for)"
    total = concurrent or per_node * len(kind)
    return TrainingPlan(total, cpus_per_worker, f"{total} job(s) at once on {len(kind)} node(s), {how}")


def starvation_report() -> str:
    """What Ray has free now, for an error message about a stalled data stream."""
    try:
        import ray

        free, total = ray.available_resources(), ray.cluster_resources()
        return (f"Ray has {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs free; each Ray Data task needs "
                f"{DATA_TASK_CPUS:g}")
    except Exception as e:                         # the report must never hide the stall itself
        return f"(Ray's resources could not be read: {e})"
