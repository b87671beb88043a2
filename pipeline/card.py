"""Dataset cards: a keypoint set described as data, parsed once into a frozen, validated object.

A card is a YAML file (see ``pipeline/cards/``).  Keypoints are named; links, parts, flip pairs,
smoothing groups and the metric refer to keypoints by name.  ``Card`` derives the index forms the
models need (link index pairs, part index lists, the flip permutation) and checks everything once,
so a card with a typo fails when it is loaded, naming the file and the offending entry.

Schema (keys in order of appearance in a card)::

    name: wflw                      # identifier, also the file stem
    title: WFLW                     # human-readable name
    keypoints: [name, ...]          # K unique names, in the order of the coordinate arrays
    links: [[a, b], ...]            # user-given edges of the edge map (paper §3.5)
    parts: {part: [name, ...]}      # subsets for the 3D similarity constraint (paper §3.4)
    flip_pairs: [[left, right]]     # partners swapped by a horizontal flip; the rest map to themselves
    smoothing_groups: {g: [names]}  # optional chains for the landmark smoothing of Supplement A
    metric: {kind: nme|pck, ...}    # see ``MetricSpec``
    splits: {split: description}    # how the paper splits the data (§4.1, Supplement C-D)
    source: {...}                   # homepage, license, citation, download (see ``SourceSpec``)
    paper: [{table, metric, shots, rows: [{method, variant, values}]}]   # the paper's numbers
    notes: free text                # choices the paper leaves open, and why we made them
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CARDS_DIR = Path(__file__).parent / "cards"

#: Variants a paper row may map to (see models/variants); ``None`` marks methods we do not run.
KNOWN_VARIANTS = ("full", "supervised", "xiao-depth", "no-recon", "no-2d", "no-3d", "no-uncertainty", "random-shots")


class CardError(ValueError):
    """A card that does not validate; the message names the file and the entry."""


@dataclass(frozen=True)
class MetricSpec:
    """How predictions on this dataset are scored.

    kind: ``nme`` (mean L2 error / normaliser, in %) or ``pck`` (fraction within ``alpha`` × normaliser, in %).
    normalize: ``keypoints`` (distance between the two keypoints in ``pair``), ``bbox_max_side``
        (largest side of the box around the visible ground-truth keypoints), ``bbox_diag`` or ``image``
        (the larger image side).
    alpha: PCK threshold as a fraction of the normaliser (paper: 0.1).
    min_threshold_px: PCK threshold never below this many pixels (the DLC benchmark uses 20 px).
    """

    kind: str
    normalize: str
    pair: tuple[int, int] | None = None
    alpha: float = 0.1
    min_threshold_px: float = 0.0

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "pck"

    @property
    def label(self) -> str:
        return "PCK@%g (%%)" % self.alpha if self.kind == "pck" else "NME (%)"


@dataclass(frozen=True)
class Download:
    url: str
    filename: str
    sha256: str | None = None
    unpack: bool = True


@dataclass(frozen=True)
class SourceSpec:
    """Where a dataset comes from.  ``auto_download`` is true only where the license allows it."""

    homepage: str = ""
    license: str = ""
    citation: str = ""
    auto_download: bool = False
    downloads: tuple[Download, ...] = ()
    instructions: str = ""          # how to obtain the files when automatic download is not allowed
    layout: str = ""                # the folder layout ``fskp prepare`` expects


@dataclass(frozen=True)
class PaperCell:
    value: float | None             # None where the paper prints "-"
    other_examples: bool = False    # the paper's dagger: reported on another set of examples


@dataclass(frozen=True)
class PaperRow:
    method: str
    variant: str | None             # the variant of ours that reproduces this row, if any
    cells: tuple[PaperCell, ...]


@dataclass(frozen=True)
class PaperTable:
    table: int
    metric: str                     # "nme" or "pck"
    shots: tuple[str, ...]          # column labels: "1", "10", "5%", "100%" ...
    rows: tuple[PaperRow, ...]

    def value(self, variant: str, shots: str) -> float | None:
        """The paper's number for one of our variants at one shot count, or None."""
        if shots not in self.shots:
            return None
        j = self.shots.index(shots)
        for row in self.rows:
            if row.variant == variant:
                return row.cells[j].value
        return None


