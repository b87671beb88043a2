"""COCO keypoint JSON (Lin et al., ECCV 2014): any dataset distributed in the COCO keypoint layout, and
the COCO keypoint files that annotation tools export.

Layouts (``--src``)::

    SRC/annotations/person_keypoints_train2017.json     the official layout (or any *.json; files with
    SRC/annotations/person_keypoints_val2017.json        "keypoint" in the name are preferred)
    SRC/train2017/*.jpg  or  SRC/images/train2017/  or  SRC/images/train/  or  SRC/train/  or  SRC/images/

    SRC/result.json + SRC/images/*.jpg                  a folder holding the JSON next to its images
                                                        (in SRC itself or in SRC/images/)
    FILE.json  --images DIR                             one JSON file and a flat folder of images

CVAT's "COCO Keypoints 1.0" export is the first layout (``annotations/person_keypoints_<subset>.json`` +
``images/<subset>/``); Label Studio's COCO export is the second (``result.json`` + ``images/``, its
``file_name`` written as ``images/<name>``, on Windows with backslashes).  An image entry's
``file_name`` may carry a sub-path or just the name: it is looked up as given, then by its last part,
in each image folder; backslashes count as path separators.

The split comes from the annotation file's name (``train``, ``val``/``valid``/``validation``, ``test``);
a file whose name names none (CVAT's ``person_keypoints_default.json``, Label Studio's ``result.json``)
is ``train``.  A ``trainval`` file is skipped when separate train or val files exist (it repeats them).

Each annotation is ``{"image_id", "category_id", "keypoints": [x1, y1, v1, ...], "bbox": [x, y, w, h],
"num_keypoints"}``; the ``categories`` entry names the keypoints and gives a 1-based ``skeleton``.
One ``Instance`` per annotation with at least one labeled keypoint (others are counted as skipped).

Visibility: COCO's ``v`` is 0 (not labeled), 1 (labeled, not visible: occluded) or 2 (labeled and
visible).  Our ``visible`` means "this keypoint's position is known and counts for the loss and the
metric", so v = 1 and v = 2 both map to True and v = 0 to False -- the same rule as COCO's own OKS
evaluation and MMPose's target weights, which score every labeled keypoint.

Coordinates: COCO keypoints are integer pixel indices (pixel centre at the integer, as Detectron2
notes when it loads them); the prepared format puts pixel centres at integer + 0.5, so
``PIXEL_INDEX_OFFSET`` (0.5) is added to x and y.  Boxes are continuous coordinates and kept as is.
Annotation tools may measure from the image's corner instead (CVAT writes its floats as drawn; Label
Studio writes ``int(round(x))`` of its percentage position times the image size); their files are read
the same way, so such a point can sit up to half a pixel (Label Studio: one pixel) from where it was
clicked.

Without ``--card`` the card is built from the ``categories`` entry (``card_for``): keypoint names,
links from the skeleton, flip pairs from ``left_``/``right_`` name prefixes, one part per connected
component of the skeleton with at least 2 keypoints, and PCK@0.1 of the keypoints' largest box side.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card, parse_card
from pipeline.converters._common import PIXEL_INDEX_OFFSET  # 0.5: 0-based pixel indices -> pixel centres at +0.5
from pipeline.prepared import DataError, Instance

CARD = None  # no fixed card: built from the annotation file's categories (card_for) unless --card is given
HELP = ("annotations/*keypoints*_<split>.json + images/ (official, CVAT); or a folder with one *.json and its "
        "images (Label Studio); or FILE.json with --images DIR")

_SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                "test": "test", "testing": "test", "trainval": "trainval"}


# ---- finding the files -------------------------------------------------------------------------------
def split_of(path: Path) -> str:
    """The split named in an annotation file's name: train, val, test or trainval."""
    words = {_SPLIT_WORDS[w] for w in re.findall(r"[a-z]+", path.stem.lower()) if w in _SPLIT_WORDS}
    if len(words) != 1:
        found = f"both {' and '.join(sorted(words))}" if words else "none"
        raise DataError(path, None, f"cannot tell the split from the file name ({found} of train, val, test)")
    return words.pop()


