"""DeepLabCut project (Mathis et al., Nature Neuroscience 2018): a user's own single-animal labeling project.

Layout (as DeepLabCut creates it)::

    SRC/config.yaml                      Task, scorer, bodyparts, skeleton, video_sets {path: {crop}}
    SRC/labeled-data/<video>/CollectedData_<scorer>.csv   labels (the .h5 twin is not needed)
    SRC/labeled-data/<video>/img*.png    the extracted frames
    SRC/videos/                          the project's videos (when video_sets' paths do not exist here)

CollectedData CSV: three header rows -- ``scorer``, ``bodyparts``, ``coords`` (x / y per body part)
-- then one row per labeled frame.  Older DeepLabCut writes the frame's path relative to the project
in one index column (``labeled-data/<video>/img005.png``); newer versions write three index columns
(``labeled-data``, ``<video>``, ``img005.png``).  Both are read: the index columns are those before
the first ``x``/``y`` of the ``coords`` row.  Windows path separators are accepted.

Missing labels: DeepLabCut writes an empty cell (or ``NaN``) where a body part was not labeled in a
frame (the Tongue is often missing in the reaching example).  Both mean "not labeled": the keypoint is
kept with ``visible`` False.  A row with the wrong number of columns, a non-numeric cell, only one of
x / y, or a frame that is not on disk is a ``DataError`` naming the CSV and its line number.

Machine labels: DeepLabCut's ``analyze_videos`` output and ``machinelabels`` files (and the CSV
``fskp label`` writes, pipeline/exports.py) have a third column per body part: the coords row reads
``x, y, likelihood``.  Such files are read too.  A body part whose likelihood is below ``pcutoff``
(config.yaml's ``pcutoff``, DeepLabCut's own plotting/refinement threshold; 0.6 when absent) is read
as not labeled (``visible`` False), as DeepLabCut's GUIs hide it.  A likelihood that is missing or
non-numeric (or outside [0, 1]) where x / y are given is a ``DataError`` naming the CSV and line.
``fskp prepare dlc --labels FILE`` reads the frames from such a file instead of the project's
CollectedData files.  Files without likelihood columns are read as before (``pcutoff`` unused).

Coordinates: DeepLabCut's labeling GUIs put pixel centres at integer coordinates;
``PIXEL_INDEX_OFFSET`` (0.5) is added so pixel centres sit at integer + 0.5 as in the prepared format.
A prepared keypoint maps back to the CSV's value by
``csv_xy = crop_box[:2] + xy * (crop_box[2] - crop_box[0]) / size - PIXEL_INDEX_OFFSET``.

Crop: DeepLabCut frames are large with the animal in part of the frame, so every frame of a project
-- labeled or not, and later the frames decoded from its videos -- is cut with ONE fixed square crop:
the box around all labeled keypoints of the project, made square and enlarged by the margin
(``project_crop``; ``pipeline.prepared.square_crop_box``).  It is stored as every row's ``crop_box``,
so the same crop can be applied to video frames.

Splits: every labeled frame goes to ``train`` (the few-shot labeling job picks its shots from them
and holds the rest out); frames in labeled-data/ that no CSV row labels go to ``unlabeled``.  The
project's videos, the larger unlabeled pool, are listed by ``pool_videos`` (decoding them is not this
module's job).

Multi-animal projects (maDLC, ``multianimalproject: true``) whose individuals are identities
(``identity: true``: each individual can be told apart, so "mouse1" in one frame is "mouse1" in the next) are
read as one animal with every individual's body parts: keypoint ``<individual>_<bodypart>`` for each of
``individuals`` x ``multianimalbodyparts``, then the ``uniquebodyparts`` by their own names (DeepLabCut's
individual "single"); the skeleton is repeated for each individual.  Their label CSVs have four header rows
(scorer, individuals, bodyparts, coords).  ``keypoint_columns`` gives each keypoint's (individual, body part),
which the outputs write back in DeepLabCut's multi-animal layout.  Without identities (``identity`` false or
absent) the individuals' names are interchangeable from frame to frame and such a project is refused.
"""
from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

from pipeline.card import Card
from pipeline.converters._common import PIXEL_INDEX_OFFSET  # 0.5: pixel centres at integers -> at +0.5
from pipeline.converters.coco import card_from_keypoints
from pipeline.prepared import DataError, Instance, square_crop_box

