"""One way for our jobs to start Ray: connect to the cluster ($RAY_ADDRESS, e.g. under `ray job submit`) or
start a local one without the dashboard, its workers' console kept to what a user needs.

A local start quiets, in Ray's worker processes, what would otherwise bury the training's own progress lines:
- Ray Train's PlacementGroupCleaner (a detached actor that asks the state API once a second whether the
  training controller is alive) logs "Failed to query Ray Train Controller actor state" for the whole of every
  run, because without a dashboard the state API cannot answer (~700 lines in 40 min of `fskp label`);
- Ray Train logs every ``report`` ("Reporting training result N: TrainingReport(...)"), a long line each;
- Ray Data logs 3-4 lines each time the unlabeled pool starts an epoch (every few steps on a small project).
Ray Data's messages still go to its ``ray-data.log`` file in the session's log folder; its warnings still reach
the console (the driver's too: ``quiet_ray_data_console``).  On a cluster the job's runtime environment is left
as it was submitted.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
from pathlib import Path

CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
#: the module whose logger (named by its file path) announces every ``ray.train.report``
REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"


def quiet_workers() -> None:
    """Runs in every Ray worker process of a local start (``worker_process_setup_hook``)."""
    logging.getLogger(CLEANER_LOGGER).setLevel(logging.ERROR)
    spec = importlib.util.find_spec(REPORT_LOGGER_MODULE)
    if spec is not None and spec.origin:
        logging.getLogger(spec.origin).setLevel(logging.WARNING)


def ray_data_console_config() -> str:
    """A Ray Data logging config (``RAY_DATA_LOGGING_CONFIG``): Ray's default with the console at WARNING."""
    import yaml
    from ray.data._internal.logging import DEFAULT_CONFIG

    config = copy.deepcopy(DEFAULT_CONFIG)
    config["handlers"]["console"]["level"] = "WARNING"
    path = Path(tempfile.gettempdir()) / f"fskp-ray-data-logging-{os.getuid()}.yaml"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(config))
    tmp.replace(path)
    return str(path)


def quiet_ray_data_console() -> None:
    """This process's Ray Data console at WARNING, as ``ray_data_console_config`` sets the workers': each
    dataset's start and end (2-3 lines; `fskp label` runs 7 for its test-time crops) stay in ray-data.log.
    Left alone when the user configured Ray Data's logging ($RAY_DATA_LOGGING_CONFIG)."""
    if "RAY_DATA_LOGGING_CONFIG" in os.environ:
        return
    import ray.data  # noqa: F401  (sets up Ray Data's loggers)

    for handler in logging.getLogger("ray.data").handlers:
        if handler.name == "console":              # Ray Data's logging config names it; its file keeps DEBUG
            handler.setLevel(logging.WARNING)


def start_ray(**kwargs) -> None:
    """``ray.init`` unless Ray is up: the cluster at $RAY_ADDRESS, else a local Ray without a dashboard.
    Either way this process's Ray Data console is quieted (``quiet_ray_data_console``).  ``num_cpus`` and
    ``object_store_memory`` size a local start only."""
    import ray

    quiet_ray_data_console()
    if ray.is_initialized():
        return
    address = kwargs.pop("address", None) or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs.pop("num_cpus", None)                 # a cluster's resources are its own
        kwargs.pop("object_store_memory", None)
        ray.init(address=address, **kwargs)
        return
    env = {} if "RAY_DATA_LOGGING_CONFIG" in os.environ else {"RAY_DATA_LOGGING_CONFIG": ray_data_console_config()}
    ray.init(include_dashboard=False, runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_workers",
                                                   "env_vars": env}, **kwargs)
