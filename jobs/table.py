"""`fskp table`: the paper-style results grid of an MLflow experiment, with the paper's numbers beside ours.

One block per dataset; rows are our variants (full, the supervised baseline, the ablations, random shots),
columns are shot counts.  A cell is the test-split metric of the cell's finished runs: the mean ± the
sample standard deviation over seeds (the mean alone for one seed), from the latest finished run of each
seed, with the paper's number from the dataset card in parentheses.  The metric is the card's (NME, lower
is better; PCK, higher is better), or the other one for the paper's Table 7; the best value of each column
is bold.  Which cells belong to the grid comes from the ``cells.json`` of the experiment's sweeps (and from
the runs found), so cells not run yet are shown as such ("—", "running", "failed").  A cell planned by a sweep
counts only runs with the settings and data of the latest sweep that planned it (``SETTINGS_TAG``), so a
``--smoke-test`` or a run on other data never appears as a result of the grid; how many were left out is said.
"""
from __future__ import annotations

import html
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jobs.grid import (CELLS_ARTIFACT, KIND_TAG, SELECTIONS, SETTINGS_TAG, VARIANTS, Cell, all_runs, dataset_order,
                       shots_order)

FORMATS = ("md", "tex", "html")
METRICS = ("main", "other", "nme", "pck")
ROW_LABELS = {"full": "ours (full)", "supervised": "supervised baseline (same detector, Eq. 2)",
              "xiao": "Xiao et al. (heatmap regression)",
              "xiao-depth": "Xiao et al. + depth from 3D labels (Table 2's baseline)",
              "no-recon": "− image reconstruction", "no-2d": "− 2D geometry", "no-3d": "− 3D geometry",
              "no-uncertainty": "− uncertainty", "no-label-aug": "− augmentation of the labeled images",
              "only-recon": "supervised + image reconstruction only", "only-2d": "supervised + 2D geometry only",
              "only-3d": "supervised + 3D geometry only",
              "shared-batch": "supervised, unlabeled images in its batch (no term on them)"}
MISSING = {"not run": "—", "running": "running", "failed": "failed", "no metric": "n/a"}


@dataclass
class Entry:
    """One cell of the table."""

    values: list[float] = field(default_factory=list)     # one per seed with a finished run
    expected_seeds: int = 0
    paper: float | None = None
    state: str = "not run"                                 # when there is no value: a key of MISSING
    random_weights: int = 0                                # runs among values trained from random weights
    collapsed: int = 0                                     # runs among values whose predictions collapsed

    @property
    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        n = len(self.values)
        if n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (n - 1))


@dataclass
class Block:
    """One dataset's part of the table."""

    card: str
    title: str
    kind: str                       # nme | pck
    metric_key: str                 # the MLflow metric, e.g. "test/nme" or "test/pck_0.1"
    columns: list[str]
    rows: list[tuple[str, str]]     # (variant, selection)
    entries: dict[tuple[tuple[str, str], str], Entry]
    other_settings: int = 0         # finished runs of the grid's cells with other settings or data: not shown

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "pck"

    @property
    def metric_label(self) -> str:
        if self.kind == "pck" and "_" in self.metric_key:
            return f"PCK@{self.metric_key.split('_', 1)[1]} (%)"
        return f"{self.kind.upper()} (%)"

    def best(self, column: str) -> float | None:
        means = [e.mean for (row, col), e in self.entries.items() if col == column and e.mean is not None]
        if not means:
            return None
        return max(means) if self.higher_is_better else min(means)


def row_label(variant: str, selection: str) -> str:
    label = ROW_LABELS.get(variant, variant)
    if selection == "random":
        return "− k-means selection (random shots)" if variant == "full" else f"{label}, random shots"
    return label


def _card_for(name: str, data: str | None):
    from pipeline.card import CardError, load_card
    from pipeline.prepared import PreparedDataset

    try:
        return load_card(name)
    except CardError:
        pass
    try:
        return PreparedDataset(data).card if data else None
    except (OSError, ValueError):
        return None


