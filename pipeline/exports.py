"""Exports of predicted keypoints: DeepLabCut machine-label CSV and HDF5 files, NWB (ndx-pose), COCO keypoint
JSON, overlay images and video.

Likelihood.  The exports write the likelihood they are given, in DeepLabCut's ``likelihood`` column and in
COCO's ``keypoint_scores``.  `fskp label` and `fskp predict` give the calibrated likelihood of
jobs/labeling/confidence.py when the run has one (fitted on held-out labeled frames: about that fraction
of keypoints is right); otherwise the model's own certainty ``likelihood = 1 - u``
(``likelihood_from_uncertainty``) from its uncertainty ``u = 1 - sigmoid(v)`` in (0, 1), where
``sigmoid(v)`` is the keypoint's edge strength (paper Eq. 7).  That one is NOT a calibrated probability: a
likelihood of 0.9 does not mean the keypoint is right 90 % of the time.

Thresholds.  Each export takes a cutoff on that likelihood and applies it the same way:
- DeepLabCut CSV: every keypoint is written with its likelihood; the reader (``pcutoff`` of the project's
  config.yaml, 0.6 by default -- see pipeline/converters/dlc.py) treats a likelihood < pcutoff as not
  labeled, as DeepLabCut's own GUIs and plots do.
- COCO JSON (``write_coco_json``): likelihood >= cutoff -> ``v = 2`` (labeled and visible); below it (or
  a non-finite keypoint) -> ``v = 0`` with x = y = 0 (not labeled), as the COCO format requires.
- Overlays: likelihood >= cutoff -> a filled disc; below it -> a hollow ring.  Every keypoint also gets an
  uncertainty ring whose radius grows with 1 - likelihood.

Coordinates.  Inputs use the prepared convention (pixel centres at integer + 0.5, pipeline/prepared.py);
DeepLabCut and COCO files get pixel-index coordinates (``- PIXEL_INDEX_OFFSET``), so the project's
readers (pipeline/converters/dlc.py, coco.py) read back the same positions.

DeepLabCut HDF5 (``write_dlc_video_h5``, ``write_dlc_machinelabels``): the pandas layout DeepLabCut's own
tools read (``pandas.read_hdf(path, "df_with_missing")``): columns a MultiIndex with levels ``scorer`` /
``bodyparts`` / ``coords`` (x, y, likelihood per body part), values float64, NaN where no keypoint.
Analysed videos: ``<video stem><scorer>.h5``, the scorer starting with ``DLC`` as DeepLabCut's do (its
tools find a video's file by that prefix), rows indexed by frame number, PyTables "table" format.
Machine labels for DeepLabCut's refine GUI: ``labeled-data/<video>/machinelabels-iter<N>.h5`` (N the
project's refinement ``iteration``), rows indexed by the three-level ``("labeled-data", <video>, <image>)``
MultiIndex DeepLabCut 2.2+ uses for labeled frames, PyTables "fixed" format.

NWB (``write_nwb``): a Neurodata Without Borders file with an ndx-pose ``PoseEstimation`` in the
``behavior`` processing module: one ``PoseEstimationSeries`` per body part (x, y in the DeepLabCut
pixel-index coordinates, confidence = likelihood) and a ``Skeleton`` with the card's links as edges.

Every file is written under a temporary name in its folder and renamed when complete, so a failed export
never leaves a file that looks finished.  Frames are read and written ``CHUNK_ROWS`` at a time
(``prediction_chunks``): an hour of video's predictions, given as file-backed arrays (jobs/inference.py), is
never copied whole into memory by a writer.
"""
from __future__ import annotations

import csv
import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from pipeline.atomic import atomic_path

from pipeline.card import Card
from pipeline.converters._common import PIXEL_INDEX_OFFSET

#: frames converted and written at once by the writers (and copied at once by jobs/inference.py)
CHUNK_ROWS = 8192
#: the uncertainty ring's radius grows by this fraction of the image's larger side at likelihood 0
RING_GROWTH = 0.03
#: JPEG quality of overlay images
JPEG_QUALITY = 90


