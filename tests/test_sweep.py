"""`fskp reproduce`: grids and the paper-table presets, dataset resolution, resuming from MLflow, and the
coefficient search.  A real sweep whose driver dies and is resumed runs in tests/test_cluster_flow.py (on a
three-node Ray cluster, with object storage and a tracking server)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.grid import Cell

ROOT = Path(__file__).resolve().parents[1]
#: the environment of `fskp` subprocesses: this checkout first on the path
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

#: cells per paper table: datasets x shot columns x our rows, less the columns the paper leaves empty
TABLE_SIZES = {
    1: 5 * 7 * 2,                       # WFLW, SynthesEyes, CUB, ATRW, CarFusion x 7 shots x full, supervised
    2: 7 * 2,                           # SynthesisAI faces
    3: 2 * (7 * 5 + 6 * 3),             # WFLW, ATRW: full + 4 ablations; random shots (not at 100%) x 3 seeds
    4: 4,                               # FFHQ x 1, 10, 20, 50 x full
    5: 7 * 2,                           # LSP
    6: 7 * 2 + 6 * 2,                   # H36M; 300W has no 5000-shot column
    7: 5 * 7 * 2,                       # the runs of Table 1, other metric
}


def dry_run(capsys, *argv) -> list[dict]:
    """Run `fskp reproduce --dry-run ...` and parse its cell lines."""
    from jobs.cli import main

    assert main(["reproduce", "--dry-run", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1].split()
    assert header[:7] == ["dataset", "shots", "variant", "selection", "seed", "paper", "state"]
    rows = []
    for line in lines[2:]:
        parts = line.split()
        rows.append({"card": parts[0], "shots": parts[1], "variant": parts[2], "selection": parts[3],
                     "seed": int(parts[4]), "paper": parts[5], "state": " ".join(parts[6:-1]), "data": parts[-1]})
    return rows


def expected_table_cells(table: int) -> set[tuple]:
    """Read straight from the cards: every row of ours, at every column with a number."""
    from pipeline.card import card_names, load_card

    out = set()
    for name in card_names():
        for t in load_card(name).paper:
            if t.table == table:
                for row in t.rows:
                    for shots, cell in zip(t.shots, row.cells):
                        if row.variant is None or cell.value is None:
                            continue
                        if row.variant == "random-shots":
                            out |= {(name, shots, "full", "random", seed) for seed in (0, 1, 2)}
                        else:
                            out.add((name, shots, "xiao" if row.variant == "supervised" else row.variant,
                                     "kmeans", 0))
    return out


@pytest.mark.parametrize("table", sorted(TABLE_SIZES))
def test_table_preset_lists_exactly_the_papers_cells(table, capsys, tmp_path):
    from pipeline.card import load_card

    rows = dry_run(capsys, "--table", str(table), "--data-root", str(tmp_path),
                   "--tracking-uri", f"sqlite:///{tmp_path}/absent.db")
    cells = [(r["card"], r["shots"], r["variant"], r["selection"], r["seed"]) for r in rows]
    assert len(cells) == len(set(cells)) == TABLE_SIZES[table]
    assert set(cells) == expected_table_cells(table)
    for r in rows:
        paper_variant = ("random-shots" if r["selection"] == "random" else
                         "supervised" if r["variant"] == "xiao" else r["variant"])
        assert float(r["paper"]) == load_card(r["card"]).paper_value(paper_variant, r["shots"])
        assert r["state"] == "data missing" and r["data"] == str(tmp_path / r["card"])
    assert not (tmp_path / "absent.db").exists()          # a dry run creates no tracking store


def test_table_presets_use_the_papers_rows():
    from jobs.grid import table_cells

    t3 = table_cells(3)
    assert {c.variant for c in t3} == {"full", "no-recon", "no-2d", "no-3d", "no-uncertainty"}
    assert {c.seed for c in t3 if c.selection == "random"} == {0, 1, 2}
    assert not [c for c in t3 if c.selection == "random" and c.shots == "100%"]   # the paper prints "-"
    assert {c.key for c in table_cells(7)} == {c.key for c in table_cells(1)}
    assert {c.shots for c in table_cells(6) if c.card == "300w"} == {"1", "10", "20", "50", "500", "100%"}
    assert {(c.card, c.variant) for c in table_cells(4)} == {("ffhq_dlib68", "full")}
    assert {c.variant for c in table_cells(1)} == {"full", "xiao"}      # the paper's baseline row: Xiao's recipe
    with pytest.raises(ValueError, match="no card has paper table 9"):
        table_cells(9)


def test_preset_narrowed_by_grid_options(capsys, tmp_path):
    rows = dry_run(capsys, "--table", "3", "--datasets", "atrw", "--shots", "10,5%", "--selection", "random",
                   "--data-root", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/absent.db")
    assert sorted((r["shots"], r["seed"]) for r in rows) == [("10", 0), ("10", 1), ("10", 2),
                                                             ("5%", 0), ("5%", 1), ("5%", 2)]
    assert {(r["card"], r["variant"], r["paper"]) for r in rows} == {("atrw", "full", "10.1"),
                                                                    ("atrw", "full", "90.9")}


def test_grid_is_the_product_of_the_options(capsys, tmp_path):
    rows = dry_run(capsys, "--datasets", "wflw,cub", "--shots", "1,5%", "--variants", "full,no-3d",
                   "--seeds", "0,1", "--data-root", str(tmp_path), "--tracking-uri", f"sqlite:///{tmp_path}/x.db")
    assert len(rows) == 2 * 2 * 2 * 2
    assert {r["selection"] for r in rows} == {"kmeans"}
    assert [r["card"] for r in rows[:8]] == ["wflw"] * 8           # the paper's dataset order


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "wflw", "--shots", "0"], "positive count"),
    (["--datasets", "wflw", "--shots", "150%"], "percentage in (0, 100]"),
    (["--datasets", "wflw", "--shots", "10", "--variants", "fulll"], "unknown variant 'fulll'"),
    (["--datasets", "wflw", "--shots", "10", "--selection", "best"], "unknown selection 'best'"),
    (["--datasets", "nosuch", "--shots", "10"], "neither a prepared dataset folder nor a card name"),
    (["--datasets", "wflw"], "at least one dataset and one shot count"),
    (["--table", "1", "--datasets", "lsp"], "leave no cell of paper table 1"),
])
def test_bad_grids_are_clean_errors(argv, message, capsys):
    from jobs.cli import main

    assert main(["reproduce", "--dry-run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_missing_prepared_data_names_the_folder_and_the_commands(tmp_path):
    from jobs.grid import table_cells
    from jobs.sweep import attach_data, check_data

    cells = attach_data([c for c in table_cells(6)], tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        check_data(cells)
    text = str(err.value)
    assert f"{tmp_path / '300w'}: no prepared dataset for card '300w'" in text
    assert f"fskp prepare 300w --src datasets/300w --out {tmp_path / '300w'}" in text
    assert f"fskp prepare h36m --src datasets/h36m --out {tmp_path / 'h36m'}" in text
    assert "fskp download h36m" in text


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A prepared dataset of the tiny test card: 64 px, 16 train and 4 test images."""
    from pipeline.card import load_card
    from pipeline.prepared import write_prepared
    from tests.conftest import TINY_CARD, tiny_instances

    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny.yaml").write_text(TINY_CARD)
    instances = tiny_instances(16, size=64) + tiny_instances(4, size=64, seed=3, split="test")
    return write_prepared(root / "tiny", load_card(root / "tiny.yaml"), instances, size=64)


