"""The grid vocabulary shared by `fskp reproduce` (jobs/sweep.py) and `fskp table` (jobs/table.py).

A results grid is a list of ``Cell``s (dataset, shots, variant, selection, seed): from the command line
(``expand_grid``) or from a preset that reproduces one of the paper's tables (``table_cells``, read from the
``paper`` entries of the dataset cards).  A cell's MLflow runs carry its key as tags; the settings that change
a result (``RESULT_PARAMS``) and the prepared data's fingerprint make its ``settings_digest``, recorded on every
run (``SETTINGS_TAG``) and in the sweep's ``cells.json``, so a table shows only the runs of its grid.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass

from models.variants import VARIANTS as DEFINED_VARIANTS

#: every variant of models/variants.py in table order: the method, the baselines, then the others as defined there
VARIANTS = ("full", "supervised", "xiao") + tuple(v for v in DEFINED_VARIANTS if v not in ("full", "supervised", "xiao"))
#: variants that reproduce another variant's paper row: Xiao et al.'s recipe is the paper's baseline row
PAPER_ROW_OF = {"xiao": "supervised"}
#: the variant a paper row is reproduced with in table presets (the "Xiao et al." row: their recipe)
VARIANT_OF_PAPER_ROW = {row: variant for variant, row in PAPER_ROW_OF.items()}
SELECTIONS = ("kmeans", "random")
#: Table 3's "- kmeans selection" row is full training with random shots, averaged over 3 runs (paper §4.3)
RANDOM_SELECTION_SEEDS = (0, 1, 2)
#: the paper variant name of that row in the cards
RANDOM_SHOTS_ROW = "random-shots"
#: the order the paper presents its datasets in; other datasets follow alphabetically
PAPER_DATASET_ORDER = ("wflw", "syntheseyes", "cub", "atrw", "carfusion", "synthesisai_faces", "ffhq_dlib68",
                       "lsp", "300w", "h36m")
#: TrainJob fields that change a run's result: a finished run counts for a cell only if these match
RESULT_PARAMS = ("iterations", "backbone", "size", "coefficients", "lr", "unlabeled_batch", "perceptual_vit",
                 "selection_backbone", "selection_weights",
                 "backbone_weights", "perceptual_weights", "pool", "precision")
#: TrainJob fields that change a result, added after runs were recorded without them: part of a run's settings
#: only where they differ from this default, so earlier runs keep their settings digest and still count
LATER_RESULT_PARAMS = {"transform_ramp": "1.0", "edge_weight_lr_scale": "1.0", "mask_patch": "16",
                       "labeled_apart": "False", "batch_norm": "batch", "heatmap_target": "0.0"}
#: MLflow tags of the sweep's own parent run (it has no "dataset" tag, so tables never count it)
KIND_TAG, DRIVER_HOST_TAG, DRIVER_PID_TAG = "fskp.kind", "fskp.driver_host", "fskp.driver_pid"
CELLS_ARTIFACT = "cells.json"


# ---- cells -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One training run of a results grid."""

    card: str                   # card name; the MLflow "dataset" tag
    shots: str                  # "10" or "5%" (a share of the train split)
    variant: str = "full"       # one of VARIANTS
    selection: str = "kmeans"   # kmeans (paper §3.6) | random
    seed: int = 0
    data: str = ""              # prepared dataset folder ("" until resolved)

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """What identifies the cell's runs in MLflow: the tags dataset, shots, variant, selection, seed."""
        return (self.card, self.shots, self.variant, self.selection, str(self.seed))

    @property
    def paper_variant(self) -> str | None:
        """The variant name of the card's paper row this cell reproduces (None: no such row)."""
        if self.selection == "kmeans":
            return PAPER_ROW_OF.get(self.variant, self.variant)
        return RANDOM_SHOTS_ROW if self.variant == "full" else None

    @property
    def name(self) -> str:
        return f"{self.card}-{self.shots.replace('%', 'pct')}-{self.variant}-{self.selection}-seed{self.seed}"

    def to_dict(self) -> dict:
        return asdict(self)


