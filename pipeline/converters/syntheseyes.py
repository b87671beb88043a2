"""SynthesEyes (Wood et al., ICCV 2015): 11,382 rendered 120x80 close-up eye images of 10 eye-region models.

Layout (the dataset archive unpacked; SRC holds the subject folders, or one folder that does, such as
``SynthEyes_data`` or ``SynthesEyes_dataset``)::

    SRC/f01/f01_36_0.1963_-0.7854.png     image
    SRC/f01/f01_36_0.1963_-0.7854.pkl     its data: a pickled dict
    ...                                   one folder per model: f01..f05 (female), m01..m05 (male)

Whichever model folders are present are read (a partial download, or only the test models, is fine); a
source with none of them is an error listing the folder names looked for.

Each pickle holds ``look_vec`` (3D gaze direction), ``head_pose`` (3x3 rotation) and ``ldmks``, a dict of
``ldmks_lids_2d`` (the eyelid interior margin), ``ldmks_iris_2d`` (the iris boundary), ``ldmks_pupil_2d``
(the pupil boundary) -- closed contours of 2D points in screen space (image pixels, x right, y down) -- and
their ``*_3d`` counterparts in camera space.  The pickles were written by Python 2; they are read with
``encoding="latin1"`` and an unpickler that only rebuilds plain containers and numpy arrays (a pickle can
otherwise run arbitrary code).

Keypoints: the card's 17 points, derived from the native contours so that every image has the same,
nameable points whatever the contours' lengths (``derive_keypoints``):

* 0-7, the eyelid margin clockwise from the left corner: the corners are the margin points with the
  smallest and largest x; the upper (lower) lid is the part of the closed margin above (below) the
  corner-to-corner line, and its points 1, 2, 3 (7, 6, 5) lie at 1/4, 1/2, 3/4 of its arc length from the
  left corner;
* 8-15, the iris: where rays from the mean of the iris contour points at 0, 45, ..., 315 degrees
  (0 = +x, 90 = +y, i.e. down) first cross the closed iris contour;
* 16, the pupil centre: the mean of the pupil contour points.

The pickles carry no visibility; every point is rendered ground truth and marked visible (iris points
under an eyelid included, as in the data).  Screen-space coordinates are continuous and kept as they are.

Split (paper §4.1): the first 4 female and first 4 male models (f01-f04, m01-m04) ``train``, f05 and
m05 ``test``.  Each image is used whole: the crop is the square enclosing it.  Ids are ``<model>/<stem>``.
"""
from __future__ import annotations

import io
import pickle
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.card import Card
from pipeline.converters._common import enclosing_square, expect_keypoints, image_size
from pipeline.prepared import DataError, Instance

CARD = "syntheseyes"
HELP = ("any of the folders f01..f05, m01..m05 (or SynthEyes_data/ holding them), each with <name>.png + "
        "<name>.pkl")

TRAIN_MODELS = ("f01", "f02", "f03", "f04", "m01", "m02", "m03", "m04")
TEST_MODELS = ("f05", "m05")
MODELS = TRAIN_MODELS + TEST_MODELS
CONTOURS = ("ldmks_lids_2d", "ldmks_iris_2d", "ldmks_pupil_2d")
NUM_KEYPOINTS = 17
LID_FRACTIONS = (0.25, 0.5, 0.75)
IRIS_ANGLES_DEG = (0, 45, 90, 135, 180, 225, 270, 315)

