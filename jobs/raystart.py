"""One way for our jobs to start Ray: connect to the cluster ($RAY_ADDRESS, e.g. under `ray job submit`) or
start a local one without the dashboard.

Without a dashboard Ray's state API cannot answer, and Ray Train's PlacementGroupCleaner (a detached actor
that asks it once a second whether the training controller is alive) logs "Failed to query Ray Train
Controller actor state" for the whole of every training run.  A local start therefore silences that one
logger in Ray's worker processes (``worker_process_setup_hook``); on a cluster the job's own runtime
environment is left as it was submitted.
"""
from __future__ import annotations

import logging
import os

CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_workers() -> None:
    """Runs in every Ray worker process of a local start."""
    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)


def start_ray(**kwargs) -> None:
    """``ray.init`` unless Ray is up: the cluster at $RAY_ADDRESS, else a local Ray without a dashboard."""
    import ray

    if ray.is_initialized():
        return
    address = kwargs.pop("address", None) or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs.pop("num_cpus", None)                 # a cluster's resources are its own
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_workers"},
                 **kwargs)