def _metric_key(kind: str, card, metric_names: set[str]) -> str:
    if kind == "nme":
        return "test/nme"
    if card is not None:
        alpha = card.metric.alpha if card.metric.kind == "pck" else 0.1
        return f"test/pck_{alpha:g}"
    found = sorted(m for m in metric_names if m.startswith("test/pck_") and m.count("/") == 1)
    return found[0] if found else "test/pck_0.1"


def _planned_cells(client, sweep_runs) -> tuple[list[Cell], dict[tuple, str]]:
    """The cells the sweeps planned, and each cell key's settings digest in the latest sweep that planned it
    (sweeps from before digests were recorded give none: their cells count every run)."""
    import json
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    cells, settings = [], {}
    for run in sorted(sweep_runs, key=lambda r: r.info.start_time):
        with tempfile.TemporaryDirectory() as d:
            try:
                path = client.download_artifacts(run.info.run_id, CELLS_ARTIFACT, d)
            except Exception:                     # a sweep that died before writing its grid
                continue
            for c in json.loads(Path(path).read_text()):
                digest = c.pop("settings", None)
                cell = Cell(**c)
                cells.append(cell)
                if digest:
                    settings[cell.key] = digest
                else:
                    settings.pop(cell.key, None)
    return cells, settings


def collect(experiment: str, tracking_uri: str | None = None, metric: str = "main") -> list[Block]:
    """Read an experiment's runs into table blocks (one per dataset)."""
    from mlflow.tracking import MlflowClient

    from jobs.tracking import resolve_tracking_uri

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r} at {uri}")
    runs = all_runs(client, exp.experiment_id)
    planned, settings = _planned_cells(client, [r for r in runs if r.data.tags.get(KIND_TAG) == "sweep"])
    by_key: dict[tuple, list] = {}
    other_settings: dict[str, int] = {}
    for r in runs:
        t = r.data.tags
        if "dataset" in t and t.get(KIND_TAG) != "sweep":
            key = (t["dataset"], t.get("shots", ""), t.get("variant", ""), t.get("selection", ""), t.get("seed", "0"))
            if key in settings and t.get(SETTINGS_TAG) != settings[key]:
                other_settings[key[0]] = other_settings.get(key[0], 0) + (r.info.status == "FINISHED")
                continue
            by_key.setdefault(key, []).append(r)

    grid: dict[str, dict[tuple[tuple[str, str], str], set[str]]] = {}   # card → (row, shots) → seeds
    for c in planned:
        grid.setdefault(c.card, {}).setdefault(((c.variant, c.selection), c.shots), set()).add(str(c.seed))
    for card, shots, variant, selection, seed in by_key:
        grid.setdefault(card, {}).setdefault(((variant, selection), shots), set()).add(seed)

    blocks = []
    for name in sorted(grid, key=dataset_order):
        cells = grid[name]
        some_run = next((rs[0] for k, rs in by_key.items() if k[0] == name), None)
        card = _card_for(name, some_run.data.params.get("data") if some_run else None)
        metric_names = {m for k, rs in by_key.items() if k[0] == name for r in rs for m in r.data.metrics}
        main = card.metric.kind if card else ("nme" if "test/nme" in metric_names else "pck")
        kind = {"main": main, "other": "pck" if main == "nme" else "nme"}.get(metric, metric)
        key = _metric_key(kind, card, metric_names)
        entries = {}
        for (row, shots), seeds in cells.items():
            variant, selection = row
            entry = Entry(expected_seeds=len(seeds))
            paper_variant = Cell(name, shots, variant, selection).paper_variant
            if card is not None and paper_variant:
                entry.paper = card.paper_value(paper_variant, shots, kind)
            states = set()
            for seed in sorted(seeds):
                rs = by_key.get((name, shots, variant, selection, seed), [])
                finished = [r for r in rs if r.info.status == "FINISHED"]
                if finished:
                    latest = max(finished, key=lambda r: r.info.start_time)
                    if key in latest.data.metrics:
                        entry.values.append(float(latest.data.metrics[key]))
                        entry.random_weights += trained_from_random_weights(latest.data.tags, variant)
                        entry.collapsed += collapsed(latest.data.metrics)
                    else:
                        states.add("no metric")
                elif rs:
                    states.add("running" if any(r.info.status == "RUNNING" for r in rs) else "failed")
            entry.state = next((s for s in ("running", "failed", "no metric") if s in states), "not run")
            entries[(row, shots)] = entry
        rows = sorted({row for row, _ in cells}, key=lambda r: (
            SELECTIONS.index(r[1]) if r[1] in SELECTIONS else len(SELECTIONS),
            VARIANTS.index(r[0]) if r[0] in VARIANTS else len(VARIANTS), r))
        columns = sorted({s for _, s in cells}, key=shots_order)
        blocks.append(Block(name, card.title if card else name, kind, key, columns, rows, entries,
                            other_settings.get(name, 0)))
    return blocks


