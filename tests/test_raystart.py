"""A local start of Ray silences, in its worker processes, the warning Ray Train's PlacementGroupCleaner logs
once a second when there is no dashboard; other loggers keep their levels."""
import importlib
import logging

import pytest

from jobs.raystart import CLEANER_LOGGER


def test_the_silenced_logger_is_ray_trains_cleaner():
    module = importlib.import_module(CLEANER_LOGGER)          # fails if Ray moves the cleaner
    assert module.logger.name == CLEANER_LOGGER
    assert "Failed to query Ray Train Controller actor state" in importlib.util.find_spec(
        CLEANER_LOGGER).loader.get_source(CLEANER_LOGGER)


def test_local_start_quiets_the_cleaner_in_detached_actors(monkeypatch):
    ray = pytest.importorskip("ray")
    from jobs.raystart import start_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    start_ray(num_cpus=1, logging_level="ERROR")
    try:
        @ray.remote(num_cpus=0)
        class Probe:                       # detached, like the cleaner Ray Train starts from its controller
            def levels(self):
                return (logging.getLogger(CLEANER_LOGGER).getEffectiveLevel(),
                        logging.getLogger("ray.train").getEffectiveLevel())

        probe = Probe.options(lifetime="detached", name="fskp-probe").remote()
        cleaner, other = ray.get(probe.levels.remote(), timeout=120)
        ray.kill(probe)
        assert cleaner == logging.ERROR
        assert other < logging.ERROR
    finally:
        ray.shutdown()
