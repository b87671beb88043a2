"""The videos an output folder already holds predictions of: `fskp predict --video` skips them on the next run.

A lab's folder of videos grows every week; predicting it again predicts only the new videos, and a run stopped
part way keeps the videos it finished (videos are predicted in groups, ``video_groups``).  Each predicted video
leaves ``predictions/<stem>.fskp.npz`` beside its other files, written last: what was predicted of each frame (the
arrays of ``Predictions``; no likelihood, it is recomputed from them) and, as JSON, the video's size and
modification time, the settings that shaped the files (checkpoint, calibration, crop, frame step, test-time
crops, overlay and its pcutoff) and the files written.  A video counts as predicted when its record matches all
of these and every file it lists still exists.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from jobs.inference import Predictions
from pipeline.atomic import atomic_path
from pipeline.frame_ids import FrameIds

RECORD_SUFFIX = ".fskp.npz"
#: videos are predicted in groups of at least this many frames (5 minutes at 30 frames/s), each group's files
#: written and kept as it finishes: one start of the model actors for many short videos, and at most a group
#: lost to a failure
GROUP_FRAMES = 9_000


def video_files(sources: Sequence[str | Path]) -> list[Path]:
    """The videos of ``sources`` (video files, or folders: the videos in them, searched recursively), sorted,
    each once.  A missing path, a folder without a video, a file that is not a video or two videos of the same
    name (stem) is an error naming them."""
    from pipeline.pool import VIDEO_SUFFIXES, pool_files

    found: dict[str, Path] = {}
    for source in map(Path, sources):
        if source.is_dir():
            videos = [f for f in pool_files([source]) if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES]
            if not videos:
                raise FileNotFoundError(f"{source}: no video in this folder (looked for "
                                        f"{', '.join(sorted(VIDEO_SUFFIXES))}); images go to --images")
        elif source.is_file():
            if source.suffix.lower() not in VIDEO_SUFFIXES:
                raise ValueError(f"{source}: not a video file ({', '.join(sorted(VIDEO_SUFFIXES))}); images go "
                                 f"to --images")
            videos = [source]
        else:
            raise FileNotFoundError(f"{source}: no such video or folder")
        found.update((str(v), v) for v in videos)
    by_name: dict[str, list[str]] = {}
    for name in found:
        by_name.setdefault(Path(name).stem, []).append(name)
    same = next((paths for paths in by_name.values() if len(paths) > 1), None)
    if same:                           # a video's files are named by its name (DeepLabCut's way): they would clash
        raise ValueError(f"{' and '.join(same)}: videos of the same name, whose files would overwrite each other "
                         f"in one output folder; predict them into different --out folders")
    return [found[k] for k in sorted(found)]


def video_groups(videos: Sequence[Path], frame_step: int = 1, frames: int | None = None) -> list[list[Path]]:
    """``videos`` in consecutive groups of at least ``frames`` frames to predict (default ``GROUP_FRAMES``; the
    last group: what is left), so that many short videos share one start of the model actors and a long one is a
    group of its own."""
    from pipeline.pool import video_length

    frames = frames or GROUP_FRAMES
    groups: list[list[Path]] = [[]]
    total = 0
    for video in videos:
        if total >= frames:
            groups.append([])
            total = 0
        groups[-1].append(video)
        total += -(-video_length(video) // frame_step)
    return [g for g in groups if g]


def split_by_video(preds: Predictions) -> dict[str, Predictions]:
    """The predictions of several videos (``predict_frames``'s: ids a FrameIds), one Predictions per video (its
    arrays views of the given ones), keyed by the video's path as given to ``predict_frames``."""
    out = {}
    for path, rows in preds.ids.spans():
        out[path] = Predictions(ids=preds.ids.take(np.arange(rows.start, rows.stop)), keypoints=preds.keypoints[rows],
                                uncertainty=preds.uncertainty[rows], embedding=preds.embedding[rows],
                                ok=preds.ok[rows], spread=None if preds.spread is None else preds.spread[rows])
    return out


def record_path(out: Path, video: Path) -> Path:
    return Path(out) / "predictions" / f"{Path(video).stem}{RECORD_SUFFIX}"