def split_or_train(path: Path) -> str:
    """``split_of``, except that a file whose name names no split (a tool's export) is ``train``."""
    words = {_SPLIT_WORDS[w] for w in re.findall(r"[a-z]+", path.stem.lower()) if w in _SPLIT_WORDS}
    return "train" if not words else split_of(path)


def _json_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.json") if p.is_file())
    return [f for f in files if "keypoint" in f.name.lower()] or files


def annotation_files(src: Path) -> list[tuple[Path, str]]:
    """(json path, split) for every annotation file: ``src`` itself when it is a file, else the *.json files
    of SRC/annotations/ (or, without that folder, of SRC), trainval dropped if redundant."""
    src = Path(src)
    if src.is_file():
        files = [src]
    else:
        folder = src / "annotations" if (src / "annotations").is_dir() else src
        files = _json_files(folder)
        if not files:
            raise FileNotFoundError(f"{src}: no COCO annotation file (expected annotations/*keypoints*_<split>.json, "
                                    f"or a *.json next to its images)")
    pairs = [(f, split_or_train(f)) for f in files]
    if any(s == "trainval" for _, s in pairs) and any(s in ("train", "val") for _, s in pairs):
        pairs = [(f, s) for f, s in pairs if s != "trainval"]
    return [(f, "train" if s == "trainval" else s) for f, s in pairs]


def dataset_root(src: Path) -> Path:
    """The folder the images are looked up from: SRC, or for a JSON file the folder holding it (the one
    above when the file sits in an ``annotations/`` folder)."""
    src = Path(src)
    if not src.is_file():
        return src
    return src.parent.parent if src.parent.name == "annotations" else src.parent


def image_dirs(src: Path, json_path: Path, split: str) -> list[Path]:
    """Folders to look for a COCO file's images in, most specific first."""
    tag = re.sub(r"^(person_)?keypoints?_", "", json_path.stem)          # person_keypoints_val2017 -> val2017
    dirs = [src / "images" / tag, src / tag, src / "images" / split, src / split, src / "images", src]
    return list(dict.fromkeys(dirs))


# ---- categories and cards ----------------------------------------------------------------------------
def load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, None, f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DataError(path, None, "a COCO annotation file is a JSON object with images, annotations, categories")
    return data


def keypoint_categories(data: dict, path: Path) -> list[dict]:
    """The ``categories`` entries that define keypoints, validated."""
    cats = data.get("categories") or []
    if not isinstance(cats, list):
        raise DataError(path, "categories", "expected a list")
    out = []
    for i, c in enumerate(cats):
        names = c.get("keypoints") if isinstance(c, dict) else None
        if not names:
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise DataError(path, f"categories[{i}]", "keypoints must be a list of names")
        out.append(c)
    return out


def _flip_pairs(names: list[str]) -> list[list[str]]:
    """Pairs of names that differ only by a left_/right_ prefix (any case)."""
    by_lower = {n.lower(): n for n in names}
    pairs = []
    for n in names:
        if n.lower().startswith("left_"):
            partner = by_lower.get("right_" + n[len("left_"):].lower())
            if partner is not None:
                pairs.append([n, partner])
    return pairs