CARD = None  # no fixed card: built from config.yaml (card_for) unless --card is given
#: what a multi-animal project without identities gets, and what is planned
MULTI_ANIMAL = ("a multi-animal DeepLabCut project whose individuals are not identities (config.yaml's identity is "
                "not true) is not supported yet: fskp would learn 'mouse1' as a keypoint set of its own, which "
                "only works when each individual can be told apart in every frame. If they can, set identity: "
                "true in config.yaml (and label each individual consistently). Planned: interchangeable animals "
                "as separate instances (one crop per animal, tracked). Today's alternative: make a single-animal "
                "project of one individual's labels (DeepLabCut's single-animal layout: scorer, bodyparts, coords "
                "header rows) and label that")
#: DeepLabCut's individual name for the unique body parts of a multi-animal project
SINGLE = "single"
HELP = "a DeepLabCut project: config.yaml + labeled-data/<video>/CollectedData_<scorer>.csv and its frames"

#: crop margin per side, as a fraction of the project box's larger side (``fskp prepare``'s default)
DEFAULT_MARGIN = 0.25
#: likelihood below which a machine-labeled body part is read as not labeled (DeepLabCut's default pcutoff)
DEFAULT_PCUTOFF = 0.6
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".m4v", ".wmv")


@dataclass(frozen=True)
class LabeledFrame:
    id: str                  # <video>/<frame stem>
    image: Path
    csv: Path
    line: int                # line number in the CSV
    keypoints: np.ndarray    # [K, 2] prepared-format source pixels (pixel centres at +0.5)
    visible: np.ndarray      # [K] bool: labeled in the CSV


# ---- config and card ---------------------------------------------------------------------------------
def read_config(src: Path) -> dict:
    path = Path(src) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{src}: no config.yaml (is this a DeepLabCut project folder?)")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(path, None, f"not valid YAML: {e}") from None
    if not isinstance(cfg, dict):
        raise DataError(path, None, "expected a mapping of DeepLabCut settings")
    if cfg.get("multianimalproject") or cfg.get("bodyparts") == "MULTI!":
        return _multi_animal_config(path, cfg)
    parts = cfg.get("bodyparts")
    if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p for p in parts):
        raise DataError(path, "bodyparts", f"expected a non-empty list of body part names, got {parts!r}")
    if len(set(parts)) != len(parts):
        raise DataError(path, "bodyparts", f"duplicate body part names in {parts}")
    return cfg


def _names(path: Path, cfg: dict, key: str, required: bool = True) -> list[str]:
    value = cfg.get(key) or ([] if not required else None)
    if not isinstance(value, list) or (required and not value) or not all(isinstance(v, str) and v for v in value):
        raise DataError(path, key, f"expected a {'non-empty ' if required else ''}list of names, got {cfg.get(key)!r}")
    if len(set(value)) != len(value):
        raise DataError(path, key, f"duplicate names in {value}")
    return value


def keypoint_name(individual: str, bodypart: str) -> str:
    """The keypoint of a multi-animal project's (individual, body part): ``<individual>_<bodypart>``; a unique
    body part (individual ``single``) keeps its name."""
    return bodypart if individual == SINGLE else f"{individual}_{bodypart}"


def _multi_animal_config(path: Path, cfg: dict) -> dict:
    """A multi-animal config with identities, as a single-animal one: ``bodyparts`` the keypoint names
    (``keypoint_name``), ``keypoint_columns`` each keypoint's (individual, body part)."""
    if cfg.get("identity") is not True:
        raise DataError(path, "identity", MULTI_ANIMAL)
    individuals = _names(path, cfg, "individuals")
    if SINGLE in individuals:
        raise DataError(path, "individuals", f"{SINGLE!r} is DeepLabCut's name for the unique body parts, not an "
                                             f"individual")
    columns = [(i, b) for i in individuals for b in _names(path, cfg, "multianimalbodyparts")]
    columns += [(SINGLE, b) for b in _names(path, cfg, "uniquebodyparts", required=False)]
    names = [keypoint_name(i, b) for i, b in columns]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(path, "uniquebodyparts", f"keypoint names {twice} come out twice (<individual>_<bodypart> "
                                                 f"equals another name); rename the body part or the individual")
    return {**cfg, "bodyparts": names, "keypoint_columns": columns}


def keypoint_columns(cfg: dict) -> list[tuple[str, str]] | None:
    """(individual, body part) of each keypoint of a multi-animal project read by ``read_config``; None for a
    single-animal project."""
    return cfg.get("keypoint_columns")


def pcutoff_of(src: Path, cfg: dict) -> float:
    """config.yaml's ``pcutoff`` (a likelihood in [0, 1]); ``DEFAULT_PCUTOFF`` when the key is absent."""
    value = cfg.get("pcutoff")
    if value is None:
        return DEFAULT_PCUTOFF
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise DataError(Path(src) / "config.yaml", "pcutoff", f"expected a likelihood in [0, 1], got {value!r}")
    return float(value)