# ---- likelihood --------------------------------------------------------------------------------------
def likelihood_from_uncertainty(u: np.ndarray) -> np.ndarray:
    """Likelihood ``1 - u`` from the model's uncertainty ``u = 1 - sigmoid(v)`` (any shape, e.g. [N, K]).

    The result is the keypoint's edge strength ``sigmoid(v)`` (paper Eq. 7): the model's own confidence,
    not a calibrated probability (see the module docstring and jobs/labeling/confidence.py).  NaN stays NaN
    (no prediction).
    """
    u = np.asarray(u, dtype=np.float64)
    finite = u[np.isfinite(u)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        raise ValueError(f"uncertainty must lie in [0, 1], got values in [{finite.min():g}, {finite.max():g}]")
    return 1.0 - u


# ---- helpers -----------------------------------------------------------------------------------------
def _predictions(keypoints, likelihood, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert keypoints [N, K, 2] and likelihood [N, K] (float64)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    lk = np.asarray(likelihood, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] != 2:
        raise ValueError(f"keypoints must be [N, K, 2], got shape {kp.shape}")
    if lk.shape != kp.shape[:2]:
        raise ValueError(f"likelihood must be [N, K] = {list(kp.shape[:2])}, got shape {lk.shape}")
    if k is not None and kp.shape[1] != k:
        raise ValueError(f"{kp.shape[1]} keypoints per frame but {k} names")
    given = lk[np.isfinite(lk)]
    if given.size and (given.min() < 0.0 or given.max() > 1.0):
        raise ValueError(f"likelihood must lie in [0, 1], got values in [{given.min():g}, {given.max():g}]")
    return kp, lk


def row_chunks(n: int, rows: int = CHUNK_ROWS) -> list[slice]:
    """Slices of at most ``rows`` rows covering range(n), in order."""
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


def prediction_chunks(keypoints, likelihood, k: int | None = None,
                      rows: int = CHUNK_ROWS) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """(rows, keypoints [n, K, 2], likelihood [n, K]) float64, checked as ``_predictions`` does, a chunk of at
    most ``rows`` frames at a time (one empty chunk when there are no frames).  Shapes are checked here, before
    the first chunk; arrays are never copied whole."""
    kp, lk = np.asarray(keypoints), np.asarray(likelihood)
    _predictions(kp[:0], lk[:0], k)
    if lk.shape != kp.shape[:2]:
        raise ValueError(f"likelihood must be [N, K] = {list(kp.shape[:2])}, got shape {lk.shape}")
    return ((chunk, *_predictions(kp[chunk], lk[chunk], k)) for chunk in row_chunks(len(kp), rows) or [slice(0, 0)])


def _check_cutoff(cutoff: float) -> float:
    if not 0.0 <= float(cutoff) <= 1.0:
        raise ValueError(f"cutoff is a likelihood in [0, 1], got {cutoff!r}")
    return float(cutoff)


def _number(v: float) -> str:
    """A float as the shortest text that reads back exactly ('' for NaN)."""
    return repr(float(v)) if math.isfinite(v) else ""


# ---- DeepLabCut --------------------------------------------------------------------------------------
def _check_parts(bodyparts: list[str], individuals: Sequence[tuple[str, str]] | None) -> list[tuple]:
    """The column owner of each keypoint: (body part,), or (individual, body part) in a multi-animal layout."""
    if not all(isinstance(b, str) and b for b in bodyparts):
        raise ValueError(f"body parts must be non-empty names, got {bodyparts}")
    if individuals is None:
        owners = [(b,) for b in bodyparts]
    else:
        owners = [tuple(o) for o in individuals]
        if len(owners) != len(bodyparts) or any(len(o) != 2 or not all(isinstance(v, str) and v for v in o)
                                                for o in owners):
            raise ValueError(f"individuals: expected an (individual, body part) pair per keypoint, got {individuals}")
    if len(set(owners)) != len(owners):
        raise ValueError(f"body parts must be distinct, got {owners}")
    return owners


def write_dlc_csv(path: str | Path, scorer: str, bodyparts: list[str], index: list[str] | list[int],
                  keypoints: np.ndarray, likelihood: np.ndarray,
                  individuals: Sequence[tuple[str, str]] | None = None) -> Path:
    """Write a DeepLabCut machine-label CSV (the layout of analyze_videos' and machinelabels' CSVs).

    Rows: ``scorer,<scorer> x 3K`` / ``bodyparts,<part> x 3 ...`` / ``coords,x,y,likelihood,...``, then one
    row per frame: ``index[i]`` (an image path relative to the project such as
    ``labeled-data/reachingvideo1/img005.png``, or a frame number for videos) and x, y, likelihood per part.
    individuals: (individual, body part) of each keypoint of a multi-animal project (pipeline.converters.dlc
    ``keypoint_columns``): then an ``individuals`` row follows the scorer row and the bodyparts row holds the
    body parts, DeepLabCut's multi-animal layout.

    keypoints: [N, K, 2] prepared convention (written as DeepLabCut pixel indices, ``- 0.5``); a non-finite
    keypoint is written as empty x / y cells.  likelihood: [N, K] in [0, 1] (``likelihood_from_uncertainty``);
    it is written for every keypoint, and DeepLabCut (and ``dlc.read_label_file``) treat a body part with
    likelihood < the project's ``pcutoff`` as not labeled.  Written atomically; returns ``path``.
    """
    chunks = prediction_chunks(keypoints, likelihood, len(bodyparts))
    if not scorer or not isinstance(scorer, str):
        raise ValueError(f"scorer must be a non-empty name, got {scorer!r}")
    owners = _check_parts(bodyparts, individuals)
    if len(index) != len(keypoints):
        raise ValueError(f"{len(index)} index entries for {len(keypoints)} frames")
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["scorer", *[scorer] * (3 * len(bodyparts))])
        if individuals is not None:
            out.writerow(["individuals", *[o[0] for o in owners for _ in range(3)]])
        out.writerow(["bodyparts", *[o[-1] for o in owners for _ in range(3)]])
        out.writerow(["coords", *["x", "y", "likelihood"] * len(bodyparts)])
        for rows, kp, lk in chunks:
            finite = np.isfinite(kp).all(2)
            if not np.isfinite(lk[finite]).all():
                n, k = np.argwhere(finite & ~np.isfinite(lk))[0]
                raise ValueError(f"frame {index[rows.start + n]!r}, {bodyparts[k]}: a keypoint is given but its "
                                 f"likelihood is not finite")
            for name, xy, p, ok in zip(index[rows], kp - PIXEL_INDEX_OFFSET, lk, finite):
                cells = [str(name)]
                for (x, y), l, known in zip(xy, p, ok):
                    cells += [_number(x), _number(y), _number(l)] if known else ["", "", _number(l)]
                out.writerow(cells)
    return path


#: the HDF5 table layout version pandas 1-2 write and need to read a table back (pandas 3 omits it)
PANDAS_TABLE_VERSION = "0.15.2"


def dlc_scorer(scorer: str) -> str:
    """The scorer name of DeepLabCut's analysis files: ``DLC_<scorer>`` (DeepLabCut's own start with ``DLC``,
    and its tools find ``<video stem><scorer>*.h5`` by that prefix)."""
    if not scorer or not isinstance(scorer, str):
        raise ValueError(f"scorer must be a non-empty name, got {scorer!r}")
    return scorer if scorer.startswith("DLC") else f"DLC_{scorer}"


def _dlc_frame(scorer: str, bodyparts: list[str], index, keypoints: np.ndarray, likelihood: np.ndarray,
               individuals: Sequence[tuple[str, str]] | None = None):
    """DeepLabCut's DataFrame: columns (scorer, bodyparts, coords), or (scorer, individuals, bodyparts, coords)
    with ``individuals`` (see ``write_dlc_csv``); pixel-index x, y."""
    import pandas as pd

    kp, lk = _predictions(keypoints, likelihood, len(bodyparts))
    owners = _check_parts(bodyparts, individuals)
    if len(index) != len(kp):
        raise ValueError(f"{len(index)} index entries for {len(kp)} frames")
    xy = np.where(np.isfinite(kp).all(2, keepdims=True), kp - PIXEL_INDEX_OFFSET, np.nan)
    values = np.concatenate([xy, lk[..., None]], axis=2).reshape(len(kp), 3 * len(bodyparts))
    levels = ["scorer", "bodyparts", "coords"] if individuals is None else \
        ["scorer", "individuals", "bodyparts", "coords"]
    columns = pd.MultiIndex.from_tuples([(scorer, *o, c) for o in owners for c in ("x", "y", "likelihood")],
                                        names=levels)
    return pd.DataFrame(values, columns=columns, index=index)


def write_dlc_video_h5(folder: str | Path, video: str | Path, scorer: str, bodyparts: list[str],
                       frames: Sequence[int], keypoints: np.ndarray, likelihood: np.ndarray,
                       individuals: Sequence[tuple[str, str]] | None = None, rows: int = CHUNK_ROWS) -> Path:
    """Write ``folder/<video stem><DLC scorer>.h5``, the file DeepLabCut's ``analyze_videos`` writes.

    frames: the frame number of each row (the index); keypoints [N, K, 2] prepared convention, written as
    pixel indices; likelihood [N, K]; individuals: multi-animal columns (see ``write_dlc_csv``).  Key
    ``df_with_missing``, PyTables "table" format, as DeepLabCut writes it.  The scorer is
    ``dlc_scorer(scorer)``.  Appended ``rows`` frames at a time.  Written atomically; returns the path.
    """
    import pandas as pd

    name = dlc_scorer(scorer)
    numbers = np.asarray(frames)
    if numbers.dtype == bool or not (numbers.size == 0 or np.issubdtype(numbers.dtype, np.integer)) or \
            (numbers < 0).any():
        raise ValueError("frames must be frame numbers (whole numbers >= 0)")
    if len(numbers) != len(keypoints):
        raise ValueError(f"{len(numbers)} index entries for {len(keypoints)} frames")
    path = Path(folder) / f"{Path(video).stem}{name}.h5"
    with atomic_path(path) as tmp, pd.HDFStore(tmp, mode="w") as store:
        # appended a chunk at a time; PyTables indexes the table after the last one
        for chunk, kp, lk in prediction_chunks(keypoints, likelihood, len(bodyparts), rows):
            df = _dlc_frame(name, bodyparts, pd.Index(numbers[chunk].astype(np.int64)), kp, lk, individuals)
            store.put("df_with_missing", df, format="table", append=True, track_times=False,
                      index=chunk.stop == len(numbers))
        # pandas < 3 (DeepLabCut's) reads a table only with the layout version pandas 3 no longer writes
        store.get_storer("df_with_missing").attrs.pandas_version = PANDAS_TABLE_VERSION
    return path


def write_dlc_machinelabels(folder: str | Path, iteration: int, scorer: str, bodyparts: list[str],
                            images: Sequence[str], keypoints: np.ndarray, likelihood: np.ndarray,
                            individuals: Sequence[tuple[str, str]] | None = None) -> Path:
    """Write ``folder/labeled-data/<video>/machinelabels-iter<iteration>.h5`` for DeepLabCut's refine GUI.

    images: each row's project-relative image path ``labeled-data/<video>/<image>`` (one ``<video>`` per
    call, as DeepLabCut keeps one file per labeled-data folder); the index is DeepLabCut's three-level
    ``("labeled-data", <video>, <image>)``.  Copy the file into the project's ``labeled-data/<video>/``
    (beside the images) to refine the labels there.  Key ``df_with_missing``, PyTables "fixed" format, as
    DeepLabCut's ``extract_outlier_frames`` writes it; scorer ``dlc_scorer(scorer)``; individuals:
    multi-animal columns (see ``write_dlc_csv``).  Written atomically.
    """
    import pandas as pd

    if isinstance(iteration, bool) or not isinstance(iteration, (int, np.integer)) or iteration < 0:
        raise ValueError(f"iteration must be a whole number >= 0, got {iteration!r}")
    rows = []
    for n, image in enumerate(images):
        parts = tuple(Path(str(image).replace("\\", "/")).parts)
        if len(parts) != 3 or parts[0] != "labeled-data":
            raise ValueError(f"images[{n}]: expected labeled-data/<video>/<image>, got {image!r}")
        rows.append(parts)
    videos = sorted({r[1] for r in rows})
    if len(videos) != 1:
        raise ValueError(f"machine labels are written per labeled-data folder; got frames of {videos or 'none'}")
    df = _dlc_frame(dlc_scorer(scorer), bodyparts, pd.MultiIndex.from_tuples(rows), keypoints, likelihood,
                    individuals)
    path = Path(folder) / "labeled-data" / videos[0] / f"machinelabels-iter{int(iteration)}.h5"
    with atomic_path(path) as tmp, pd.HDFStore(tmp, mode="w") as store:
        store.put("df_with_missing", df, format="fixed", track_times=False)
    return path


# ---- NWB ---------------------------------------------------------------------------------------------
#: what the NWB files' confidence is (see the module docstring's "Likelihood")
NWB_CONFIDENCE = ("likelihood = sigmoid(v), the edge strength fskp's detector gives the keypoint (He et al. 2023, "
                  "Eq. 7): the model's own confidence in [0, 1], not a calibrated probability")
#: ... when the likelihood is calibrated (jobs/labeling/confidence.py); {n}: the held-out keypoints it was fitted on
NWB_CONFIDENCE_CALIBRATED = ("likelihood calibrated on {n} held-out labeled keypoints by fskp label: about this "
                             "fraction of keypoints with this likelihood were within the PCK threshold of their "
                             "label; from the model's certainty sigmoid(v) (He et al. 2023, Eq. 7) and how unlike "
                             "the training frames the frame looks")
NWB_REFERENCE_FRAME = ("(0, 0) is the centre of the top-left pixel of the frame, x to the right and y down, in "
                       "pixels of the source frame (DeepLabCut's pixel-index convention)")


def write_nwb(path: str | Path, card: Card, keypoints: np.ndarray, likelihood: np.ndarray, *,
              timestamps: Sequence[float] | None = None, rate: float | None = None,
              source: Sequence[str | Path] = (), source_rate: float | None = None,
              source_frames: int | None = None, scorer: str = "fskp", description: str = "", session_start=None,
              confidence_definition: str = NWB_CONFIDENCE, rows: int = CHUNK_ROWS) -> Path:
    """Write the predictions as an NWB file with ndx-pose: ``processing/behavior`` holds a ``PoseEstimation``
    with one ``PoseEstimationSeries`` per keypoint and a ``Skeletons`` container with the card's skeleton.

    keypoints [N, K, 2] prepared convention (written as pixel indices, NaN where not finite); likelihood
    [N, K] is each series' ``confidence``.  Time: ``timestamps`` (seconds, one per row) or ``rate`` (rows
    are consecutive frames from t = 0).  source: the video (one file) or the image files (one per row)
    the predictions were made on, stored as an external ``ImageSeries`` linked as ``source_video``
    (paths relative to the NWB file's folder) of ``source_frames`` frames (default N) at ``source_rate``
    frames per second (default ``rate``, else 1).  session_start: a timezone-aware datetime (default: the first source file's modification time;
    fskp does not know when the recording started).  More than ``rows`` frames are written ``rows`` at a time
    (HDF5 chunks of that many frames, ``_nwb_rows``).  Validated by pynwb's validator in the tests.
    """
    import datetime
    import os
    import uuid
    from importlib.metadata import PackageNotFoundError, version

    from ndx_pose import PoseEstimation, PoseEstimationSeries, Skeleton, Skeletons
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.image import ImageSeries

    for _ in prediction_chunks(keypoints, likelihood, card.num_keypoints):
        pass                                              # every value checked before anything is built
    kp, lk = np.asarray(keypoints), np.asarray(likelihood)
    if (timestamps is None) == (rate is None):
        raise ValueError("give exactly one of timestamps and rate")
    if timestamps is not None and len(timestamps) != len(kp):
        raise ValueError(f"{len(timestamps)} timestamps for {len(kp)} frames")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be positive, got {rate!r}")
    if card.num_keypoints > 256:
        raise ValueError(f"ndx-pose stores skeleton edges as uint8: at most 256 keypoints, card {card.name} has "
                         f"{card.num_keypoints}")
    path = Path(path)
    sources = [Path(s) for s in source]
    if session_start is None:
        stamp = min((s.stat().st_mtime for s in sources if s.exists()), default=0.0)
        session_start = datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc)
    try:
        fskp_version = version("fskp")
    except PackageNotFoundError:
        fskp_version = "unknown"
    nwb = NWBFile(session_description=description or f"keypoints predicted by fskp ({card.name})",
                  identifier=str(uuid.uuid4()), session_start_time=session_start)
    source_video = None
    if sources:
        rel = [os.path.relpath(s.resolve(), path.parent.resolve()) for s in sources]
        frames_per_file = [0] if len(rel) == 1 else list(range(len(rel)))
        source_video = ImageSeries(name="source_video", description="the frames the keypoints were predicted on",
                                   unit="n.a.", external_file=rel, format="external",
                                   starting_frame=frames_per_file, rate=float(source_rate or rate or 1.0),
                                   num_samples=int(source_frames if source_frames is not None else len(kp)))
        nwb.add_acquisition(source_video)
    skeleton = Skeleton(name=card.name, nodes=list(card.keypoints),
                        edges=np.asarray(card.links, np.uint8).reshape(-1, 2))
    series = []
    for k, name in enumerate(card.keypoints):
        if timestamps is None:
            time = {"rate": float(rate), "starting_time": 0.0}
        else:               # stored once: the other series link to the first one's timestamps
            time = {"timestamps": series[0] if series else np.asarray(timestamps, np.float64)}
        series.append(PoseEstimationSeries(name=name, description=f"estimated position of {name}",
                                           data=_nwb_rows(kp, k, rows, _pixel_index_xy), unit="pixels",
                                           reference_frame=NWB_REFERENCE_FRAME,
                                           confidence=_nwb_rows(lk, k, rows, _float64),
                                           confidence_definition=confidence_definition, **time))
    pose = PoseEstimation(name="PoseEstimation", pose_estimation_series=series,
                          description=description or f"keypoints predicted by fskp ({card.name})",
                          scorer=scorer, source_software="fskp", source_software_version=fskp_version,
                          skeleton=skeleton, source_video=source_video)
    behavior = nwb.create_processing_module(name="behavior", description="keypoints predicted by fskp")
    behavior.add(Skeletons(skeletons=[skeleton]))
    behavior.add(pose)
    with atomic_path(path) as tmp:
        with NWBHDF5IO(str(tmp), "w") as io:
            io.write(nwb)
    return path


