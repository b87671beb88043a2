"""Helpers shared by the converters: reading annotation files with row-accurate errors, pixel conventions.

Pixel conventions.  The prepared format (pipeline/prepared.py) uses continuous image coordinates: pixel
(i, j) covers [i, i+1) x [j, j+1), so its centre is at (i + 0.5, j + 0.5).  Formats that give a pixel's
*index* (the position of its centre) are converted with ``from_pixel_index``: 0-based indices (OpenCV,
COCO, web annotation tools) gain 0.5, 1-based indices (MATLAB: 300W ``.pts``, LSP ``joints.mat``) lose 0.5.
Formats already in continuous coordinates (renderers' screen space, normalised [0, 1] positions times the
image size) are kept as they are.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.prepared import DataError

#: added to 0-based pixel-index coordinates to get the prepared format's continuous coordinates
PIXEL_INDEX_OFFSET = 0.5


def from_pixel_index(xy, base: int) -> np.ndarray:
    """Pixel-index coordinates (``base`` 0 or 1: the index of the first pixel) -> continuous coordinates."""
    return np.asarray(xy, dtype=np.float64) - base + PIXEL_INDEX_OFFSET


def expect_keypoints(card: Card, k: int, fmt: str) -> None:
    """Refuse a card whose keypoint count differs from the ``k`` points the format annotates."""
    if card.num_keypoints != k:
        raise ValueError(f"card {card.name!r} has {card.num_keypoints} keypoints but {fmt} annotates {k}; "
                         f"use a card with {k} keypoints in the format's order")


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else DataError saying what it should have been."""
    if not path.is_file():
        raise DataError(path, None, f"not found ({what})")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(path, None, f"folder not found ({what})")
    return path


def read_rows(path: Path, fields: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based line number, whitespace-separated fields) for each non-blank line of a text file.

    With ``fields``, a line with another number of fields raises DataError naming the file and line.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, None, "annotation file not found") from None
    except (UnicodeDecodeError, OSError) as e:
        raise DataError(path, None, f"unreadable annotation file: {e}") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        cells = line.split()
        if not cells:
            continue
        if fields is not None and len(cells) != fields:
            raise DataError(path, line_no, f"expected {fields} whitespace-separated fields, got {len(cells)}")
        yield line_no, cells


def numbers(cells: list[str], origin: tuple[str | os.PathLike, int | str | None], what: str = "value") -> np.ndarray:
    """Parse ``cells`` as finite floats, or raise DataError naming the origin (file, row) and the bad cell."""
    out = np.empty(len(cells), dtype=np.float64)
    for i, c in enumerate(cells):
        try:
            v = float(c)
        except ValueError:
            raise DataError(origin[0], origin[1], f"{what} {c!r} is not a number") from None
        if not math.isfinite(v):
            raise DataError(origin[0], origin[1], f"{what} {c!r} is NaN or infinite")
        out[i] = v
    return out


def integer(cell: str, origin: tuple[str | os.PathLike, int | str | None], what: str = "value") -> int:
    """Parse one cell as an integer (``12`` or ``12.0``), or raise DataError naming the origin."""
    v = numbers([cell], origin, what)[0]
    if not v.is_integer():
        raise DataError(origin[0], origin[1], f"{what} {cell!r} is not an integer")
    return int(v)


def image_size(path: Path, origin: tuple[str | os.PathLike, int | str | None]) -> tuple[int, int]:
    """(width, height) of an image file from its header, or DataError naming the annotation row."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(origin[0], origin[1], f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(origin[0], origin[1], f"unreadable image {path}: {e}") from None


def enclosing_square(width: float, height: float) -> tuple[float, float, float, float]:
    """The square crop box centred on a width x height image that contains all of it (padding the short side).

    For datasets whose images are already cropped around the object (eye patches, person crops).
    """
    side = float(max(width, height))
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def load_mat(path: Path, key: str, origin: tuple[str | os.PathLike, int | str | None] | None = None) -> np.ndarray:
    """Array ``key`` of a MATLAB .mat file, or DataError (the file is missing, unreadable or lacks ``key``)."""
    import scipy.io

    where = origin or (path, None)
    try:
        data = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DataError(where[0], where[1], f"annotation file not found: {path}") from None
    except Exception as e:          # scipy raises ValueError, MatReadError, TypeError... for corrupt files
        raise DataError(where[0], where[1], f"unreadable .mat file {path}: {e}") from None
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DataError(where[0], where[1], f"{path} has no variable {key!r} (has {found})")
    return np.asarray(data[key])