def iteration_of(src: Path, cfg: dict) -> int:
    """config.yaml's refinement ``iteration`` (0 when absent): DeepLabCut names machine labels by it."""
    value = cfg.get("iteration", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(Path(src) / "config.yaml", "iteration", f"expected a whole number >= 0, got {value!r}")
    return value


def card_for(src: Path, links: list[tuple[int, int]] | None = None) -> Card:
    """A card from config.yaml: bodyparts as keypoints, the skeleton as links (see coco.card_from_keypoints).

    links: index pairs to use instead of the skeleton (``fskp label --links``).  A project without a
    skeleton (``skeleton: []`` or no key, as many labs have) gets a card without links; ``fskp label``
    then derives them from the labeled frames (jobs/labeling/inputs.py ``derive_links``)."""
    path = Path(src) / "config.yaml"
    cfg = read_config(src)
    names = cfg["bodyparts"]
    columns = keypoint_columns(cfg)
    parts = list(dict.fromkeys(b for _, b in columns)) if columns else names
    given = links is not None
    links = [tuple(sorted(link)) for link in links] if given else []
    for i, edge in enumerate([] if given else cfg.get("skeleton") or []):
        if not isinstance(edge, (list, tuple)) or len(edge) != 2 or any(e not in parts for e in edge):
            raise DataError(path, f"skeleton[{i}]", f"expected two body parts from {parts}, got {edge!r}")
        for individual in dict.fromkeys(i for i, _ in columns) if columns else [None]:   # per individual
            ends = [names.index(e) if individual is None else _index_of(columns, individual, e) for e in edge]
            if None not in ends and ends[0] != ends[1]:
                links.append(tuple(sorted(ends)))
    task = str(cfg.get("Task") or Path(src).resolve().name)
    name = "dlc-" + (re.sub(r"[^a-z0-9]+", "-", task.lower()).strip("-") or "project")
    return card_from_keypoints(
        name, f"DeepLabCut project {task} ({cfg.get('scorer', '?')}, {cfg.get('date', '?')})", names,
        list(dict.fromkeys(links)), origin=str(path),
        notes=("Links from --links (config.yaml's skeleton not used). " if given else "") +
              "Built by `fskp prepare dlc` from config.yaml: bodyparts, skeleton as links, flip pairs from "
              "left_/right_ names, parts from the skeleton's connected components.  All frames share one "
              "square crop around the project's labeled keypoints.")


def _index_of(columns: list[tuple[str, str]], individual: str, bodypart: str) -> int | None:
    """The keypoint of ``bodypart`` for ``individual`` (a unique body part is everyone's); None if it has none."""
    for k, (i, b) in enumerate(columns):
        if b == bodypart and i in (individual, SINGLE):
            return k
    return None


# ---- labels ------------------------------------------------------------------------------------------
def label_files(src: Path, scorer: str | None) -> list[Path]:
    """The CollectedData CSV of every labeled-data/<video> folder (the scorer's when there are several)."""
    root = Path(src) / "labeled-data"
    if not root.is_dir():
        raise FileNotFoundError(f"{src}: no labeled-data/ folder")
    files = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith("_labeled")):
        found = sorted(folder.glob("CollectedData_*.csv"))
        mine = [f for f in found if f.name == f"CollectedData_{scorer}.csv"]
        if len(found) > 1 and not mine:
            raise DataError(folder, None, f"several label files ({', '.join(f.name for f in found)}) and none "
                                          f"for the project's scorer {scorer!r}")
        files += mine or found
    if not files:
        raise FileNotFoundError(f"{root}: no labeled-data/<video>/CollectedData_*.csv label file")
    return files


def _cell(text: str, path: Path, line: int, what: str) -> float:
    s = text.strip()
    if s == "" or s.lower() == "nan":
        return math.nan
    try:
        v = float(s)
    except ValueError:
        raise DataError(path, line, f"non-numeric value {s!r} for {what}") from None
    if math.isinf(v):
        raise DataError(path, line, f"infinite value for {what}")
    return v


def _likelihood(text: str, path: Path, line: int, name: str) -> float:
    """A likelihood cell of a body part whose x / y are given: a number in [0, 1], else DataError."""
    v = _cell(text, path, line, f"{name} likelihood")
    if math.isnan(v):
        raise DataError(path, line, f"{name}: x, y are given but the likelihood is missing")
    if not 0.0 <= v <= 1.0:
        raise DataError(path, line, f"{name}: likelihood {v:g} is outside [0, 1]")
    return v