def trained_from_random_weights(tags: dict, variant: str) -> bool:
    """Did the run start its backbone (or, where the variant uses it, its perceptual network) from random
    weights?  Runs from before weights were recorded count as unknown, not random."""
    networks = ["fskp.backbone_weights"] + (["fskp.perceptual_weights"] if _uses_perceptual(variant) else [])
    return any(tags.get(n, "").startswith("random") for n in networks)


def collapsed(metrics: dict) -> bool:
    """Did the run's test predictions collapse toward one point (models/metrics.py::spread_ratio)?"""
    from models.metrics import COLLAPSED_SPREAD

    ratio = next((v for k, v in metrics.items() if k.endswith("/spread_ratio")), None)
    return ratio is not None and ratio < COLLAPSED_SPREAD


def _uses_perceptual(variant: str) -> bool:
    from models.variants import get_variant

    try:
        return bool(get_variant(variant).recon)
    except ValueError:
        return True


# ---- rendering -----------------------------------------------------------------------------------------------
def format_number(v: float, like: float | None = None) -> str:
    """Digits as the paper prints them: 137, 12.4, 9.19 (``like``: use the decimals of that number)."""
    ref = abs(like if like is not None else v)
    return f"{v:.0f}" if ref >= 100 else f"{v:.1f}" if ref >= 10 else f"{v:.2f}"


def _cell_parts(block: Block, row, column) -> tuple[str, bool, str]:
    """(our value text, whether it is the column's best, the note after it)."""
    entry = block.entries.get((row, column))
    if entry is None:
        return "", False, ""                  # not part of the grid (another row's shot count)
    note = ""
    if entry.random_weights:
        note += " †"
    if entry.collapsed:
        note += " ‡"
    if entry.values and len(entry.values) < entry.expected_seeds:
        note += f" [{len(entry.values)}/{entry.expected_seeds} seeds]"
    if entry.paper is not None:
        note += f" (paper {format_number(entry.paper)})"
    if entry.mean is None:
        return MISSING[entry.state], False, note
    text = format_number(entry.mean) + (f" ± {format_number(entry.std, entry.mean)}" if entry.std is not None else "")
    best = block.best(column)
    return text, best is not None and entry.mean == best, note


def _legend(experiment: str) -> str:
    from models.metrics import COLLAPSED_SPREAD

    return (f"Experiment {experiment}: the test-split metric of each cell, mean ± std over seeds (the mean "
            f"alone for one seed); the paper's number in parentheses; best of each column in bold; "
            f"— not run yet, running, failed: the cell's state; † trained from random weights (the detector's "
            f"backbone, or the perceptual network where the variant uses it), not the paper's pretrained ones; "
            f"‡ predictions collapsed toward one point in at least one seed (test spread under "
            f"{COLLAPSED_SPREAD:g} of the labels'; models/metrics.py::spread_ratio).")


def _arrow(block: Block) -> str:
    return "↑ higher is better" if block.higher_is_better else "↓ lower is better"


def render_md(blocks: list[Block], experiment: str) -> str:
    out = [f"# Results: experiment `{experiment}`", "", _legend(experiment)]
    for b in blocks:
        out += ["", f"## {b.title}: {b.metric_label} {_arrow(b)}", "",
                "| method | " + " | ".join(f"{c} shots" for c in b.columns) + " |",
                "| --- |" + " ---: |" * len(b.columns)]
        for row in b.rows:
            cells = []
            for c in b.columns:
                text, best, note = _cell_parts(b, row, c)
                cells.append((f"**{text}**" if best else text) + note)
            out.append(f"| {row_label(*row)} | " + " | ".join(cells) + " |")
        if b.other_settings:
            out += ["", _other_settings_note(b)]
    return "\n".join(out) + "\n"