def _components(k: int, links: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components (sorted index lists, in order of their first keypoint) of a graph on k nodes."""
    parent = list(range(k))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for i in range(k):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def card_from_keypoints(name: str, title: str, keypoints: list[str], links: list[tuple[int, int]],
                        origin: str, notes: str = "", min_threshold_px: float = 0.0,
                        flip_pairs: list[tuple[int, int]] | None = None) -> Card:
    """A card for a user's own keypoint set: links as given (0-based), flip pairs as given (0-based) or
    else from left_/right_ names, one part per skeleton component with >= 2 keypoints (else one part
    with all keypoints), PCK@0.1 of the largest side of the visible keypoints' box."""
    comps = [c for c in _components(len(keypoints), links) if len(c) >= 2]
    if not comps and len(keypoints) >= 2:
        comps = [list(range(len(keypoints)))]
    parts = {}
    for c in comps:
        members = [keypoints[i] for i in c]
        label = "+".join(members) if len(members) <= 3 else f"{members[0]}+{len(members) - 1}_more"
        parts[label] = members
    metric = {"kind": "pck", "normalize": "bbox_max_side", "alpha": 0.1}
    if min_threshold_px:
        metric["min_threshold_px"] = float(min_threshold_px)
    raw = {"name": name, "title": title, "keypoints": list(keypoints),
           "links": [[keypoints[a], keypoints[b]] for a, b in links],
           "parts": parts, "metric": metric, "notes": notes,
           "flip_pairs": (_flip_pairs(list(keypoints)) if flip_pairs is None
                          else [[keypoints[a], keypoints[b]] for a, b in flip_pairs])}
    return parse_card(raw, origin=origin)


def slug(text: str) -> str:
    """A card name from free text: lower case letters and digits, other runs as '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def card_for(src: Path) -> Card:
    """Build the card from the annotation files' keypoint category (all files must agree)."""
    found: list[tuple[Path, dict]] = []
    for path, _ in annotation_files(Path(src)):
        found += [(path, c) for c in keypoint_categories(load_json(path), path)]
    if not found:
        where = Path(src) / "annotations" if (Path(src) / "annotations").is_dir() else Path(src)
        raise DataError(where, None, "no category with keypoints in any annotation file")
    path, cat = found[0]
    names = list(cat["keypoints"])
    for other_path, other in found[1:]:
        if list(other["keypoints"]) != names:
            raise DataError(other_path, "categories", f"keypoints {other['keypoints']} differ from {names} in "
                                                      f"{path.name}; pass --card to choose a keypoint set")
    links = []
    for i, edge in enumerate(cat.get("skeleton") or []):
        if (not isinstance(edge, list) or len(edge) != 2 or not all(isinstance(e, int) for e in edge)
                or not all(1 <= e <= len(names) for e in edge)):
            raise DataError(path, f"categories skeleton[{i}]",
                            f"expected two 1-based keypoint indices in 1..{len(names)}, got {edge!r}")
        if edge[0] != edge[1]:
            links.append((edge[0] - 1, edge[1] - 1))
    links = list(dict.fromkeys(tuple(sorted(e)) for e in links))
    root = dataset_root(Path(src)).resolve()
    name = slug(root.name) or "coco"
    return card_from_keypoints(name, f"{cat.get('name', 'object')} keypoints ({root.name}, COCO format)",
                               names, links, origin=str(path),
                               notes=f"Built by `fskp prepare coco` from the categories entry of {path.name}: "
                                     f"links from its 1-based skeleton, flip pairs from left_/right_ names, "
                                     f"parts from the skeleton's connected components.")


def keypoint_order(names: list[str], card: Card, path: Path, where: str) -> np.ndarray:
    """Index array ``order`` with card keypoint j = file keypoint order[j]: by name when the names are
    the card's (in any order), else by position when the counts agree."""
    if sorted(names) == sorted(card.keypoints):
        return np.array([names.index(n) for n in card.keypoints])
    if len(names) == card.num_keypoints:
        return np.arange(len(names))
    raise DataError(path, where, f"{len(names)} keypoints {names} do not fit card {card.name!r} "
                                 f"({card.num_keypoints} keypoints)")


# ---- reading instances -------------------------------------------------------------------------------
def _number(v, path: Path, row: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DataError(path, row, f"{what} must be a number, got {v!r}")
    return float(v)


def _box(ann: dict, path: Path, row: str) -> tuple[float, float, float, float] | None:
    bbox = ann.get("bbox")
    if bbox is None:
        return None
    if not isinstance(bbox, list) or len(bbox) != 4:
        raise DataError(path, row, f"bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (_number(v, path, row, "bbox value") for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
        raise DataError(path, row, f"invalid bbox {bbox!r}")
    return None if w == 0 or h == 0 else (x, y, x + w, y + h)


def parse_keypoints(values, k: int, path: Path, row: str) -> tuple[np.ndarray, np.ndarray]:
    """COCO [x1, y1, v1, ...] -> keypoints [k, 2] (pixel centres at +0.5) and visible [k] (v > 0)."""
    if not isinstance(values, list) or len(values) != 3 * k:
        n = len(values) if isinstance(values, list) else values
        raise DataError(path, row, f"keypoints must hold 3 x {k} = {3 * k} values (x, y, v), got {n}")
    kp = np.zeros((k, 2))
    vis = np.zeros(k, bool)
    for i in range(k):
        x, y, v = values[3 * i: 3 * i + 3]
        v = _number(v, path, row, f"visibility of keypoint {i}")
        if v not in (0, 1, 2):
            raise DataError(path, row, f"keypoint {i}: visibility must be 0, 1 or 2, got {v:g}")
        if v == 0:
            continue
        x, y = _number(x, path, row, f"x of keypoint {i}"), _number(y, path, row, f"y of keypoint {i}")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(path, row, f"keypoint {i} is labeled (v={v:g}) but its coordinate is NaN or infinite")
        kp[i] = (x + PIXEL_INDEX_OFFSET, y + PIXEL_INDEX_OFFSET)
        vis[i] = True
    return kp, vis


def read_annotation_file(path: Path, split: str, dirs: list[Path], card: Card, skipped: Counter,
                         id_prefix: str | None = None) -> Iterator[Instance]:
    """Yield the instances of one COCO keypoint file, images looked up in ``dirs`` (first match wins).

    Accepts the image entry's ``file_name`` or ``filename`` (ATRW's spelling).
    """
    data = load_json(path)
    cats = keypoint_categories(data, path)
    if not cats:
        skipped["annotation files without a keypoint category"] += 1
        return
    orders = {c.get("id"): keypoint_order(list(c["keypoints"]), card, path, f"category {c.get('name', c.get('id'))}")
              for c in cats}
    sizes = {c.get("id"): len(c["keypoints"]) for c in cats}
    images = {}
    for i, im in enumerate(data.get("images") or []):
        name = im.get("file_name", im.get("filename")) if isinstance(im, dict) else None
        if not isinstance(name, str) or "id" not in im:
            raise DataError(path, f"images[{i}]", "an image entry needs an id and a file_name")
        images[im["id"]] = name
    found: dict[str, Path] = {}
    prefix = id_prefix if id_prefix is not None else path.stem

    for i, ann in enumerate(data.get("annotations") or []):
        row = f"annotations[{i}] (id {ann.get('id', '?')})" if isinstance(ann, dict) else f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(path, row, "an annotation is a JSON object")
        cat = ann.get("category_id", cats[0].get("id") if len(cats) == 1 else None)
        if cat not in orders:
            continue                                    # an object category without keypoints
        kp, vis = parse_keypoints(ann.get("keypoints"), sizes[cat], path, row)
        if not vis.any():
            skipped["annotations with no labeled keypoint"] += 1
            continue
        order = orders[cat]
        name = images.get(ann.get("image_id"))
        if name is None:
            raise DataError(path, row, f"image_id {ann.get('image_id')!r} is not in the file's images list")
        if name not in found:
            rel = Path(name.replace("\\", "/"))              # Windows exports write sub-paths with backslashes
            hits = [d / rel for d in dirs if (d / rel).is_file()] or \
                   [d / rel.name for d in dirs if (d / rel.name).is_file()]
            if not hits:
                raise DataError(path, row, f"image {name!r} not found in any of: "
                                           f"{', '.join(str(d) for d in dirs)}")
            found[name] = hits[0]
        yield Instance(id=f"{prefix}/{ann.get('id', i)}", split=split, source=str(found[name]),
                       keypoints=kp[order], visible=vis[order], origin=(str(path), row), box=_box(ann, path, row))


def instances(src: Path, card: Card, skipped: Counter, images: Path | None = None) -> Iterator[Instance]:
    """The instances of every annotation file; ``images``: the one folder holding the images (``--images``),
    instead of the folders ``image_dirs`` lists."""
    src = Path(src)
    if images is not None and not Path(images).is_dir():
        raise FileNotFoundError(f"{images}: image folder not found (--images)")
    root = dataset_root(src)
    for path, split in annotation_files(src):
        dirs = [Path(images)] if images is not None else image_dirs(root, path, split)
        yield from read_annotation_file(path, split, dirs, card, skipped)