@dataclass(frozen=True)
class CsvHeader:
    """The header rows of a DeepLabCut label CSV, checked: scorer, bodyparts, coords -- or scorer, individuals,
    bodyparts, coords in a multi-animal project."""

    n_index: int                                   # leading columns naming the image (1, or 3 in DeepLabCut 2.2+)
    width: int                                     # columns per row
    columns: dict[tuple[str, str], int]            # (keypoint, "x" | "y" | "likelihood") -> column
    bodyparts: tuple[str, ...]                     # keypoints in column order (``keypoint_name`` in multi-animal)
    has_likelihood: bool                           # machine labels (x, y, likelihood per body part)
    rows: tuple[tuple[str, ...], ...]              # the header rows as read
    individuals: tuple[tuple[str, str], ...] | None = None   # multi-animal: (individual, body part) per keypoint


def read_header(path: Path, reader) -> CsvHeader:
    """The header rows from a csv.reader at the top of a label CSV (three, or four with an individuals row)."""
    rows = [next(reader, None) for _ in range(3)]
    if rows[1] and rows[1][0] == "individuals":
        rows.append(next(reader, None))
    return parse_header(path, rows)


def parse_header(path: Path, header: list[list[str] | None]) -> CsvHeader:
    """Check the scorer / [individuals /] bodyparts / coords rows of a label CSV (the one reading of them in
    the project)."""
    multi = bool(header[1]) and header[1][0] == "individuals"
    expected = ["scorer", "individuals", "bodyparts", "coords"] if multi else ["scorer", "bodyparts", "coords"]
    if len(header) != len(expected) or any(h is None for h in header):
        raise DataError(path, None, f"expected {len(expected)} header rows ({', '.join(expected)})")
    if [h[0] if h else "" for h in header] != expected:
        raise DataError(path, 1, f"expected header rows starting with {', '.join(expected)}; got "
                                 f"{[h[0] if h else '' for h in header]}")
    coords, parts, width = header[-1], header[-2], len(header[-1])
    for r, row in enumerate(header[1:-1], start=2):
        if len(row) != width:
            raise DataError(path, r, f"{row[0]} row has {len(row)} columns, coords row {width}")
    n_index = next((j for j in range(1, width) if coords[j] in ("x", "y")), None)
    if n_index is None:
        raise DataError(path, len(header), "coords row has no x / y column")
    columns: dict[tuple[str, str], int] = {}
    owners: dict[str, tuple[str, str]] = {}
    for j in range(n_index, width):
        part, coord = parts[j], coords[j]
        if multi:
            owners.setdefault(keypoint_name(header[1][j], part), (header[1][j], part))
            part = keypoint_name(header[1][j], part)
        if coord not in ("x", "y", "likelihood") or (part, coord) in columns:
            raise DataError(path, len(header), f"column {j + 1}: unexpected or repeated ({part!r}, {coord!r})")
        columns[(part, coord)] = j
    bodyparts = tuple(dict.fromkeys(p for p, _ in columns))
    return CsvHeader(n_index=n_index, width=width, columns=columns, bodyparts=bodyparts,
                     has_likelihood=any(c == "likelihood" for _, c in columns),
                     rows=tuple(tuple(h) for h in header),
                     individuals=tuple(owners[b] for b in bodyparts) if multi else None)