def _other_settings_note(block: Block) -> str:
    return (f"({block.other_settings} finished run(s) of these cells with other settings or data — e.g. a "
            f"--smoke-test — are not shown.)")


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("−", "--"), ("—", "--"), ("↓", r"$\downarrow$"), ("↑", r"$\uparrow$")):
        text = text.replace(a, b)
    return text


def render_tex(blocks: list[Block], experiment: str) -> str:
    out = [f"% {_tex(_legend(experiment))}"]
    for b in blocks:
        n = len(b.columns) + 1
        out += ["\\begin{tabular}{l" + "c" * len(b.columns) + "}", "\\hline",
                f"\\multicolumn{{{n}}}{{l}}{{\\textbf{{{_tex(b.title)}}}: {_tex(b.metric_label)} "
                f"{_tex(_arrow(b)[0])}}} \\\\", "\\hline",
                "method & " + " & ".join(_tex(c) for c in b.columns) + " \\\\", "\\hline"]
        for row in b.rows:
            cells = []
            for c in b.columns:
                text, best, note = _cell_parts(b, row, c)
                cells.append((f"\\textbf{{{_tex(text)}}}" if best else _tex(text)) + _tex(note))
            out.append(_tex(row_label(*row)) + " & " + " & ".join(cells) + " \\\\")
        out += ["\\hline", "\\end{tabular}", ""]
    return "\n".join(out)


def render_html(blocks: list[Block], experiment: str) -> str:
    e = html.escape
    out = [f"<h2>Results: experiment {e(experiment)}</h2>", f"<p>{e(_legend(experiment))}</p>"]
    for b in blocks:
        out += [f"<h3>{e(b.title)}: {e(b.metric_label)} {e(_arrow(b))}</h3>", "<table>",
                "<thead><tr><th>method</th>" + "".join(f"<th>{e(c)} shots</th>" for c in b.columns) + "</tr></thead>",
                "<tbody>"]
        for row in b.rows:
            cells = []
            for c in b.columns:
                text, best, note = _cell_parts(b, row, c)
                cells.append("<td>" + (f"<b>{e(text)}</b>" if best else e(text)) + e(note) + "</td>")
            out.append(f"<tr><td>{e(row_label(*row))}</td>" + "".join(cells) + "</tr>")
        out += ["</tbody>", "</table>"]
    return "\n".join(out) + "\n"


def build_table(experiment: str, tracking_uri: str | None = None, fmt: str = "md", metric: str = "main") -> str:
    """The results grid of ``experiment`` as Markdown, LaTeX or HTML (see the module docstring).

    metric: "main" (each dataset's own metric, Tables 1-6), "other" (the other one: Table 7), "nme" or "pck".
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    blocks = collect(experiment, tracking_uri, metric)
    if not blocks:
        raise ValueError(f"experiment {experiment!r} has no training runs and no sweep yet")
    return {"md": render_md, "tex": render_tex, "html": render_html}[fmt](blocks, experiment)


def log_table(text: str, experiment: str, fmt: str = "md", tracking_uri: str | None = None) -> str:
    """Store the table as an artifact (``table.<fmt>``) of the experiment's "results-table" run; its id."""
    from mlflow.tracking import MlflowClient

    from jobs.tracking import resolve_tracking_uri

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"no MLflow experiment named {experiment!r}")
    tables = [r for r in all_runs(client, exp.experiment_id, f"tags.`{KIND_TAG}` = 'table'")]
    if tables:
        run_id = max(tables, key=lambda r: r.info.start_time).info.run_id
    else:
        run_id = client.create_run(exp.experiment_id, run_name="results-table", tags={KIND_TAG: "table"}).info.run_id
        client.set_terminated(run_id, "FINISHED")
    client.log_text(run_id, text, f"table.{fmt}")
    return run_id