def _file_state(path: Path | None) -> list | None:
    """[resolved path, size, modification time in ns] of a file, None for no file."""
    if path is None:
        return None
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def prediction_settings(checkpoint: Path, calibration: Path | None, crop, frame_step: int, tta: bool,
                        pcutoff: float, overlay: bool) -> dict:
    """What shaped a video's output files, as its record keeps it (JSON values)."""
    return {"checkpoint": _file_state(checkpoint), "calibration": _file_state(calibration),
            "crop": None if crop is None else [float(c) for c in crop], "frame_step": int(frame_step),
            "tta": bool(tta), "overlay": bool(overlay),
            "pcutoff": float(pcutoff) if overlay else None}          # a video's own files use it in overlays only


def kept_files(out: Path, video: Path, settings: dict) -> tuple[dict[str, str] | None, str]:
    """(the files a video's predictions were written to, "") when ``out`` holds them under these ``settings``;
    else (None, why not: "" when there is no record).  Reads the record's JSON only."""
    path = record_path(out, video)
    if not path.is_file():
        return None, ""
    try:
        with np.load(path) as saved:
            meta = json.loads(str(saved["meta"]))
    except (OSError, ValueError, KeyError) as e:
        return None, f"its record {path} cannot be read ({e})"
    if meta.get("video") != _file_state(video):
        return None, "the video changed since (size or modification time), or another video has its name"
    changed = [k for k in settings if meta.get("settings", {}).get(k) != settings[k]]
    if changed:
        return None, f"predicted before with other {', '.join(changed)}"
    missing = [p for p in meta["outputs"].values() if not Path(p).exists()]
    if missing:
        return None, f"{missing[0]} is gone"
    return dict(meta["outputs"]), ""


def kept_predictions(out: Path, video: Path) -> Predictions:
    """A video's predictions as its record in ``out`` keeps them (in memory: one video's)."""
    with np.load(record_path(out, video)) as saved:
        arrays = {k: saved[k] for k in saved.files if k != "meta"}
    ids = FrameIds()
    ids.add_video_frames(str(video), arrays["numbers"])
    return Predictions(ids=ids, keypoints=arrays["keypoints"], uncertainty=arrays["uncertainty"],
                       embedding=arrays["embedding"], ok=arrays["ok"], spread=arrays.get("spread"))


def combined_predictions(out: Path, videos: Sequence[Path]) -> Predictions:
    """The kept predictions of ``videos`` (each with a record in ``out``) one after another, in file-backed
    arrays (jobs/inference.py ``spill_array``) filled a video at a time: a folder of many hours is not held in
    memory."""
    from jobs.inference import spill_array

    lengths = []
    for video in videos:
        with np.load(record_path(out, video)) as saved:
            lengths.append(len(saved["ok"]))
    ids, arrays, row = FrameIds(), {}, 0
    for video, n in zip(videos, lengths):
        part = kept_predictions(out, video)
        fields = {"keypoints": part.keypoints, "uncertainty": part.uncertainty, "embedding": part.embedding,
                  "ok": part.ok, "spread": part.spread}
        for name, value in fields.items():          # a spread in every record or none: tta is a kept setting
            if value is not None:
                if name not in arrays:
                    arrays[name] = spill_array((sum(lengths), *value.shape[1:]), value.dtype)
                arrays[name][row:row + n] = value
        ids.add_video_frames(str(video), part.ids.frame_numbers())
        row += n
    return Predictions(ids=ids, keypoints=arrays["keypoints"], uncertainty=arrays["uncertainty"],
                       embedding=arrays["embedding"], ok=arrays["ok"], spread=arrays.get("spread"))


def keep_predictions(out: Path, video: Path, settings: dict, preds: Predictions,
                     outputs: dict[str, str]) -> Path:
    """Write the record of one video's predictions (``preds``, from ``predict_frames``: its ids a FrameIds) and
    files (``outputs``), atomically: the last step of a video's outputs, so a record exists only beside
    complete files."""
    arrays = {"numbers": preds.ids.frame_numbers(), "keypoints": np.asarray(preds.keypoints),
              "uncertainty": np.asarray(preds.uncertainty), "embedding": np.asarray(preds.embedding),
              "ok": np.asarray(preds.ok)}
    if preds.spread is not None:
        arrays["spread"] = np.asarray(preds.spread)
    meta = {"video": _file_state(video), "settings": settings, "outputs": outputs}
    path = record_path(out, video)
    with atomic_path(path) as tmp:
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    return path
