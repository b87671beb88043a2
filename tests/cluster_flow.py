"""The cluster flow on one machine: a Ray cluster of three nodes (a head and two workers, separate raylets with
their own resources), an S3-compatible object store (moto in server mode) and an `mlflow server` whose
artifacts go to that store, all on 127.0.0.1; then, as the README tells a cluster user:

  0. a prepared synthetic dataset written to the object store (`fskp synth face --out s3://...`);
  1. `ray job submit --working-dir . -- fskp reproduce ...` of a grid of 4 cells, 2 Train workers per cell,
     data and checkpoints in the object store, results on the tracking server;
  2. `ray job stop` while cells run, and one worker node's raylet killed;
  3. the same command again: finished cells are not retrained, an interrupted cell continues from its checkpoint,
     the sweep completes;
  4. `fskp table --tracking-uri http://127.0.0.1:PORT` prints the complete grid.

    python tests/cluster_flow.py            # prints each step; exit status 0 when every check holds

Processes are found and stopped by their own ports and folders: `ray stop` would also stop any other Ray on
the machine.  Token authentication is on, as on the cluster of cluster.yaml: the Ray nodes and the `ray` client
share a home folder of their own whose ``~/.ray/auth_token`` is a fresh token (cluster.yaml mounts yours on every
node).  That home and the nodes' TMPDIR are checked at the end: the cells wrote nothing to the local disk but
Ray's own temp folder (data, checkpoints and artifacts all went to the object store and the tracking server).
About 5–6 minutes on this project's 2-core machine; tests/test_cluster_flow.py runs it in CI.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent
BUCKET = "fskp-flow"
SHOTS, VARIANTS = ("2", "3", "4", "5"), ("supervised",)      # 4 cells; the light variant keeps CI short


def processes() -> list[tuple[int, str]]:
    """(pid, command line) of every process (Linux /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if cmd:
                out.append((int(entry), cmd))
    return out


def kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str) -> None:
    print(f"[cluster-flow {time.strftime('%H:%M:%S')}] {text}", flush=True)


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.time() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:
            value = None
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Flow:
    def __init__(self, work: Path):
        self.work = work
        # every port a node would otherwise take at Ray's fixed default (the agents' HTTP port 52365, the head's
        # Ray Client port 10001) is a free one: another Ray on the machine, a user's or a benchmark's, holds those,
        # and a head agent without its HTTP port leaves `ray job submit` with "No available agent" for good
        self.ports = {k: free_port() for k in ("s3", "mlflow", "gcs", "dashboard", "client", "agent", "agent_a",
                                               "agent_b")}
        self.env = {**os.environ,
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.ports['s3']}", "AWS_ACCESS_KEY_ID": "flow",
                    "AWS_SECRET_ACCESS_KEY": "flow", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                    "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": ""}
        self.env.pop("RAY_ADDRESS")
        # the Ray nodes and the `ray` client: token authentication on (a missing token is an error, not "off"),
        # the token in the home folder as cluster.yaml puts it on every node, and a home and TMPDIR of their
        # own, checked at the end for files the cells left on the local disk
        self.home, self.node_tmp = work / "node-home", work / "node-tmp"
        for d in (self.home / ".ray", self.node_tmp):
            d.mkdir(parents=True, exist_ok=True)
        (self.home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        self.ray_env = {**self.env, "RAY_AUTH_MODE": "token", "HOME": str(self.home), "TMPDIR": str(self.node_tmp)}
        self.tracking = f"http://127.0.0.1:{self.ports['mlflow']}"
        self.dashboard = f"http://127.0.0.1:{self.ports['dashboard']}"
        self.procs: list[subprocess.Popen] = []
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rf", dir="/tmp"))     # short: Unix socket paths are short

    # ---- the services ------------------------------------------------------------------------------------
    def start_object_store(self) -> None:
        log = open(self.work / "moto.log", "w")
        self.procs.append(subprocess.Popen([PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.ports["s3"])],
                                           stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))
        import boto3

        s3 = lambda: boto3.client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"], aws_access_key_id="flow",  # noqa: E731
                                  aws_secret_access_key="flow", region_name="us-east-1")
        wait_for("the object store", lambda: s3().create_bucket(Bucket=BUCKET), 60)
        self.s3 = s3()
        say(f"object store on 127.0.0.1:{self.ports['s3']}, bucket {BUCKET}")

    def start_tracking_server(self) -> None:
        """Start `mlflow server` (its health is awaited by ``await_tracking_server``, while Ray starts)."""
        log = open(self.work / "mlflow.log", "w")
        self.procs.append(subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.ports["mlflow"]),
             "--backend-store-uri", f"sqlite:///{self.work}/mlflow.db", "--workers", "1",
             "--artifacts-destination", f"s3://{BUCKET}/mlartifacts"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True))          # its uvicorn and huey workers too are stopped by their session

    def await_tracking_server(self) -> None:
        import urllib.request

        wait_for("the MLflow server", lambda: urllib.request.urlopen(f"{self.tracking}/health", timeout=5).status == 200,
                 300, 2)                                   # slower than 120 s on a loaded 2-core machine
        say(f"MLflow server at {self.tracking}, artifacts in s3://{BUCKET}/mlartifacts")

    def ray(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([str(BIN / "ray"), *args], env=self.ray_env, capture_output=True, text=True, timeout=300)
        if check and out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        return out

    def start_cluster(self) -> None:
        self.ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.ports["gcs"]),
                 "--num-cpus", "1", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                 "--dashboard-port", str(self.ports["dashboard"]), "--ray-client-server-port", str(self.ports["client"]),
                 "--dashboard-agent-listen-port", str(self.ports["agent"]), "--temp-dir", str(self.ray_tmp / "head"))
        workers = [subprocess.Popen([str(BIN / "ray"), "start", "--address", f"127.0.0.1:{self.ports['gcs']}",
                                     "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                                     "--resources", json.dumps({f"flow_worker_{name}": 1}),
                                     "--dashboard-agent-listen-port", str(self.ports[f"agent_{name}"]),
                                     "--temp-dir", str(self.ray_tmp / name)],
                                    env=self.ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for name in ("a", "b")]                    # both worker nodes join at once
        for w in workers:
            out, _ = w.communicate(timeout=300)
            if w.returncode != 0:
                raise RuntimeError(f"a worker node did not start:\n{out[-2000:]}")
        wait_for("three alive nodes", lambda: len(self.alive_nodes()) == 3, 120, 2)
        say(f"Ray cluster: head (1 CPU) + 2 worker nodes (2 CPUs each); dashboard {self.dashboard}")

    def alive_nodes(self) -> list[dict]:
        out = self.ray("list", "nodes", "--address", f"127.0.0.1:{self.ports['gcs']}", "--format", "json",
                       "--filter", "state=ALIVE", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else []

    def kill_worker_node(self, name: str) -> None:
        """SIGKILL the raylet of worker node ``name`` (and so every worker process of that node)."""
        raylets = [pid for pid, cmd in processes() if "raylet" in cmd.split(" ", 1)[0] and f"flow_worker_{name}" in cmd]
        if not raylets:
            raise RuntimeError(f"no raylet found for worker node {name}")
        kill(raylets)
        say(f"killed worker node {name}'s raylet (pid {', '.join(map(str, raylets))})")

    def stop(self) -> None:
        marks = (f":{self.ports['gcs']}", str(self.ray_tmp), "flow_worker_")
        kill([pid for pid, cmd in processes() if pid != os.getpid() and any(m in cmd for m in marks)])
        services = {p.pid for p in self.procs}               # each the leader of its own session
        kill([pid for pid, _ in processes() if _session(pid) in services])
        for p in self.procs:
            p.wait()
        # the nodes' logs are kept with the flow's other logs; the rest of Ray's temp folders (~0.4 GB of
        # sessions, runtime environments and spilled objects under /tmp) goes
        for logs in self.ray_tmp.glob("*/session_20*/logs"):
            shutil.copytree(logs, self.work / "ray-logs" / logs.parent.parent.name / logs.parent.name,
                            symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    # ---- the user's steps --------------------------------------------------------------------------------
    def reproduce_command(self, data: str) -> list[str]:
        return [PY, "-m", "jobs.cli", "reproduce", "--datasets", data, "--shots", ",".join(SHOTS),
                "--variants", ",".join(VARIANTS), "--selection", "random", "--workers", "2", "--iterations", "40",
                "--checkpoint-every", "5", "--log-every", "5", "--size", "64",
                # small networks: a checkpoint (weights and Adam's state) is ~45 MB instead of resnet18's ~210,
                # and 40 of them go through the object store
                "--backbone", "mobilenetv3_small_050", "--perceptual-network", "mobilenetv3_small_050",
                "--backbone-weights", "none",
                "--perceptual-weights", "none", "--selection-weights", "none",
                "--storage-path", f"s3://{BUCKET}/runs", "--tracking-uri", self.tracking, "--experiment", "flow",
                "--max-concurrent", "2"]

    def submit(self, command: list[str], wait: bool, timeout: float = 1200) -> str:
        """`ray job submit` (the README's command); with ``wait``, until the job ends, which must be SUCCEEDED."""
        args = ["job", "submit", "--no-wait", "--address", self.dashboard, "--working-dir", str(REPO),
                "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "*.db", "runs", "mlruns"],
                                                  "env_vars": {k: self.env[k] for k in self.env
                                                               if k.startswith("AWS_")}})]
        deadline = time.time() + 300
        while True:                  # the head's job agent can still be starting ("try again later"): retry
                                     # (over 2 minutes on a 2-core machine busy with another training)
            out = self.ray(*args, "--", *command, check=False)
            text = out.stdout + out.stderr
            if "No available agent to submit job" not in text or time.time() > deadline:
                break
            time.sleep(3)
        job = next((w.strip("'\"") for line in text.splitlines() if "submitted successfully" in line
                    for w in line.split() if w.strip("'\"").startswith("raysubmit_")), None)
        if job is None:
            raise RuntimeError(f"ray job submit failed:\n{text[-3000:]}")
        if wait:
            status = wait_for(f"job {job} to end", lambda: self.job_status(job) in ("SUCCEEDED", "FAILED", "STOPPED")
                              and self.job_status(job), timeout, 5)
            logs = self.ray("job", "logs", "--address", self.dashboard, job, check=False).stdout
            (self.work / f"{job}.log").write_text(logs)
            if status != "SUCCEEDED":
                raise RuntimeError(f"job {job} ended {status}:\n{logs[-4000:]}")
        return job

    def job_status(self, job: str) -> str:
        """SUCCEEDED, STOPPED, FAILED or what `ray job status` says otherwise (its messages, ray/dashboard/modules/job/cli.py)."""
        out = self.ray("job", "status", "--address", self.dashboard, job, check=False)
        text = out.stdout + out.stderr
        for phrase, status in ((f"'{job}' succeeded", "SUCCEEDED"), (f"'{job}' was stopped", "STOPPED"),
                               (f"'{job}' failed", "FAILED")):
            if phrase in text:
                return status
        return "RUNNING"

    def last_step(self, run_id: str) -> int:
        """The last training step a run logged its losses at (rank 0 logs every --log-every steps)."""
        from mlflow.tracking import MlflowClient

        return max((m.step for m in MlflowClient(self.tracking).get_metric_history(run_id, "train/loss")), default=0)

    def expected_local_files(self) -> set[Path]:
        """Files outside Ray's temp folder that are not the cells' doing: the token, Ray's own lock files (Ray
        puts them in TMPDIR), MLflow's installation id (written by the MLflow client on first use), and the
        bf16 probe's per-machine cache (models/precision.py; written only on CPUs with native bf16 but no AMX)."""
        return ({self.home / ".ray" / "auth_token", self.home / ".config" / "mlflow" / "telemetry.json",
                 self.home / ".cache" / "fskp" / "precision-probe.json"}
                | set((self.node_tmp / "_ray_lockfiles").glob("*.lock")))

    def runs(self) -> list:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(self.tracking).get_experiment_by_name("flow")
        return MlflowClient(self.tracking).search_runs([exp.experiment_id], max_results=1000) if exp else []

    def cell_runs(self) -> list:
        return [r for r in self.runs() if "dataset" in r.data.tags]

    def sweep_runs(self) -> list:
        from jobs.grid import KIND_TAG

        return [r for r in self.runs() if r.data.tags.get(KIND_TAG) == "sweep"]

    def has_table(self, run_id: str) -> bool:
        from mlflow.tracking import MlflowClient

        return "table.md" in {a.path for a in MlflowClient(self.tracking).list_artifacts(run_id)}


def run(work: Path) -> None:
    flow = Flow(work)
    try:
        flow.start_object_store()
        flow.start_tracking_server()
        flow.start_cluster()
        flow.await_tracking_server()
        data = f"s3://{BUCKET}/data/synth_face"        # the dataset lives in the store: no node reads a local copy
        made = subprocess.run([PY, "-m", "jobs.cli", "synth", "face", "--out", data, "--n", "24", "--size", "64",
                               "--workers", "1"], cwd=work, env=flow.env, capture_output=True, text=True, timeout=300)
        assert made.returncode == 0, made.stderr[-2000:]
        say(f"prepared dataset uploaded to {data}")
        command = flow.reproduce_command(data)

        job = flow.submit(command, wait=False)
        say(f"submitted {job}: 4 cells, 2 Train workers each")

        def one_done_one_checkpointed():
            runs = flow.cell_runs()
            done = [r for r in runs if r.info.status == "FINISHED"]
            # a cell past its second checkpoint and far from its end (cells that started together finish together)
            going = [r for r in runs if r.info.status == "RUNNING" and 10 <= flow.last_step(r.info.run_id) <= 25]
            tabled = any(flow.has_table(r.info.run_id) for r in flow.sweep_runs())   # logged as cells finish
            return (done, going) if done and going and tabled else None

        done, going = wait_for("a finished cell, its table, and a cell past its first checkpoints", one_done_one_checkpointed,
                               900, 3)
        flow.ray("job", "stop", "--address", flow.dashboard, job)
        flow.kill_worker_node("b")
        say(f"stopped {job} with {len(done)} cell(s) finished and {len(going)} between steps 10 and 25")
        finished_before = {r.data.tags["shots"] + "/" + r.data.tags["variant"]: r.info.run_id for r in done}

        job2 = flow.submit(command, wait=True)
        say(f"resubmitted as {job2}: finished")
        log = (work / f"{job2}.log").read_text()
        expected = f"{len(done)} already finished in MLflow, 0 running in another live sweep, {4 - len(done)} to train"
        assert expected in log, log[-3000:]
        runs = flow.cell_runs()
        finished = [r for r in runs if r.info.status == "FINISHED"]
        by_cell: dict[str, list] = {}
        for r in finished:
            by_cell.setdefault(r.data.tags["shots"] + "/" + r.data.tags["variant"], []).append(r)
        assert sorted(by_cell) == sorted(f"{s}/{v}" for s in SHOTS for v in VARIANTS), sorted(by_cell)
        assert all(len(rs) == 1 for rs in by_cell.values()), {k: len(v) for k, v in by_cell.items()}
        for cell, run_id in finished_before.items():
            assert by_cell[cell][0].info.run_id == run_id, f"{cell} was trained again"
        assert not [r for r in runs if r.info.status == "RUNNING"], "runs of the stopped job were left RUNNING"
        resumed = [r for r in finished if r.data.metrics.get("resumed_from_step", 0) > 0]
        assert resumed, "no interrupted cell continued from its checkpoint"
        say(f"no finished cell retrained; {len(resumed)} cell(s) continued from a checkpoint (step "
            f"{', '.join(str(int(r.data.metrics['resumed_from_step'])) for r in resumed)})")
        sweeps = flow.sweep_runs()
        assert sorted(r.info.status for r in sweeps) == ["FINISHED", "KILLED"], [r.info.status for r in sweeps]
        killed, resumer = (next(r for r in sweeps if r.info.status == st) for st in ("KILLED", "FINISHED"))
        assert all(r.data.tags["mlflow.parentRunId"] == (killed if r.info.run_id in finished_before.values()
                                                         else resumer).info.run_id for r in finished)
        assert all(flow.has_table(r.info.run_id) for r in sweeps), "a sweep did not log its table as cells finished"
        cells = [r.info for r in runs]
        assert any(a.run_id != b.run_id and a.start_time < b.end_time and b.start_time < a.end_time
                   for a in cells for b in cells), "no two cells ran side by side"
        left = sorted(str(p.relative_to(work)) for d in (flow.home, flow.node_tmp) for p in d.rglob("*")
                      if p.is_file() and p not in flow.expected_local_files())
        assert not left, f"the cells wrote to the local disk outside Ray's temp folder: {left[:20]}"
        say("the killed sweep was closed KILLED, its table logged before it died; the new sweep owns the new cells; "
            "nothing was written to the nodes' home or TMPDIR")
        keys = [o["Key"] for page in flow.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
                for o in page.get("Contents", [])]
        assert any(k.startswith("runs/") and k.endswith("model.pt") for k in keys), "no checkpoint in the store"
        assert any(k.startswith("mlartifacts/") for k in keys), "no MLflow artifact in the store"
        assert all(r.data.tags["checkpoint_path"].startswith(f"s3://{BUCKET}/runs/") for r in finished)
        os.environ.update({k: v for k, v in flow.env.items() if k.startswith("AWS_")})
        from jobs.evaluation import load_checkpoint

        _, state = load_checkpoint(finished[0].data.tags["checkpoint_path"])      # `fskp predict --run` reads it so
        assert state["step"] == 40

        table = subprocess.run([PY, "-m", "jobs.cli", "table", "--experiment", "flow", "--tracking-uri",
                                flow.tracking], cwd=work, env=flow.env, capture_output=True, text=True, timeout=300)
        assert table.returncode == 0, table.stderr[-2000:]
        print(table.stdout, flush=True)
        rows = [line for line in table.stdout.splitlines() if line.startswith("| supervised")]
        assert len(rows) == 1 and not any("—" in r or "running" in r or "failed" in r for r in rows), rows
        say("the table is complete")
    finally:
        flow.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    work = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="fskp-cluster-flow-"))
    work.mkdir(parents=True, exist_ok=True)
    run(work)
    say(f"every check held (logs in {work})")
