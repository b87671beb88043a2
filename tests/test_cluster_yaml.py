"""cluster.yaml: valid for Ray's cluster launcher (its own JSON schema and config checks) and set up for fskp."""
from __future__ import annotations

import copy
import json
import os
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
    home_mount = mount.replace("/home/ubuntu", "$HOME")
    assert "install" in setup and f'-e "{home_mount}[cluster]"' in setup
    head = " ".join(config["head_setup_commands"] + config["head_start_ray_commands"])
    assert "mlflow server" in head and "--port 5000" in head
    assert "MLFLOW_TRACKING_URI=http://" in head and ":5000" in head
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(config["worker_start_ray_commands"])
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in " ".join(config["worker_setup_commands"])


# ---- the failures a first `ray up` met -------------------------------------------------------------------------
DLAMI = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id"


def test_every_node_runs_an_image_with_a_driver_for_the_pinned_torch(config):
    """Ray's AWS default image is a Deep Learning AMI on Ubuntu 18.04 with CUDA 11: no glibc 2.28 for torch's
    manylinux_2_28 wheel, no driver for its CUDA 13 libraries.  Every node type names a current image."""
    from ray.autoscaler._private.aws.config import DEFAULT_AMI
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(copy.deepcopy(config))
    for name, node_type in prepared["available_node_types"].items():
        image = node_type["node_config"].get("ImageId")
        assert image == DLAMI, name
        assert image not in DEFAULT_AMI.values() and image != "latest_dlami"


def test_mlflow_starts_as_a_service_with_a_health_check_and_a_lasting_database(config):
    """`pgrep -f "mlflow server" || mlflow server ...` found its own shell (whose command line holds the text) and
    never started the server; the store was SQLite on the head's disk, deleted by `ray down`."""
    commands = config["head_setup_commands"] + config["head_start_ray_commands"] + config["setup_commands"]
    text = " ".join(commands)
    assert "pgrep" not in text
    unit = next(c for c in config["head_setup_commands"] if "fskp-mlflow.service" in c)
    assert "Restart=always" in unit and "systemctl enable --now fskp-mlflow.service" in text
    assert "--backend-store-uri $$(cat /home/ubuntu/.fskp/mlflow-db-uri)" in unit     # $$: a literal $ for systemd
    assert "sqlite" not in unit and "--artifacts-destination s3://" in unit
    start = config["head_start_ray_commands"]
    health = next(i for i, c in enumerate(start) if "/health" in c)
    ray_start = next(i for i, c in enumerate(start) if "ray start --head" in c)
    assert health < ray_start and "exit 1" in start[health]        # Ray starts only once MLflow answers
    assert "/home/ubuntu/.fskp/mlflow-db-uri" in config["file_mounts"]


def test_every_node_starts_ray_with_token_authentication_and_the_users_token(config):
    """Ray's autoscaler copies no token: `ray start` on a node without ~/.ray/auth_token and without
    RAY_AUTH_MODE started the cluster with authentication off (a warning only).  Every node gets the user's
    token by file_mounts and starts Ray with RAY_AUTH_MODE=token, so a missing token fails the start."""
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    home = Path.home()
    token = "/home/ubuntu/" + _get_default_token_path().relative_to(home).as_posix()    # Ray's default path
    assert config["file_mounts"].get(token) == "~/" + _get_default_token_path().relative_to(home).as_posix()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in config[key] if "ray start" in c)
        assert "RAY_AUTH_MODE=token" in start.split("ray start")[0], key
    assert "ray get-auth-token --generate" in CLUSTER_YAML.read_text()


def test_a_sweep_is_sized_for_the_nodes_the_autoscaler_can_add(monkeypatch):
    """At `ray job submit` only the head is up: sizing from it ran one cell at a time on a cluster of 8 GPUs."""
    import ray

    from jobs.resources import NodeShape, autoscaler_node_types, cluster_nodes, plan_training

    assert autoscaler_node_types(str(CLUSTER_YAML)) == [(NodeShape(4.0, 1.0), 8)]
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0}}])   # the head alone
    nodes = cluster_nodes(str(CLUSTER_YAML))
    assert plan_training(nodes, gpu=True, driver_cpus=0.1).concurrent == 8
    assert plan_training(nodes, gpu=True, gpu_fraction=0.25, driver_cpus=0.1).concurrent == 32
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 4.0}},
                                               {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}])
    assert len(cluster_nodes(str(CLUSTER_YAML))) == 1 + 8          # a worker that is up counts once
    monkeypatch.setenv("HOME", "/nonexistent")
    monkeypatch.delenv("FSKP_CLUSTER_CONFIG", raising=False)
    assert autoscaler_node_types() == []                           # a plain local Ray: its alive nodes only


# ---- Ray's own AWS bootstrap, against a local AWS API (moto in server mode) ------------------------------------
@pytest.fixture
def aws_mock(tmp_path, monkeypatch):
    pytest.importorskip("moto")
    import socket
    import subprocess
    import sys
    import time

    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"})   # Ray attaches AWS's
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
                 "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-west-2",
                 "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path)}.items():
        monkeypatch.setenv(k, v)
    deadline = time.time() + 30
    while True:
        try:
            boto3.client("ec2", region_name="us-west-2").describe_regions()
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    yield
    server.kill()
    server.wait()


def test_rays_aws_bootstrap_gives_every_node_its_image_profile_and_groups(config, aws_mock, monkeypatch, capsys):
    """`ray up`'s own bootstrap (IAM role and instance profile, key pair, subnets, security groups), run against
    moto: the resolved image, instance profile and security groups of every node type."""
    import boto3
    import ray.autoscaler._private.aws.config as aws_config
    from ray.autoscaler._private.util import prepare_config

    monkeypatch.setattr(aws_config.time, "sleep", lambda s: None)       # IAM propagation waits: none in moto
    resolved = aws_config.bootstrap_aws(prepare_config(copy.deepcopy(config)))
    types = resolved["available_node_types"]
    iam, ec2 = boto3.client("iam"), boto3.client("ec2", region_name="us-west-2")
    # Ray keeps the head's profile apart ("head_node") and merges it into the head's node_config at launch
    head_profile = resolved["head_node"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
    print("node type   image / instance profile / security groups")
    for name, t in types.items():
        nc = {**t["node_config"], **(resolved["head_node"] if name == resolved["head_node_type"] else {})}
        profile = nc["IamInstanceProfile"].get("Name") or nc["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
        print(f"{name:11s} {nc['ImageId']} / {profile} / {nc['SecurityGroupIds']}")
        assert nc["ImageId"] == DLAMI
        assert profile == head_profile                        # workers reach S3 through the head's profile
        assert nc["SecurityGroupIds"] == types["head.cpu"]["node_config"]["SecurityGroupIds"]
    roles = iam.get_instance_profile(InstanceProfileName=head_profile)["InstanceProfile"]["Roles"]
    policies = {p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=roles[0]["RoleName"])["AttachedPolicies"]}
    assert any("AmazonS3FullAccess" in p for p in policies)
    group = ec2.describe_security_groups(GroupIds=types["head.cpu"]["node_config"]["SecurityGroupIds"])["SecurityGroups"][0]
    public = [(r.get("FromPort"), r.get("ToPort")) for r in group["IpPermissions"]
              if any(ip.get("CidrIp") == "0.0.0.0/0" for ip in r.get("IpRanges", []))]
    assert public == [(22, 22)]                               # SSH only: dashboard and MLflow through SSH tunnels
    assert "head.cpu" in capsys.readouterr().out
