"""iBUG ``.pts`` landmark files (Sagonas et al., 300-W, 2013) in any folder: a user's own faces (or other
objects) annotated in the 300-W file format, with any number of points.

Layout: any folder, searched recursively, of ``<name>.pts`` files each next to its image ``<name>.<ext>``
(same stem, same folder; ``.jpg``, ``.jpeg``, ``.png``, ``.ppm``, ``.pgm``, ``.bmp``, ``.tif``, ``.tiff``, in
any case).  A ``.pts`` file reads (see ``pipeline.converters.w300.read_pts``)::

    version: 1
    n_points:  68
    {
    x y            (n_points lines, 1-based pixel coordinates: the top-left pixel's centre is (1, 1))
    }

Every file must have the same point count: the count most files have is the dataset's, and a file with
another count is an error naming it and both counts.  A ``.pts`` file without an image is an error
naming it.

Card (``card_for``, when ``--card`` is not given): 68 points are the 300-W (iBUG) landmarks, so the
``300w`` card; any other count N gets a card with generic names ``p0`` .. ``pN-1``, no links, one part
with all points and PCK@0.1 of the landmarks' box.  ``--card`` gives the names (in file order) instead.

Split: the first folder on the path below SRC named ``train``/``training``/``trainset``, ``val``/
``valid``/``validation`` or ``test``/``testing``/``testset`` decides; files under no such folder are
``train``.  (The 300-W release with the paper's split is read by ``fskp prepare 300w``.)  Ids are the
path below SRC without the suffix (``lfpw/trainset/image_0001``).

Coordinates are converted from 1-based pixel indices (``_common.from_pixel_index(xy, base=1)``, i.e.
x - 0.5), as for 300-W.  Every point is visible; the crop is the square around the points' box.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card, load_card
from pipeline.converters._common import expect_keypoints, from_pixel_index, read_rows
from pipeline.converters.coco import card_from_keypoints, slug
from pipeline.converters.w300 import NUM_LANDMARKS as IBUG_68, read_pts
from pipeline.prepared import DataError, Instance

CARD = None  # chosen by the point count (card_for) unless --card is given
HELP = ("any folder (searched recursively) of iBUG <name>.pts files, each next to its image <name>.jpg/.png/.ppm/..; "
        "68 points -> the 300w card, other counts -> generic names p0.. unless --card")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff")
SPLIT_FOLDERS = {"train": "train", "training": "train", "trainset": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test", "testing": "test", "testset": "test"}


def pts_files(src: Path) -> list[Path]:
    """Every ``.pts`` file under ``src`` (any case of the suffix), sorted."""
    files = sorted(p for p in Path(src).rglob("*") if p.suffix.lower() == ".pts" and p.is_file())
    if not files:
        raise FileNotFoundError(f"{src}: no .pts files in it or its subfolders")
    return files


def point_count(path: Path) -> tuple[int, int]:
    """(n_points, its line number) from a .pts file's header; DataError if the header is malformed."""
    for line_no, cells in read_rows(path):
        if cells[0] == "version:":
            continue
        if cells[0] != "n_points:" or len(cells) != 2 or not cells[1].isdigit():
            raise DataError(path, line_no, f"expected 'n_points: <count>', got {' '.join(cells)!r}")
        return int(cells[1]), line_no
    raise DataError(path, None, "not a .pts file: no 'n_points:' line")


def common_count(files: list[Path], src: Path) -> int:
    """The point count of the .pts files: the one most files have (the first file's on a tie); a file with
    another count is a DataError naming it and both counts."""
    counts = {f: point_count(f) for f in files}
    k, n = Counter(c for c, _ in counts.values()).most_common(1)[0]
    for f, (c, line_no) in counts.items():
        if c != k:
            raise DataError(f, line_no, f"n_points is {c}, but the other .pts files under {src} have {k} "
                                        f"({n} of {len(files)} files); every file needs the same points")
    return k


def card_for(src: Path) -> Card:
    """The 300w card for 68 points, else a card with generic names p0..pN-1 and no links."""
    src = Path(src)
    k = common_count(pts_files(src), src)
    if k == IBUG_68:
        return load_card("300w")
    name = "pts-" + (slug(src.resolve().name) or "points")
    return card_from_keypoints(
        name, f"{k} points ({src.resolve().name}, iBUG .pts files)", [f"p{i}" for i in range(k)], [],
        origin=str(src),
        notes=f"Built by `fskp prepare pts`: {k} points per .pts file, named by their position (p0 = the first "
              f"line); no links are known.  Pass --card with a card of your own for names and links.")


def split_of(rel: Path) -> str:
    """The split named by the first known folder name on a path relative to SRC, else train."""
    for part in rel.parts[:-1]:
        if part.lower() in SPLIT_FOLDERS:
            return SPLIT_FOLDERS[part.lower()]
    return "train"


def image_index(src: Path) -> dict[tuple[Path, str], Path]:
    """(folder, stem) -> the image with that stem, for every image under ``src`` (by IMAGE_SUFFIXES order)."""
    index: dict[tuple[Path, str], Path] = {}
    images = [p for p in Path(src).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    for p in sorted(images, key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), str(p))):
        index.setdefault((p.parent, p.stem), p)
    return index


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    src = Path(src)
    files = pts_files(src)
    k = common_count(files, src)
    expect_keypoints(card, k, f"the .pts files under {src}")
    images = image_index(src)
    for pts in files:
        points = read_pts(pts, k)
        image = images.get((pts.parent, pts.stem))
        if image is None:
            raise DataError(pts, None, f"image not found: no {pts.stem}{{{','.join(IMAGE_SUFFIXES)}}} next to it")
        rel = pts.relative_to(src).with_suffix("")
        yield Instance(id=rel.as_posix(), split=split_of(rel), source=str(image),
                       keypoints=from_pixel_index(points, base=1), visible=np.ones(k, bool), origin=(str(pts), None))
