"""What the benchmarks that re-read finished `fskp label` runs share: the command line and the held-out split.

A finished run is an output folder of `fskp label --project` (label.json names its shots, checkpoint and crop).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REACHING = REPO.parent / "shared" / "data" / "dlc-reaching"


def read_run_folders(description: str):
    """Parse ``folders... [--project P]``; returns (the folders as Paths, the DeepLabCut project read once)."""
    from jobs.labeling.inputs import read_dlc_project

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", help="finished `fskp label` output folders (of --project)")
    p.add_argument("--project", default=str(REACHING))
    args = p.parse_args()
    return [Path(f) for f in args.folders], read_dlc_project(args.project)


def run_summary(folder: Path) -> dict:
    """label.json of one finished run."""
    return json.loads((Path(folder) / "label.json").read_text())


def held_out_and_shots(project, summary: dict) -> tuple[list, list]:
    """(the project's labeled images the run did not train on, those it did), in the project's order."""
    shots = set(summary["shots"])
    held = [i for i in project.labeled if project.relative(i.source) not in shots]
    train = [i for i in project.labeled if project.relative(i.source) in shots]
    return held, train