def read_csv(path: Path) -> tuple[CsvHeader, list[tuple[int, list[str]]]]:
    """(checked header, [(line number, row)] of the non-empty data rows) of a label CSV."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        head = read_header(path, reader)
        return head, [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]


def read_label_file(path: Path, src: Path, keypoints: tuple[str, ...],
                    pcutoff: float = DEFAULT_PCUTOFF) -> list[LabeledFrame]:
    """Parse one DeepLabCut label CSV into frames with the card's keypoints (by body part name).

    CollectedData files (x, y per body part) and machine-label files (x, y, likelihood per body part)
    are both read; in the latter a body part with likelihood < ``pcutoff`` is not labeled (visible False).
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        head = read_header(path, reader)
        n_index, width, columns, has_likelihood = head.n_index, head.width, head.columns, head.has_likelihood
        for name in keypoints:
            if (name, "x") not in columns or (name, "y") not in columns:
                raise DataError(path, 2, f"body part {name!r} of the card has no x / y columns")
            if has_likelihood and (name, "likelihood") not in columns:
                raise DataError(path, 3, f"body part {name!r} has no likelihood column (other body parts have one)")
        extra = sorted(set(head.bodyparts) - set(keypoints))
        if extra:
            raise DataError(path, 2, f"body parts {extra} are not in the card's keypoints {list(keypoints)}")

        frames = []
        for row in reader:
            line = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != width:
                raise DataError(path, line, f"expected {width} columns, got {len(row)}")
            rel = Path(*[c.replace("\\", "/") for c in row[:n_index]]) if n_index > 1 else \
                Path(row[0].replace("\\", "/"))
            candidates = [src / rel, path.parent / rel.name, src / rel.name]
            image = next((p for p in candidates if p.is_file()), None)
            if image is None:
                raise DataError(path, line, f"image not found: {candidates[0]}")
            kp = np.zeros((len(keypoints), 2))
            vis = np.zeros(len(keypoints), bool)
            for k, name in enumerate(keypoints):
                x = _cell(row[columns[(name, "x")]], path, line, f"{name} x")
                y = _cell(row[columns[(name, "y")]], path, line, f"{name} y")
                if math.isnan(x) != math.isnan(y):
                    raise DataError(path, line, f"{name}: only one of x, y is given")
                if math.isnan(x):
                    continue
                if has_likelihood and _likelihood(row[columns[(name, "likelihood")]], path, line, name) < pcutoff:
                    continue                            # below pcutoff: not labeled, as DeepLabCut shows it
                kp[k] = (x + PIXEL_INDEX_OFFSET, y + PIXEL_INDEX_OFFSET)
                vis[k] = True
            frames.append(LabeledFrame(id=f"{image.parent.name}/{image.stem}", image=image, csv=path, line=line,
                                       keypoints=kp, visible=vis))
    return frames


def unlabeled_frames(src: Path, labeled: list[LabeledFrame]) -> list[Path]:
    """Frames in labeled-data/<video>/ folders that no CSV row labels."""
    taken = {f.image.resolve() for f in labeled}
    out = []
    for folder in sorted(p for p in (Path(src) / "labeled-data").iterdir()
                         if p.is_dir() and not p.name.endswith("_labeled")):
        out += [p for p in sorted(folder.iterdir())
                if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in taken]
    return out


def project_crop(frames: list[LabeledFrame], margin: float = DEFAULT_MARGIN) -> tuple[float, float, float, float]:
    """The project's one square crop: the box of all labeled keypoints, squared and enlarged by ``margin``."""
    pts = np.concatenate([f.keypoints[f.visible] for f in frames]) if frames else np.zeros((0, 2))
    if len(pts) == 0:
        where = frames[0].csv if frames else "labeled-data"
        raise DataError(where, None, "no labeled keypoint in the project, so no crop can be placed")
    return square_crop_box((*pts.min(0), *pts.max(0)), margin)


def pool_videos(src: Path) -> list[Path]:
    """The project's videos (the unlabeled pool): config.yaml's video_sets that exist on this machine
    (relative paths against the project), else the video files in SRC/videos/."""
    src = Path(src)
    cfg = read_config(src)
    listed = [Path(v) if Path(v).is_absolute() else src / v for v in (cfg.get("video_sets") or {})]
    existing = [p for p in listed if p.is_file()]
    if existing:
        return existing
    folder = src / "videos"
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if folder.is_dir() else []


def instances(src: Path, card: Card, skipped: Counter, margin: float = DEFAULT_MARGIN,
              labels: Path | None = None) -> Iterator[Instance]:
    """The project's labeled frames (split train) and its other extracted frames (split unlabeled).

    labels: one label file to read instead of the project's CollectedData files (e.g. machine labels
    written by ``fskp label``); its index paths are relative to the project.  Machine-labeled body parts
    under config.yaml's ``pcutoff`` are not labeled.
    """
    src = Path(src)
    cfg = read_config(src)
    pcutoff = pcutoff_of(src, cfg)
    if labels is not None:
        labels = Path(labels)
        if not labels.is_file():
            raise FileNotFoundError(f"{labels}: label file not found")
        files = [labels]
    else:
        files = label_files(src, cfg.get("scorer"))
    frames = [f for path in files for f in read_label_file(path, src, card.keypoints, pcutoff)]
    crop = project_crop(frames, margin)
    for f in frames:
        yield Instance(id=f.id, split="train", source=str(f.image), keypoints=f.keypoints, visible=f.visible,
                       origin=(str(f.csv), f.line), crop_box=crop)
    for image in unlabeled_frames(src, frames):
        yield Instance(id=f"{image.parent.name}/{image.stem}", split="unlabeled", source=str(image),
                       keypoints=None, visible=None, origin=(str(image), None), crop_box=crop)