def test_a_prepared_folder_is_a_dataset_with_its_own_card(tiny_data, capsys, tmp_path):
    rows = dry_run(capsys, "--datasets", str(tiny_data), "--shots", "4,25%", "--selection", "random",
                   "--tracking-uri", f"sqlite:///{tmp_path}/absent.db")
    assert [(r["card"], r["shots"], r["state"], r["data"]) for r in rows] == [
        ("tiny", "4", "to train", str(tiny_data)), ("tiny", "25%", "to train", str(tiny_data))]


def test_the_sweeps_progress_callback_pickles_after_print_is_replaced(monkeypatch):
    """Ray Tune pickles the callbacks that hold the sweep's ``log``; Ray's tqdm integration can replace
    ``builtins.print`` in the driver first, and then the builtin itself no longer pickles (a job failed so)."""
    import builtins
    import inspect

    import ray.cloudpickle

    from jobs.sweep import cell_progress, run_sweep

    log = inspect.signature(run_sweep).parameters["log"].default
    monkeypatch.setattr(builtins, "print", lambda *a, **k: None)
    ray.cloudpickle.dumps(cell_progress(log, 4, {"tiny-2shots": "test/nme"}))


def test_smoke_test_settings_yield_to_explicit_options():
    from jobs.cli import build_parser
    from jobs.commands.reproduce import train_options

    parse = build_parser().parse_args
    tiny = train_options(parse(["reproduce", "--table", "1", "--smoke-test"]))
    assert (tiny["iterations"], tiny["backbone"], tiny["size"], tiny["backbone_weights"]) == (4, "resnet18", 64, "none")
    assert tiny["perceptual_vit"] == "vit_tiny_patch16_224" and tiny["unlabeled_batch"] == 4
    mine = train_options(parse(["reproduce", "--table", "1", "--smoke-test", "--iterations", "30"]))
    assert mine["iterations"] == 30 and mine["backbone"] == "resnet18"
    full = train_options(parse(["reproduce", "--table", "1"]))
    assert (full["iterations"], full["backbone"], full["size"]) == (20000, "resnet50", 128)
    assert full["perceptual_vit"] == "vit_small_patch8_224.dino" and full["precision"] == "fp32"   # the paper's