def _pixel_index_xy(kp: np.ndarray) -> np.ndarray:
    """Keypoints [n, 2] (prepared convention) -> float64 pixel indices, NaN where either coordinate is not finite."""
    kp = np.asarray(kp, np.float64)
    return np.where(np.isfinite(kp).all(1, keepdims=True), kp - PIXEL_INDEX_OFFSET, np.nan)


def _float64(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float64)


def _nwb_rows(values: np.ndarray, k: int, rows: int, convert: Callable[[np.ndarray], np.ndarray]):
    """Keypoint ``k``'s column of values [N, K, ...] converted for NWB: the array itself for up to ``rows``
    frames, else an hdmf iterator that reads and writes ``rows`` frames at a time."""
    if len(values) <= rows:
        return convert(values[:, k])
    from hdmf.data_utils import GenericDataChunkIterator

    class Rows(GenericDataChunkIterator):
        def _get_data(self, selection):
            return convert(values[selection[0], k])[(slice(None), *selection[1:])]

        def _get_maxshape(self):
            return (len(values), *values.shape[2:])

        def _get_dtype(self):
            return np.dtype(np.float64)

    shape = (rows, *values.shape[2:])
    return Rows(buffer_shape=shape, chunk_shape=shape, display_progress=False)


# ---- COCO --------------------------------------------------------------------------------------------
def _coco_annotation(n: int, xy: np.ndarray, lk: np.ndarray, cutoff: float) -> dict:
    """One COCO annotation for image ``n + 1`` from keypoints [K, 2] (prepared) and likelihood [K]."""
    shown = np.isfinite(xy).all(1) & np.isfinite(lk) & (lk >= cutoff)
    values: list[float | int] = []
    for (x, y), v in zip(xy - PIXEL_INDEX_OFFSET, shown):
        values += [float(x), float(y), 2] if v else [0, 0, 0]
    if shown.any():
        (x0, y0), (x1, y1) = xy[shown].min(0), xy[shown].max(0)
        bbox = [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
    else:
        bbox = [0.0, 0.0, 0.0, 0.0]
    scores = [float(l) if math.isfinite(l) else None for l in lk]
    given = lk[np.isfinite(lk)]
    return {"id": n + 1, "image_id": n + 1, "category_id": 1, "iscrowd": 0, "keypoints": values,
            "keypoint_scores": scores, "num_keypoints": int(shown.sum()), "bbox": bbox,
            "area": bbox[2] * bbox[3], "score": float(given.mean()) if given.size else 0.0}


def _coco_image(n: int, item: dict) -> dict:
    """COCO ``images`` entry ``n + 1`` from {file_name, width, height[, frame_index]}."""
    name, w, h = item.get("file_name"), item.get("width"), item.get("height")
    if not isinstance(name, str) or not name:
        raise ValueError(f"images[{n}]: needs a file_name, got {name!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise ValueError(f"images[{n}] ({name}): width and height must be positive integers, got {w!r}, {h!r}")
    entry = {"id": n + 1, "file_name": name, "width": int(w), "height": int(h)}
    if item.get("frame_index") is not None:
        entry["frame_index"] = int(item["frame_index"])
    return entry


def write_coco_json(path: str | Path, card: Card, images: Iterable[dict], keypoints: np.ndarray,
                    likelihood: np.ndarray, cutoff: float) -> Path:
    """Write the predictions as a COCO keypoint JSON: one image and one annotation per frame.

    images: N dicts (any iterable, e.g. a generator) with ``file_name``, ``width``, ``height`` (and optionally
    ``frame_index``), ids 1..N.  The file is streamed entry by entry: an hour of video (10^5 frames) never
    exists as one Python structure or string.
    keypoints: [N, K, 2] prepared convention, written as COCO pixel indices (``- 0.5``).
    likelihood: [N, K] in [0, 1].

    cutoff -- what ``v`` means here: a keypoint with likelihood >= cutoff is written with ``v = 2``
    (labeled and visible); one below it, or with a non-finite position or likelihood, with ``v = 0`` and
    x = y = 0 (not labeled, as the COCO spec requires for v = 0).  ``v = 1`` (labeled but occluded) is never
    written: the model does not predict occlusion.  The likelihood of every keypoint, shown or not, is kept
    in the non-standard but common ``keypoint_scores`` list (null where not finite); ``score`` is their
    mean; ``num_keypoints`` counts v = 2; ``bbox`` [x, y, w, h] is the box around the v = 2 keypoints in
    continuous coordinates (pixel centres at +0.5, as pipeline/converters/coco.py reads boxes), [0, 0, 0, 0]
    when there are none, and ``area`` is w * h.  ``categories`` holds the card's name, keypoint names and
    its links as a 1-based ``skeleton``.  Written atomically; returns ``path``.
    """
    cutoff = _check_cutoff(cutoff)
    chunks = prediction_chunks(keypoints, likelihood, card.num_keypoints)
    frames = len(keypoints)
    info = {"description": f"keypoints predicted by fskp ({card.name}); v = 2 where likelihood >= {cutoff:g}, "
                           f"keypoint_scores hold the model's likelihoods", "keypoint_cutoff": cutoff}
    categories = [{"id": 1, "name": card.name, "supercategory": card.name, "keypoints": list(card.keypoints),
                   "skeleton": [[a + 1, b + 1] for a, b in card.links]}]
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(f'{{"info": {json.dumps(info)}, "images": [')
        count = 0
        for n, item in enumerate(images):
            if n >= frames:
                raise ValueError(f"more images than the {frames} frames of keypoints")
            f.write((", " if n else "") + json.dumps(_coco_image(n, item)))
            count = n + 1
        if count != frames:
            raise ValueError(f"{count} images for {frames} frames of keypoints")
        f.write('], "annotations": [')
        for rows, kp, lk in chunks:
            for i in range(len(kp)):
                n = rows.start + i
                f.write((", " if n else "") + json.dumps(_coco_annotation(n, kp[i], lk[i], cutoff), allow_nan=False))
        f.write(f'], "categories": {json.dumps(categories)}}}')
    return path


# ---- overlays ----------------------------------------------------------------------------------------
def marker_radius(height: int, width: int) -> float:
    """Keypoint disc radius in pixels for an image of this size (2 px on tiny images, ~5 px at 832 x 747)."""
    return max(2.0, 0.006 * max(height, width))


def draw_prediction(image: np.ndarray, keypoints: np.ndarray, likelihood: np.ndarray,
                    links: Sequence[tuple[int, int]], cutoff: float) -> np.ndarray:
    """``image`` [H, W, 3] uint8 with keypoints [K, 2] (its pixels, prepared convention) drawn.

    Discs for likelihood >= cutoff, hollow rings below it, and around each keypoint an uncertainty ring of
    radius ``marker_radius + RING_GROWTH * max(H, W) * (1 - likelihood)`` (a NaN likelihood counts as 0).
    """
    from pipeline.draw import draw_keypoints

    h, w = image.shape[:2]
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    lk = np.nan_to_num(np.asarray(likelihood, np.float64).reshape(-1), nan=0.0)
    if len(lk) != len(kp):
        raise ValueError(f"{len(kp)} keypoints but {len(lk)} likelihoods")
    radius = marker_radius(h, w)
    ring = radius + RING_GROWTH * max(h, w) * (1.0 - np.clip(lk, 0.0, 1.0))
    return draw_keypoints(image, kp, lk >= cutoff, links=list(links), uncertainty=ring, radius=radius)


def overlay_names(sources: Sequence[Path]) -> list[str]:
    """Distinct output names ``<stem>.jpg``; ``<parent>_<stem>.jpg`` where stems repeat (then ``-2``, ...)."""
    stems = [Path(s).stem for s in sources]
    repeated = {s for s in stems if stems.count(s) > 1}
    names, taken = [], set()
    for src, stem in zip(sources, stems):
        base = f"{Path(src).parent.name}_{stem}" if stem in repeated else stem
        name, n = base, 1
        while name.lower() in taken:                  # case-insensitive file systems too
            n += 1
            name = f"{base}-{n}"
        taken.add(name.lower())
        names.append(f"{name}.jpg")
    return names


def write_overlay_images(sources: list[Path], out_dir: str | Path, keypoints: np.ndarray, likelihood: np.ndarray,
                         links: Sequence[tuple[int, int]], cutoff: float) -> list[Path]:
    """Draw each source image's predictions and save it as ``out_dir/<stem>.jpg`` (JPEG quality 90).

    keypoints: [N, K, 2] source-image pixels, prepared convention; likelihood: [N, K].  A keypoint with
    likelihood >= cutoff is a filled disc, one below it a hollow ring; each has an uncertainty ring that
    grows with 1 - likelihood (``draw_prediction``).  Names never collide (``overlay_names``).  Each file is
    written atomically; returns the written paths in the order of ``sources``.
    """
    from PIL import Image

    cutoff = _check_cutoff(cutoff)
    kp, lk = _predictions(keypoints, likelihood)
    if len(sources) != len(kp):
        raise ValueError(f"{len(sources)} source images for {len(kp)} frames of keypoints")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src, name, xy, p in zip(sources, overlay_names(sources), kp, lk):
        with Image.open(src) as im:
            image = np.asarray(im.convert("RGB"))
        drawn = draw_prediction(image, xy, p, links, cutoff)
        with atomic_path(out_dir / name) as tmp:
            Image.fromarray(drawn).save(tmp, format="JPEG", quality=JPEG_QUALITY)
        written.append(out_dir / name)
    return written


def _video_encoder(container, rate: Fraction, width: int, height: int):
    """An H.264 (libx264) video stream in ``container``, or MPEG-4 part 2 where libx264 is unavailable."""
    import av

    try:
        stream = container.add_stream("libx264", rate=rate)
        stream.options = {"crf": "20", "preset": "veryfast"}
    except (av.FFmpegError, ValueError, KeyError):
        stream = container.add_stream("mpeg4", rate=rate)
        stream.bit_rate = max(1_000_000, int(width * height * float(rate) * 0.3))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return stream


def write_overlay_video(video: str | Path, out_path: str | Path,
                        frame_keypoints: dict[int, tuple[np.ndarray, np.ndarray]],
                        links: Sequence[tuple[int, int]], cutoff: float,
                        progress: Callable[[int, int | None], None] | None = None) -> int:
    """Re-encode ``video`` as an mp4 with each frame's predictions drawn; returns the number of frames.

    frame_keypoints: frame index (0-based, decode order) -> (keypoints [K, 2] in the frame's pixels,
    prepared convention; likelihood [K]); frames not in it are written undrawn.  Drawing as in
    ``draw_prediction`` (discs at likelihood >= cutoff, rings below it, uncertainty rings).

    Frames are decoded, drawn and encoded one at a time (memory does not grow with the video), with
    libx264 (H.264; MPEG-4 part 2 where PyAV lacks libx264) at the source's average frame rate (30 fps if
    unknown).  yuv420p needs even sizes, so an odd width or height gains one black column or row.
    Written to a temporary sibling and renamed when complete.  ``progress(done, total)`` is called after
    each frame; total is the container's frame count, or None when it does not say.
    """
    import av

    cutoff = _check_cutoff(cutoff)
    video, out_path = Path(video), Path(out_path)
    written = 0
    with av.open(str(video)) as source:
        src = source.streams.video[0]
        rate = Fraction(src.average_rate or src.guessed_rate or 30)
        total = int(src.frames) or None
        w, h = src.codec_context.width, src.codec_context.height
        ew, eh = w + w % 2, h + h % 2
        with atomic_path(out_path) as tmp, av.open(str(tmp), "w", format="mp4") as sink:
            stream = _video_encoder(sink, rate, ew, eh)
            for i, frame in enumerate(source.decode(src)):
                image = frame.to_ndarray(format="rgb24")
                if i in frame_keypoints:
                    image = draw_prediction(image, *frame_keypoints[i], links, cutoff)
                if image.shape[0] > eh or image.shape[1] > ew:
                    raise ValueError(f"{video}: frame {i} is {image.shape[1]} x {image.shape[0]}, larger than "
                                     f"the stream's {w} x {h}")
                if (ew, eh) != (image.shape[1], image.shape[0]):
                    image = np.pad(image, ((0, eh - image.shape[0]), (0, ew - image.shape[1]), (0, 0)))
                out = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                out.pts = i
                out.time_base = 1 / rate
                sink.mux(stream.encode(out))
                written = i + 1
                if progress is not None:
                    progress(written, total)
            sink.mux(stream.encode(None))
    return written