def parse_list(text: str | None) -> list[str]:
    """ "1, 10,5%" → ["1", "10", "5%"]; None or "" → []."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def check_shots(shots: str) -> str:
    """A count ("10") or a percentage of the train split ("5%", in (0, 100]); returned normalised."""
    text = str(shots).strip()
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)%", text)
    if m and 0 < float(m.group(1)) <= 100:
        return text
    if re.fullmatch(r"[1-9][0-9]*", text):
        return text
    raise ValueError(f"shots must be a positive count (10) or a percentage in (0, 100] (5%), got {shots!r}")


def shots_order(shots: str) -> tuple[int, float]:
    """Sort key of shot columns as the paper prints them: counts ascending, then percentages ascending."""
    return (1, float(shots[:-1])) if shots.endswith("%") else (0, float(shots))


def dataset_order(card: str) -> tuple[int, str]:
    return (PAPER_DATASET_ORDER.index(card), "") if card in PAPER_DATASET_ORDER else (len(PAPER_DATASET_ORDER), card)


def cell_order(cell: Cell) -> tuple:
    variant = VARIANTS.index(cell.variant) if cell.variant in VARIANTS else len(VARIANTS)
    return (dataset_order(cell.card), SELECTIONS.index(cell.selection), variant, shots_order(cell.shots), cell.seed)


def unique_cells(cells) -> list[Cell]:
    """Cells without repeats (same key), in grid order."""
    seen, out = set(), []
    for c in sorted(cells, key=cell_order):
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def expand_grid(datasets: list[tuple[str, str]], shots: list[str], variants: list[str],
                selections: list[str] = ("kmeans",), seeds: list[int] = (0,)) -> list[Cell]:
    """The full product of the options; ``datasets`` are (card name, prepared folder or "") pairs."""
    if not datasets or not shots:
        raise ValueError("a grid needs at least one dataset and one shot count (or a --table preset)")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; one of {', '.join(VARIANTS)}")
    for s in selections:
        if s not in SELECTIONS:
            raise ValueError(f"unknown selection {s!r}; one of {', '.join(SELECTIONS)}")
    shots = [check_shots(s) for s in shots]
    return unique_cells(Cell(card, n, v, sel, int(seed), data) for card, data in datasets for n in shots
                        for v in variants for sel in selections for seed in seeds)


# ---- presets: the paper's tables, read from the cards -------------------------------------------------------
def preset_tables() -> list[int]:
    """Numbers of the paper's tables that name at least one of our variants in some card."""
    from pipeline.card import card_names, load_card

    return sorted({t.table for name in card_names() for t in load_card(name).paper
                   if any(r.variant for r in t.rows)})


def table_cells(table: int) -> list[Cell]:
    """Exactly the cells of the paper's table ``table`` that we can run.

    For every card with that table: each row mapped to one of our variants (the "Xiao et al." row, stored as
    ``supervised`` in the cards, to ``xiao``: their recipe), at each shot column where the paper prints a number.  The "- kmeans selection" row is full training with random shots, one cell per
    seed of ``RANDOM_SELECTION_SEEDS`` (the paper averages 3 runs).  Tables 1 and 7 have the same cells (7
    reports the other metric of the same runs).
    """
    from pipeline.card import card_names, load_card

    cells = []
    for name in card_names():
        for t in load_card(name).paper:
            if t.table != table:
                continue
            for row in t.rows:
                if row.variant is None:
                    continue                      # another method: its numbers are only printed
                variant, selection, seeds = VARIANT_OF_PAPER_ROW.get(row.variant, row.variant), "kmeans", (0,)
                if row.variant == RANDOM_SHOTS_ROW:
                    variant, selection, seeds = "full", "random", RANDOM_SELECTION_SEEDS
                for shots, cell in zip(t.shots, row.cells):
                    if cell.value is not None:
                        cells += [Cell(name, shots, variant, selection, seed) for seed in seeds]
    if not cells:
        raise ValueError(f"no card has paper table {table}; presets exist for tables "
                         f"{', '.join(map(str, preset_tables()))}")
    return unique_cells(cells)


def filter_cells(cells: list[Cell], *, cards=None, shots=None, variants=None, selections=None,
                 seeds=None) -> list[Cell]:
    """The cells matching every filter given (None or empty: no filter)."""
    def keep(c: Cell) -> bool:
        return ((not cards or c.card in cards) and (not shots or c.shots in shots)
                and (not variants or c.variant in variants) and (not selections or c.selection in selections)
                and (not seeds or c.seed in seeds))
    return [c for c in cells if keep(c)]

#: MLflow tag of a cell's run: the digest of its result-changing settings and its data (``settings_digest``)
SETTINGS_TAG = "fskp.settings"


# ---- what MLflow holds -----------------------------------------------------------------------------------------
def all_runs(client, experiment_id: str, filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def result_params(train_options: dict, variant: str) -> dict[str, str]:
    """The settings (``job_settings``) of a sweep's cell of ``variant``, as MLflow stores them."""
    from jobs.training import TrainJob

    options = {k: v for k, v in train_options.items() if k not in ("data", "variant")}
    return job_settings(TrainJob(data="", variant=variant, **options))


def settings_digest(params: dict[str, str], data_fingerprint: str) -> str:
    """12 hex digits naming a cell's result-changing settings (``result_params``) on one prepared dataset."""
    text = json.dumps({"params": params, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def job_settings(job) -> dict[str, str]:
    """The RESULT_PARAMS of a TrainJob, as MLflow stores them (str of the field), and what its variant
    switches on (a changed definition of a variant's name is a changed setting)."""
    from models.variants import get_variant

    later = {k: str(getattr(job, k)) for k, default in LATER_RESULT_PARAMS.items() if str(getattr(job, k)) != default}
    return {**{k: str(getattr(job, k))[:500] for k in RESULT_PARAMS}, **later,
            "variant_definition": get_variant(job.variant).definition}


def same_settings(run_params: dict[str, str], wanted: dict[str, str]) -> bool:
    """Were a run's MLflow params recorded with the settings ``wanted`` (``job_settings``)?  A later result
    param the run lacks counts as its default (runs recorded before it existed)."""
    return (all(run_params.get(k) == v for k, v in wanted.items())
            and all(run_params.get(k, d) == wanted.get(k, d) for k, d in LATER_RESULT_PARAMS.items()))