# ---- resuming from MLflow (runs made through the MLflow API) ------------------------------------------------
def _log_cell_run(client, exp_id, cell: Cell, params: dict, status: str, parent: str | None = None) -> str:
    tags = {"dataset": cell.card, "shots": cell.shots, "variant": cell.variant, "selection": cell.selection,
            "seed": str(cell.seed), **({"mlflow.parentRunId": parent} if parent else {})}
    run_id = client.create_run(exp_id, tags=tags).info.run_id
    for k, v in params.items():
        client.log_param(run_id, k, v)
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def test_plan_skips_finished_cells_and_retrains_dead_ones(tiny_data, tmp_path):
    import socket

    from mlflow.tracking import MlflowClient

    from jobs.grid import DRIVER_HOST_TAG, DRIVER_PID_TAG, KIND_TAG, result_params
    from jobs.sweep import HEARTBEAT_S, HEARTBEAT_TAG, plan_sweep
    from pipeline.prepared import PreparedDataset

    options = {"iterations": 4, "backbone": "resnet18", "size": 64}
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp_id = client.create_experiment("resume")
    same = {**result_params(options, "full"), "data_fingerprint": PreparedDataset(tiny_data).fingerprint}
    cells = [Cell("tiny", s, "full", "random", 0, str(tiny_data)) for s in ("2", "4", "6", "8", "10", "12", "14")]

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])   # another sweep's driver
    start = Path(f"/proc/{live.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    host = socket.gethostname()
    old_sweep = client.create_run(exp_id, tags={KIND_TAG: "sweep", DRIVER_HOST_TAG: host,   # pid reused since
                                                DRIVER_PID_TAG: f"{live.pid}:{int(start) - 1}"}).info.run_id
    live_sweep = client.create_run(exp_id, tags={KIND_TAG: "sweep", DRIVER_HOST_TAG: host,
                                                 DRIVER_PID_TAG: f"{live.pid}:{start}"}).info.run_id
    mine = client.create_run(exp_id, tags={KIND_TAG: "sweep", DRIVER_HOST_TAG: host,         # this very process
                                           DRIVER_PID_TAG: f"{os.getpid()}:0"}).info.run_id
    done = _log_cell_run(client, exp_id, cells[0], same, "FINISHED", old_sweep)
    _log_cell_run(client, exp_id, cells[1], {**same, "iterations": "8"}, "FINISHED")      # other settings
    _log_cell_run(client, exp_id, cells[1], {**same, "variant_definition": "recon geo2d"}, "FINISHED")  # old "full"
    _log_cell_run(client, exp_id, cells[2], {**same, "data_fingerprint": "0" * 16}, "FINISHED")  # other data
    stale = _log_cell_run(client, exp_id, cells[3], same, "RUNNING", old_sweep)
    failed = _log_cell_run(client, exp_id, cells[3], same, "FAILED", old_sweep)
    elsewhere = _log_cell_run(client, exp_id, cells[4], same, "RUNNING", live_sweep)
    # drivers on another host (a laptop, a second head): alive while their MLflow heartbeat is fresh
    beating = client.create_run(exp_id, tags={KIND_TAG: "sweep", DRIVER_HOST_TAG: "other-host",
                                              DRIVER_PID_TAG: "1:1", HEARTBEAT_TAG: str(time.time() - 5)}).info.run_id
    silent = client.create_run(exp_id, tags={KIND_TAG: "sweep", DRIVER_HOST_TAG: "other-host", DRIVER_PID_TAG: "1:1",
                                             HEARTBEAT_TAG: str(time.time() - 10 * HEARTBEAT_S)}).info.run_id
    remote = _log_cell_run(client, exp_id, cells[5], same, "RUNNING", beating)
    remote_dead = _log_cell_run(client, exp_id, cells[6], same, "RUNNING", silent)

    try:
        plan = plan_sweep(cells, options, "resume", uri)
    finally:
        live.kill()
        live.wait()
    assert plan.done == {cells[0]: done}
    assert plan.running == {cells[4]: elsewhere, cells[5]: remote}
    assert plan.todo == cells[1:4] + cells[6:]
    assert plan.stale == sorted([stale, old_sweep, mine, silent, remote_dead])
    assert failed not in plan.stale and live_sweep not in plan.stale and beating not in plan.stale
    later = plan_sweep(cells, options, "resume", uri)                        # its driver has exited now
    assert later.todo == cells[1:5] + cells[6:] and later.running == {cells[5]: remote}
    assert plan_sweep(cells, options, "no-such-experiment", uri).todo == cells
    baseline = Cell("tiny", "2", "supervised", "random", 0, str(tiny_data))     # settings per variant
    done_baseline = _log_cell_run(client, exp_id, baseline, {**same, **result_params(options, "supervised")}, "FINISHED")
    assert plan_sweep([baseline], options, "resume", uri).done == {baseline: done_baseline}


# ---- fskp tune-coefficients ----------------------------------------------------------------------------------
def test_coefficient_search_needs_validation_images(tiny_data, tmp_path, capsys):
    from jobs.cli import main

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["tune-coefficients", "--datasets", str(tiny_data), "--shots", "4", "--tracking-uri", uri]) == 2
    assert f"{tiny_data}: the prepared dataset of 'tiny' has no val split" in capsys.readouterr().err
    assert main(["tune-coefficients", "--datasets", str(tiny_data), "--range", "10,1", "--tracking-uri", uri]) == 2
    assert "--range needs 0 < low < high" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()                       # nothing started


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_coefficient_search_scores_validation_and_logs_the_best_set(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.card import load_card
    from pipeline.prepared import write_prepared
    from tests.conftest import TINY_CARD, tiny_instances

    (tmp_path / "tiny.yaml").write_text(TINY_CARD)
    data = write_prepared(tmp_path / "tiny", load_card(tmp_path / "tiny.yaml"),
                          tiny_instances(12, size=64) + tiny_instances(4, size=64, seed=3, split="val")
                          + tiny_instances(4, size=64, seed=4, split="test"), size=64)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "tune-coefficients", "--datasets", str(data),
                          "--shots", "4", "--num-samples", "2", "--smoke-test", "--tracking-uri", uri,
                          "--storage-path", str(tmp_path / "runs"), "--max-concurrent", "2", "--num-cpus", "4"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=1100)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fskp-coefficients")
    runs = client.search_runs([exp.experiment_id])
    search = next(r for r in runs if r.data.tags.get("fskp.kind") == "coefficient-search")
    trainings = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search.info.run_id]
    assert len(trainings) == 2 and all(r.info.status == "FINISHED" for r in trainings)
    assert all("val/nme" in r.data.metrics and "test/nme" in r.data.metrics for r in trainings)
    trials = json.loads(open(client.download_artifacts(search.info.run_id, "trials.json", str(tmp_path))).read())
    assert len(trials) == 2 and [1.0, 1.0, 1.0, 0.1] in [t["coefficients"] for t in trials]   # the paper's set
    assert trials[0]["objective"] <= trials[1]["objective"]
    best = ",".join(f"{c:.4g}" for c in trials[0]["coefficients"])
    assert search.data.params["best_coefficients"] == best and f"best coefficients (few-shot, recon, 2D, 3D): {best}" \
        in out.stdout
    val = {r.data.params["coefficients"]: r.data.metrics["val/nme"] for r in trainings}
    assert search.data.metrics["best/objective"] == pytest.approx(min(val.values()))


def test_a_later_setting_keeps_earlier_runs_and_tells_other_values_apart():
    from jobs.grid import result_params, same_settings, settings_digest

    default = result_params({"iterations": 10}, "full")
    ramped = result_params({"iterations": 10, "transform_ramp": 0.25}, "full")
    assert "transform_ramp" not in default          # an earlier run's digest does not change
    assert settings_digest(default, "d") != settings_digest(ramped, "d")
    recorded_before = dict(default)                  # a run logged before the setting existed lacks its param
    recorded_default = {**default, "transform_ramp": "1.0"}
    recorded_ramped = {**default, "transform_ramp": "0.25"}
    assert same_settings(recorded_before, default) and same_settings(recorded_default, default)
    assert not same_settings(recorded_ramped, default)
    assert same_settings(recorded_ramped, ramped) and not same_settings(recorded_before, ramped)
