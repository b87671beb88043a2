"""A local start of Ray quiets, in its worker processes, what would bury the training's progress lines: the
warning Ray Train's PlacementGroupCleaner logs once a second when there is no dashboard, Ray Train's line per
report, Ray Data's console messages below WARNING; other loggers keep their levels."""
import importlib
import logging

import pytest

from jobs.raystart import CLEANER_LOGGER, REPORT_LOGGER_MODULE


def test_the_quieted_loggers_are_the_ones_ray_logs_with():          # fails if Ray moves or renames them
    module = importlib.import_module(CLEANER_LOGGER)
    assert module.logger.name == CLEANER_LOGGER
    assert "Failed to query Ray Train Controller actor state" in importlib.util.find_spec(
        CLEANER_LOGGER).loader.get_source(CLEANER_LOGGER)
    module = importlib.import_module(REPORT_LOGGER_MODULE)
    assert module.logger.name == importlib.util.find_spec(REPORT_LOGGER_MODULE).origin
    assert "Reporting training result" in importlib.util.find_spec(REPORT_LOGGER_MODULE).loader.get_source(
        REPORT_LOGGER_MODULE)


def test_local_start_quiets_the_cleaner_in_detached_actors(monkeypatch):
    ray = pytest.importorskip("ray")
    from jobs.raystart import start_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    start_ray(num_cpus=1, logging_level="ERROR", object_store_memory=100 << 20)
    try:
        assert ray.cluster_resources()["object_store_memory"] == 100 << 20      # as `fskp predict` sizes it
        @ray.remote(num_cpus=0)
        class Probe:                       # detached, like the cleaner Ray Train starts from its controller
            def levels(self):
                import ray.data  # noqa: F401  (configures Ray Data's logging in this process)

                console = [h for h in logging.getLogger("ray.data").handlers if h.name == "console"]
                report = importlib.util.find_spec(REPORT_LOGGER_MODULE).origin
                return (logging.getLogger(CLEANER_LOGGER).getEffectiveLevel(),
                        logging.getLogger("ray.train").getEffectiveLevel(),
                        logging.getLogger(report).getEffectiveLevel(),
                        console[0].level if console else None,
                        logging.getLogger("ray.data").getEffectiveLevel())

        probe = Probe.options(lifetime="detached", name="fskp-probe").remote()
        cleaner, other, report, data_console, data_file = ray.get(probe.levels.remote(), timeout=120)
        ray.kill(probe)
        assert cleaner == logging.ERROR and report == logging.WARNING
        assert data_console == logging.WARNING            # Ray Data's console; its log file still gets everything
        assert data_file == logging.DEBUG and other < logging.ERROR
        driver = [h for h in logging.getLogger("ray.data").handlers if h.name == "console"]
        assert [h.level for h in driver] == [logging.WARNING]   # and in this process, which runs the datasets
    finally:
        ray.shutdown()