@dataclass(frozen=True)
class Card:
    name: str
    title: str
    keypoints: tuple[str, ...]
    links: tuple[tuple[int, int], ...]
    parts: dict[str, tuple[int, ...]]
    flip_pairs: tuple[tuple[int, int], ...]
    smoothing_groups: dict[str, tuple[int, ...]]
    metric: MetricSpec
    splits: dict[str, str]
    source: SourceSpec
    paper: tuple[PaperTable, ...]
    notes: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # ---- derived forms -------------------------------------------------------------------------
    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    def index(self, name: str) -> int:
        return self.keypoints.index(name)

    @property
    def flip_permutation(self) -> tuple[int, ...]:
        """perm such that keypoints_of_flipped_image = flip_x(keypoints)[perm]."""
        perm = list(range(self.num_keypoints))
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return tuple(perm)

    @property
    def fingerprint(self) -> str:
        """sha256 of the card's content (canonical JSON), stable across key order and formatting."""
        blob = json.dumps(self.raw, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def paper_value(self, variant: str, shots: str, metric: str | None = None) -> float | None:
        """The paper's number for (variant, shots) in the card's main metric (or ``metric``)."""
        metric = metric or self.metric.kind
        for table in self.paper:
            if table.metric == metric:
                v = table.value(variant, shots)
                if v is not None:
                    return v
        return None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False, allow_unicode=True, width=120)


# ---- parsing ---------------------------------------------------------------------------------------
def _names_to_indices(names: Any, index: dict[str, int], where: str) -> tuple[int, ...]:
    if not isinstance(names, (list, tuple)):
        raise CardError(f"{where}: expected a list of keypoint names, got {names!r}")
    out = []
    for n in names:
        if not isinstance(n, str) or n not in index:
            raise CardError(f"{where}: unknown keypoint {n!r}")
        out.append(index[n])
    return tuple(out)


def _pairs(items: Any, index: dict[str, int], where: str) -> tuple[tuple[int, int], ...]:
    pairs = []
    for i, item in enumerate(items or []):
        ij = _names_to_indices(item, index, f"{where}[{i}]")
        if len(ij) != 2 or ij[0] == ij[1]:
            raise CardError(f"{where}[{i}]: expected two different keypoints, got {item!r}")
        pairs.append((ij[0], ij[1]))
    return tuple(pairs)


def _cell(v: Any, where: str) -> PaperCell:
    if v is None or v == "-":
        return PaperCell(None)
    if isinstance(v, (int, float)):
        return PaperCell(float(v))
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(†?)\s*", str(v))
    if not m:
        raise CardError(f"{where}: cannot read paper value {v!r} (a number, '-', or a number with †)")
    return PaperCell(float(m.group(1)), bool(m.group(2)))


def _metric(d: Any, index: dict[str, int], where: str) -> MetricSpec:
    if not isinstance(d, dict) or d.get("kind") not in ("nme", "pck"):
        raise CardError(f"{where}: metric.kind must be 'nme' or 'pck'")
    normalize = d.get("normalize", "keypoints" if d["kind"] == "nme" else "bbox_max_side")
    if normalize not in ("keypoints", "bbox_max_side", "bbox_diag", "image"):
        raise CardError(f"{where}: metric.normalize {normalize!r} is not one of keypoints, bbox_max_side, bbox_diag, image")
    pair = None
    if normalize == "keypoints":
        pair = _names_to_indices(d.get("pair"), index, f"{where}.pair")
        if len(pair) != 2:
            raise CardError(f"{where}.pair: expected two keypoints")
    try:
        alpha, min_px = float(d.get("alpha", 0.1)), float(d.get("min_threshold_px", 0.0))
    except (TypeError, ValueError):
        raise CardError(f"{where}: metric.alpha and metric.min_threshold_px must be numbers") from None
    return MetricSpec(kind=d["kind"], normalize=normalize, pair=pair, alpha=alpha, min_threshold_px=min_px)


def _source(d: Any, where: str) -> SourceSpec:
    d = d or {}
    downloads = []
    for i, dl in enumerate(d.get("downloads") or []):
        if not isinstance(dl, dict) or "url" not in dl:
            raise CardError(f"{where}.downloads[{i}]: needs a url")
        downloads.append(Download(url=dl["url"], filename=dl.get("filename") or dl["url"].rsplit("/", 1)[-1],
                                  sha256=dl.get("sha256"), unpack=bool(dl.get("unpack", True))))
    return SourceSpec(homepage=d.get("homepage", ""), license=d.get("license", ""), citation=d.get("citation", ""),
                      auto_download=bool(d.get("auto_download", False)), downloads=tuple(downloads),
                      instructions=d.get("instructions", ""), layout=d.get("layout", ""))


