"""`fskp table`: the results grid from MLflow runs created here through the MLflow API (no training)."""
from __future__ import annotations

import json

import pytest

from jobs.grid import CELLS_ARTIFACT, KIND_TAG, Cell


def _run(client, exp_id, cell: Cell, status: str, metrics: dict, start: int, parent: str | None = None) -> str:
    tags = {"dataset": cell.card, "shots": cell.shots, "variant": cell.variant, "selection": cell.selection,
            "seed": str(cell.seed)}
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=cell.name)
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture
def experiment(tmp_path):
    """A sweep's grid (cells.json) and runs in every state, on WFLW (NME) and ATRW (PCK)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("grid", artifact_location=str(tmp_path / "artifacts"))
    planned = ([Cell("wflw", s, "full") for s in ("10", "20", "50", "5%")]
               + [Cell("wflw", s, "supervised") for s in ("10", "20")]
               + [Cell("wflw", "10", "full", "random", seed) for seed in (0, 1, 2)]
               + [Cell("atrw", "10", "full"), Cell("atrw", "10", "supervised"), Cell("atrw", "20", "full")])
    sweep = client.create_run(exp_id, run_name="sweep", tags={KIND_TAG: "sweep"}).info.run_id
    client.log_text(sweep, json.dumps([c.to_dict() for c in planned]), CELLS_ARTIFACT)
    client.set_terminated(sweep, "FINISHED")
    t = 1_700_000_000_000
    _run(client, exp_id, Cell("wflw", "10", "full"), "FINISHED", {"test/nme": 99.0}, t)      # superseded
    _run(client, exp_id, Cell("wflw", "10", "full"), "FINISHED", {"test/nme": 9.5, "test/pck_0.1": 70.0}, t + 10, sweep)
    _run(client, exp_id, Cell("wflw", "10", "supervised"), "FINISHED", {"test/nme": 20.0}, t + 20, sweep)
    _run(client, exp_id, Cell("wflw", "20", "full"), "FINISHED", {"test/nme": 8.0}, t + 30, sweep)
    _run(client, exp_id, Cell("wflw", "5%", "full"), "FINISHED", {"test/nme": 6.5}, t + 40, sweep)
    _run(client, exp_id, Cell("wflw", "20", "supervised"), "RUNNING", {}, t + 50, sweep)
    _run(client, exp_id, Cell("wflw", "50", "full"), "FAILED", {}, t + 60, sweep)
    _run(client, exp_id, Cell("wflw", "10", "full", "random", 0), "FINISHED", {"test/nme": 14.0}, t + 70, sweep)
    _run(client, exp_id, Cell("wflw", "10", "full", "random", 1), "FINISHED", {"test/nme": 16.0}, t + 80, sweep)
    _run(client, exp_id, Cell("atrw", "10", "full"), "FINISHED", {"test/pck_0.1": 40.0}, t + 90, sweep)
    _run(client, exp_id, Cell("atrw", "10", "supervised"), "FINISHED", {"test/pck_0.1": 25.0}, t + 95, sweep)
    return uri


def _row(text: str, label: str, block: str) -> list[str]:
    """The cells of the Markdown row ``label`` inside the block whose heading contains ``block``."""
    part = text.split(block, 1)[1].split("\n## ", 1)[0]
    line = next(l for l in part.splitlines() if l.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_markdown_grid_with_paper_numbers_states_and_best(experiment):
    from jobs.table import build_table

    md = build_table("grid", experiment, "md")
    assert "## WFLW" in md and "NME (%) ↓" in md and "PCK@0.1 (%) ↑" in md
    assert md.index("## WFLW") < md.index("## ATRW")                 # the paper's dataset order
    header = next(l for l in md.split("## WFLW", 1)[1].splitlines() if l.startswith("| method"))
    assert header == "| method | 10 shots | 20 shots | 50 shots | 5% shots |"
    full = _row(md, "ours (full)", "## WFLW")
    assert full == ["**9.50** (paper 9.19)", "**8.00** (paper 8.62)", "failed (paper 7.90)", "**6.50** (paper 6.22)"]
    supervised = _row(md, "supervised baseline (same detector, Eq. 2)", "## WFLW")
    assert supervised[:2] == ["20.0 (paper 21.9)", "running (paper 19.3)"]
    assert supervised[2:] == ["", ""]                                 # not part of the grid: blank
    random = _row(md, "− k-means selection (random shots)", "## WFLW")
    assert random[0] == "15.0 ± 1.4 [2/3 seeds] (paper 14.5)"      # mean ± sample std of 14 and 16
    atrw = _row(md, "ours (full)", "## ATRW")
    assert atrw == ["**40.0** (paper 36.3)", "— (paper 78.8)"]        # PCK: higher is better; 20: not run yet
    assert _row(md, "supervised baseline (same detector, Eq. 2)", "## ATRW") == ["25.0 (paper 21.5)", ""]


def test_other_metric_for_table_7(experiment):
    from jobs.table import build_table

    md = build_table("grid", experiment, "md", metric="other")
    assert "PCK@0.1 (%) ↑" in md.split("## WFLW", 1)[1].split("\n## ", 1)[0]
    assert "NME (%) ↓" in md.split("## ATRW", 1)[1]
    full = _row(md, "ours (full)", "## WFLW")
    assert full[0] == "**70.0** (paper 71.0)"                         # Table 7's number for WFLW
    assert full[1] == "n/a (paper 73.9)"                               # finished without that metric
    assert _row(md, "ours (full)", "## ATRW") == ["n/a (paper 19.0)", "— (paper 6.69)"]  # ATRW's NME in Table 7
    pck = build_table("grid", experiment, "md", metric="pck")         # one metric for every dataset
    assert _row(pck, "ours (full)", "## ATRW")[0] == "**40.0** (paper 36.3)"
    assert _row(pck, "ours (full)", "## WFLW")[0] == "**70.0** (paper 71.0)"


def test_latex_and_html(experiment):
    from jobs.table import build_table

    tex = build_table("grid", experiment, "tex")
    assert "\\begin{tabular}{lcccc}" in tex and "\\begin{tabular}{lcc}" in tex and "\\textbf{9.50} (paper 9.19)" in tex
    assert "5\\%" in tex and "$\\downarrow$" in tex and "15.0 $\\pm$ 1.4" in tex and "$\\uparrow$" in tex
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 2
    html = build_table("grid", experiment, "html")
    assert "<b>9.50</b> (paper 9.19)" in html and html.count("<table>") == html.count("</table>") == 2
    assert "running (paper 19.3)" in html


def test_cli_prints_writes_and_logs_the_table(experiment, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from jobs.cli import main
    from jobs.table import build_table

    out = tmp_path / "t.md"
    assert main(["table", "--experiment", "grid", "--tracking-uri", experiment, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out == out.read_text() == build_table("grid", experiment, "md")
    run_id = printed.err.split("MLflow run ")[1].split()[0]
    client = MlflowClient(experiment)
    assert client.get_run(run_id).data.tags[KIND_TAG] == "table"
    stored = client.download_artifacts(run_id, "table.md", str(tmp_path))
    assert open(stored).read() == out.read_text()
    assert main(["table", "--experiment", "grid", "--tracking-uri", experiment, "--format", "tex"]) == 0
    assert capsys.readouterr().err.split("MLflow run ")[1].split()[0] == run_id    # one table run, reused
    assert {a.path for a in client.list_artifacts(run_id)} == {"table.md", "table.tex"}


def test_unknown_experiment_is_a_clean_error(experiment, capsys):
    from jobs.cli import main

    assert main(["table", "--experiment", "nope", "--tracking-uri", experiment]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err


def test_cells_trained_from_random_weights_are_marked(tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.table import build_table

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("weights", artifact_location=str(tmp_path / "artifacts"))
    t = 1_700_000_000_000
    random_run = _run(client, exp_id, Cell("wflw", "10", "full"), "FINISHED", {"test/nme": 12.0}, t)
    client.set_tag(random_run, "fskp.backbone_weights", "random (auto: hub: OSError, offline; no offline package for resnet50)")
    hub_run = _run(client, exp_id, Cell("wflw", "10", "supervised"), "FINISHED", {"test/nme": 20.0}, t + 1)
    client.set_tag(hub_run, "fskp.backbone_weights", "hub timm/resnet50.a1_in1k")
    client.set_tag(hub_run, "fskp.perceptual_weights", "random (asked: none)")   # unused by supervised
    text = build_table("weights", uri)
    assert _row(text, "ours (full)", "WFLW")[0].startswith("**12.0** †")
    assert "†" not in _row(text, "supervised baseline (same detector, Eq. 2)", "WFLW")[0]
    assert "† trained from random weights" in text


def test_cells_whose_predictions_collapsed_are_marked(tmp_path):
    from mlflow.tracking import MlflowClient

    from jobs.table import build_table

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("collapse", artifact_location=str(tmp_path / "artifacts"))
    t = 1_700_000_000_000
    _run(client, exp_id, Cell("wflw", "10", "full"), "FINISHED", {"test/nme": 46.0, "test/spread_ratio": 0.01}, t)
    _run(client, exp_id, Cell("wflw", "10", "supervised"), "FINISHED", {"test/nme": 25.0, "test/spread_ratio": 0.9}, t + 1)
    text = build_table("collapse", uri)
    assert _row(text, "ours (full)", "WFLW")[0] == "46.0 ‡ (paper 9.19)"
    assert "‡" not in _row(text, "supervised baseline (same detector, Eq. 2)", "WFLW")[0]
    assert "‡ predictions collapsed toward one point" in text


def test_only_runs_with_the_grids_settings_and_data_count(tmp_path):
    """A later --smoke-test sweep (other settings) and a run on other data never show as results of the grid."""
    from mlflow.tracking import MlflowClient

    from jobs.grid import SETTINGS_TAG
    from jobs.table import build_table

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = client.create_experiment("digests", artifact_location=str(tmp_path / "artifacts"))
    t = 1_700_000_000_000
    cells = [Cell("wflw", "10", "full"), Cell("wflw", "10", "supervised")]

    def sweep(digest: str, start: int) -> str:
        run_id = client.create_run(exp_id, start_time=start, tags={KIND_TAG: "sweep"}).info.run_id
        client.log_text(run_id, json.dumps([{**c.to_dict(), "settings": digest} for c in cells]), CELLS_ARTIFACT)
        client.set_terminated(run_id, "FINISHED")
        return run_id

    def cell_run(cell, digest, nme, start, parent):
        run_id = _run(client, exp_id, cell, "FINISHED", {"test/nme": nme}, start, parent)
        client.set_tag(run_id, SETTINGS_TAG, digest)

    paper = sweep("aaaaaaaaaaaa", t)
    cell_run(cells[0], "aaaaaaaaaaaa", 9.5, t + 1, paper)
    cell_run(cells[1], "aaaaaaaaaaaa", 20.0, t + 2, paper)
    cell_run(cells[0], "cccccccccccc", 55.0, t + 3, None)                 # same cell, other data: later, ignored
    md = build_table("digests", client.tracking_uri, "md")
    assert _row(md, "ours (full)", "## WFLW") == ["**9.50** (paper 9.19)"]
    assert "1 finished run(s) of these cells with other settings or data" in md

    smoke = sweep("bbbbbbbbbbbb", t + 10)                                  # the latest sweep's grid is the table
    cell_run(cells[0], "bbbbbbbbbbbb", 70.0, t + 11, smoke)
    md = build_table("digests", client.tracking_uri, "md")
    assert _row(md, "ours (full)", "## WFLW") == ["**70.0** (paper 9.19)"]
    assert _row(md, "supervised baseline (same detector, Eq. 2)", "## WFLW") == ["— (paper 21.9)"]


def test_the_quickstart_says_whether_the_papers_ordering_holds():
    from jobs.commands.quickstart import ordering_verdict

    shots = ["1", "10", "50"]
    held = {("full", "1"): 30.0, ("full", "10"): 20.0, ("full", "50"): 10.0,
            ("supervised", "1"): 35.0, ("supervised", "10"): 25.0, ("supervised", "50"): 15.0}
    lines = ordering_verdict(held, shots)
    assert lines == ["full vs supervised: better at 1, 10, 50 shots.", "more shots, better full: yes (30.0 -> 20.0 -> 10.0).",
                     "more shots, better supervised: yes (35.0 -> 25.0 -> 15.0)."]
    measured = {("full", "1"): 35.5, ("full", "10"): 32.9, ("full", "50"): 31.9,     # the README's quickstart
                ("supervised", "1"): 34.6, ("supervised", "10"): 34.2, ("supervised", "50"): 29.1}
    lines = ordering_verdict(measured, shots)
    assert lines[0] == "full vs supervised: better at 10 shots; not better at 1, 50 shots."
    assert "does not hold everywhere" in lines[-1]
    pck = ordering_verdict({("full", "10"): 60.0, ("supervised", "10"): 50.0}, ["10"], lower_is_better=False)
    assert pck == ["full vs supervised: better at 10 shots."]
    assert "random weights" not in lines[-1] and "collapsed" not in lines[-1]      # only what applies is said
    why = ordering_verdict(measured, shots, random_weights=True, collapsed=["full at 1 shots"])[-1]
    assert "random weights where marked †" in why and "collapsed toward one point in full at 1 shots" in why
    shrinking = {**held, ("supervised", "50"): 40.0}
    assert "more shots, better supervised: no (35.0 -> 25.0 -> 40.0)." in ordering_verdict(shrinking, shots)
    assert "does not hold everywhere" in ordering_verdict(shrinking, shots)[-1]
