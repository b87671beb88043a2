"""The cluster flow (tests/cluster_flow.py) as a test: a head and two worker raylets, moto's S3 and an
`mlflow server`; a sweep submitted with `ray job submit`, stopped with a worker node killed, submitted again,
then `fskp table` against the server.  About 5–6 minutes on a 2-core machine."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("cluster_flow.py")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cluster_flow_survives_a_stopped_job_and_a_lost_node(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=1700)
    assert out.returncode == 0, f"{out.stdout[-6000:]}\n{out.stderr[-6000:]}\n(logs in {tmp_path})"
    assert "every check held" in out.stdout