def _paper(tables: Any, where: str) -> tuple[PaperTable, ...]:
    out = []
    for t_i, t in enumerate(tables or []):
        w = f"{where}[{t_i}]"
        if not isinstance(t, dict) or not isinstance(t.get("table"), int):
            raise CardError(f"{w}: a paper table is a mapping with an integer 'table' number")
        shots = tuple(str(s) for s in t.get("shots", ()))
        rows = []
        for r_i, r in enumerate(t.get("rows") or []):
            if not isinstance(r, dict) or "method" not in r:
                raise CardError(f"{w}.rows[{r_i}]: a row is a mapping with a 'method'")
            variant = r.get("variant")
            if variant is not None and variant not in KNOWN_VARIANTS:
                raise CardError(f"{w}.rows[{r_i}]: unknown variant {variant!r} (one of {', '.join(KNOWN_VARIANTS)})")
            values = r.get("values") or []
            if len(values) != len(shots):
                raise CardError(f"{w}.rows[{r_i}] ({r.get('method')}): {len(values)} values for {len(shots)} shot columns")
            rows.append(PaperRow(method=str(r["method"]), variant=variant,
                                 cells=tuple(_cell(v, f"{w}.rows[{r_i}]") for v in values)))
        if t.get("metric") not in ("nme", "pck"):
            raise CardError(f"{w}: metric must be 'nme' or 'pck'")
        out.append(PaperTable(table=int(t["table"]), metric=t["metric"], shots=shots, rows=tuple(rows)))
    return tuple(out)


def parse_card(raw: dict[str, Any], origin: str = "<card>") -> Card:
    """Validate a card's dict and build the ``Card``; ``origin`` names the file in errors."""
    if not isinstance(raw, dict):
        raise CardError(f"{origin}: a card is a mapping, got {type(raw).__name__}")
    for key in ("name", "keypoints", "metric"):
        if key not in raw:
            raise CardError(f"{origin}: missing required key '{key}'")
    names = raw["keypoints"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise CardError(f"{origin}: keypoints must be a non-empty list of names")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise CardError(f"{origin}: keypoints: duplicate names {dup}")
    index = {n: i for i, n in enumerate(names)}

    links = _pairs(raw.get("links"), index, f"{origin}: links")
    parts = {str(k): _names_to_indices(v, index, f"{origin}: parts.{k}") for k, v in (raw.get("parts") or {}).items()}
    for k, v in parts.items():
        if len(v) < 2:
            raise CardError(f"{origin}: parts.{k}: a part needs at least 2 keypoints for a similarity transform")
    flips = _pairs(raw.get("flip_pairs"), index, f"{origin}: flip_pairs")
    seen: set[int] = set()
    for a, b in flips:
        if a in seen or b in seen:
            raise CardError(f"{origin}: flip_pairs: keypoint {names[a] if a in seen else names[b]!r} appears in two pairs")
        seen |= {a, b}
    smoothing = {str(k): _names_to_indices(v, index, f"{origin}: smoothing_groups.{k}")
                 for k, v in (raw.get("smoothing_groups") or {}).items()}
    for k, v in smoothing.items():
        if len(v) < 3:
            raise CardError(f"{origin}: smoothing_groups.{k}: needs a chain of at least 3 keypoints")

    return Card(name=str(raw["name"]), title=str(raw.get("title", raw["name"])), keypoints=tuple(names),
                links=links, parts=parts, flip_pairs=flips, smoothing_groups=smoothing,
                metric=_metric(raw["metric"], index, f"{origin}: metric"),
                splits={str(k): str(v) for k, v in (raw.get("splits") or {}).items()},
                source=_source(raw.get("source"), f"{origin}: source"),
                paper=_paper(raw.get("paper"), f"{origin}: paper"), notes=str(raw.get("notes", "")), raw=raw)


def load_card(name_or_path: str | Path) -> Card:
    """Load a card by name (``wflw``) from ``pipeline/cards`` or from a YAML path."""
    p = Path(name_or_path)
    if not p.suffix:
        p = CARDS_DIR / f"{name_or_path}.yaml"
        if not p.exists():
            raise CardError(f"no card named {name_or_path!r}; known cards: {', '.join(card_names())}")
    if not p.exists():
        raise CardError(f"{p}: card file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise CardError(f"{p}: not valid YAML: {e}") from None
    card = parse_card(raw, origin=str(p))
    if not Path(name_or_path).suffix and card.name != p.stem:
        raise CardError(f"{p}: name {card.name!r} does not match the file name {p.stem!r}")
    return card


def card_names() -> list[str]:
    return sorted(p.stem for p in CARDS_DIR.glob("*.yaml"))
