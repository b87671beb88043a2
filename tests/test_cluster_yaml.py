"""cluster.yaml: valid for Ray's cluster launcher (its own JSON schema and config checks) and set up for fskp."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_matches_rays_cluster_config_schema(config, schema):
    jsonschema.validate(config, schema)


def test_passes_rays_own_config_preparation_and_checks(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))      # merged with Ray's AWS defaults, as `ray up` does
    validate_config(prepared)
    assert prepared["available_node_types"][prepared["head_node_type"]]["max_workers"] == 0


def test_the_schema_check_can_fail(config, schema):
    broken = copy.deepcopy(config)
    del broken["available_node_types"]["worker.gpu"]["node_config"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    legacy = {**copy.deepcopy(config), "min_workers": 0}   # a pre-node-types key Ray no longer accepts
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(legacy, schema)


def test_cpu_head_and_autoscaling_gpu_workers(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu and all(t["resources"].get("GPU", 0) >= 1 for t in gpu)
    assert all(t.get("min_workers", 0) == 0 and t["max_workers"] > 0 for t in gpu)   # scales from zero
    assert config["provider"]["type"] in ("aws", "gcp")


def test_installs_this_project_and_shares_one_mlflow(config):
    mount = next(remote for remote, local in config["file_mounts"].items() if local == ".")
    setup = " ".join(config["setup_commands"])
    assert "install" in setup and f"-e {mount.replace('/home/ubuntu', '~')}" in setup
    head_start = " ".join(config["head_start_ray_commands"])
    assert "mlflow server" in head_start and "--port 5000" in head_start
    assert "MLFLOW_TRACKING_URI=http://" in head_start and ":5000" in head_start
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(config["worker_start_ray_commands"])
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(config["worker_setup_commands"])