#: what a SynthesEyes pickle may rebuild: numpy arrays and scalars (module names of numpy 1.x and 2.x), and
#: ``_codecs.encode``, which protocol-2 pickles written by Python 3 use for byte strings
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "object"), ("builtins", "object"),
    ("_codecs", "encode"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    try:
        data = _DataUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except FileNotFoundError:
        raise DataError(path, None, "annotation file not found") from None
    except Exception as e:          # truncated or foreign pickles raise many kinds of error
        raise DataError(path, None, f"unreadable pickle: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("ldmks"), dict):
        raise DataError(path, None, "expected a dict with an 'ldmks' dict of landmark arrays")
    return data


def contours(path: Path, data: dict) -> dict[str, np.ndarray]:
    """The [n, 2] contours of ``CONTOURS`` from a pickle's ``ldmks``, validated."""
    out = {}
    for key in CONTOURS:
        if key not in data["ldmks"]:
            raise DataError(path, None, f"ldmks has no {key!r} (has {sorted(data['ldmks'])})")
        try:
            pts = np.asarray(data["ldmks"][key], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise DataError(path, None, f"ldmks[{key!r}] is not an array of numbers: {e}") from None
        if pts.ndim != 2 or pts.shape[1] not in (2, 3) or len(pts) < 3:
            raise DataError(path, None, f"ldmks[{key!r}] has shape {pts.shape}, expected (n >= 3, 2)")
        if not np.isfinite(pts[:, :2]).all():
            raise DataError(path, None, f"ldmks[{key!r}] has a NaN or infinite coordinate")
        out[key] = pts[:, :2]
    return out


# ---- the 17 keypoints from the contours ----------------------------------------------------------------
def resample_polyline(points: np.ndarray, fractions) -> np.ndarray:
    """Points at the given fractions of the arc length along an open polyline [n, 2]."""
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    targets = np.asarray(fractions) * cum[-1]
    return np.stack([np.interp(targets, cum, points[:, 0]), np.interp(targets, cum, points[:, 1])], axis=1)


def eyelid_points(lids: np.ndarray) -> np.ndarray:
    """[8, 2]: left corner, upper lid at 1/4 1/2 3/4, right corner, lower lid at 3/4 1/2 1/4 (clockwise)."""
    n = len(lids)
    left, right = int(np.argmin(lids[:, 0])), int(np.argmax(lids[:, 0]))
    if left == right:
        raise ValueError("the eyelid margin has no extent in x")
    # the two ways round the closed margin from the left corner to the right corner
    forward = lids[[(left + i) % n for i in range((right - left) % n + 1)]]
    backward = lids[[(left - i) % n for i in range((left - right) % n + 1)]]
    chord = lids[right] - lids[left]

    def height(path):          # > 0 below the corner-to-corner line (y down), at the path's middle
        mid = resample_polyline(path, [0.5])[0] - lids[left]
        return chord[0] * mid[1] - chord[1] * mid[0]

    upper, lower = (forward, backward) if height(forward) < height(backward) else (backward, forward)
    up = resample_polyline(upper, LID_FRACTIONS)
    low = resample_polyline(lower, LID_FRACTIONS)
    return np.concatenate([lids[[left]], up, lids[[right]], low[::-1]])


def ray_hits(polygon: np.ndarray, origin: np.ndarray, angles_deg) -> np.ndarray:
    """[len(angles), 2]: the nearest crossing of each ray from ``origin`` with the closed ``polygon``."""
    a = polygon
    b = np.roll(polygon, -1, axis=0)
    edge = b - a
    out = []
    for deg in angles_deg:
        d = np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg))])
        # origin + t d = a + s edge  ->  solve for t (along the ray) and s (along the edge)
        denom = d[0] * edge[:, 1] - d[1] * edge[:, 0]
        rel = a - origin
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (rel[:, 0] * edge[:, 1] - rel[:, 1] * edge[:, 0]) / denom
            s = (rel[:, 0] * d[1] - rel[:, 1] * d[0]) / denom
        ok = (np.abs(denom) > 1e-12) & (t > 0) & (s >= -1e-9) & (s <= 1 + 1e-9)
        if not ok.any():
            raise ValueError(f"no crossing of the ray at {deg} degrees with the iris contour")
        out.append(origin + t[ok].min() * d)
    return np.array(out)


def derive_keypoints(lids: np.ndarray, iris: np.ndarray, pupil: np.ndarray) -> np.ndarray:
    """The card's 17 keypoints [17, 2] from the native contours (see the module docstring)."""
    return np.concatenate([eyelid_points(lids), ray_hits(iris, iris.mean(axis=0), IRIS_ANGLES_DEG),
                           pupil.mean(axis=0, keepdims=True)])


# ---- the converter -----------------------------------------------------------------------------------
def _has_models(folder: Path) -> bool:
    return any((folder / m).is_dir() for m in MODELS)


def _root(src: Path) -> Path:
    if _has_models(src):
        return src
    holders = [p for p in sorted(src.iterdir()) if p.is_dir() and _has_models(p)] if src.is_dir() else []
    return holders[0] if len(holders) == 1 else src


def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]:
    expect_keypoints(card, NUM_KEYPOINTS, "the SynthesEyes converter (17 points derived from the contours)")
    root = _root(src)
    models = {m: root / m for m in MODELS if (root / m).is_dir()}
    if not models:
        raise DataError(root, None, f"no SynthesEyes model folder ({', '.join(MODELS)}); layout: {HELP}")
    for model, folder in models.items():
        split = "train" if model in TRAIN_MODELS else "test"
        for pkl in sorted(folder.glob("*.pkl")):
            c = contours(pkl, read_pickle(pkl))
            try:
                kp = derive_keypoints(c["ldmks_lids_2d"], c["ldmks_iris_2d"], c["ldmks_pupil_2d"])
            except ValueError as e:
                raise DataError(pkl, None, f"cannot derive the keypoints: {e}") from None
            image = pkl.with_suffix(".png")
            w, h = image_size(image, (str(pkl), None))
            yield Instance(id=f"{model}/{pkl.stem}", split=split, source=str(image), keypoints=kp,
                           visible=np.ones(NUM_KEYPOINTS, bool), origin=(str(pkl), None),
                           box=(0.0, 0.0, float(w), float(h)), crop_box=enclosing_square(w, h))
