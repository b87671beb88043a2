"""MLflow plumbing: one tracking location for the driver and every Ray worker.

Default store: ``sqlite:///<cwd>/mlflow.db`` (absolute, because Ray workers run in other working
directories), so ``mlflow ui --backend-store-uri sqlite:///mlflow.db`` shows the runs with no server.
``--tracking-uri`` or the standard ``MLFLOW_TRACKING_URI`` variable points at a shared server instead.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def resolve_tracking_uri(uri: str | None = None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    elif "://" not in uri:                        # a bare path: a SQLite file
        uri = "sqlite:///" + str(Path(uri).resolve())
    return uri


def code_version() -> str:
    """The git commit of the code (with '+dirty' for uncommitted changes), or the package version."""
    here = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if rev:
            return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import version

    return "fskp-" + version("fskp")


def flat_params(prefix: str, obj: dict) -> dict[str, str]:
    """Flatten a nested config dict into MLflow params (values as strings, 500 chars max)."""
    out = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flat_params(key, v))
        else:
            out[key] = str(v)[:500]
    return out
