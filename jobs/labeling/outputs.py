"""What `fskp label` and `fskp predict` write: DeepLabCut CSV/HDF5, COCO JSON, NWB, SLEAP, overlays,
suggestions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from jobs.labeling.inputs import LabelingInput
from pipeline.card import Card
from pipeline.converters.dlc import DEFAULT_PCUTOFF   # DeepLabCut's default pcutoff (0.6)


def write_outputs(inp_or_card, preds, out: Path, *, overlay: bool = True, exclude: set[str] = frozenset(),
                  labeled_ids: Sequence[str] = (), n_suggestions: int = 20, suggest_by: str = "coverage",
                  pcutoff: float | None = None,
                  relative=None, calibration=None, individuals=None, per_source: bool = True,
                  joint: bool = True) -> dict[str, str]:
    """DeepLabCut CSVs (one per frame folder and per video), a COCO JSON, overlays and suggestions; with the
    ``lab`` extra installed also DeepLabCut HDF5 files and an NWB file per frame folder and video
    (``_lab_outputs``); with the ``sleap`` extra a SLEAP predictions file (``<stem>.predictions.slp``) each.
    Every likelihood written is ``calibration``'s (jobs/labeling/confidence.py) when given, else the model's
    uncalibrated certainty; the suggestions rank frames by the same likelihood, under the rule ``suggest_by``
    (pipeline/suggest.py).  ``individuals``: (individual,
    body part) per keypoint of a multi-animal DeepLabCut project, for DeepLabCut's multi-animal layout (taken
    from a LabelingInput when not given).  ``per_source`` / ``joint``: write the files of each folder and video
    / the files of all frames together (COCO JSON, suggestions), both by default."""
    import importlib.util

    from pipeline import exports

    card = inp_or_card.card if isinstance(inp_or_card, LabelingInput) else inp_or_card
    if isinstance(inp_or_card, LabelingInput):
        relative, pcutoff = inp_or_card.relative, inp_or_card.pcutoff if pcutoff is None else pcutoff
        scorer = inp_or_card.scorer
    else:
        relative, scorer = relative or (lambda p: Path(p).as_posix()), "fskp"
    pcutoff = DEFAULT_PCUTOFF if pcutoff is None else pcutoff
    iteration = inp_or_card.iteration if isinstance(inp_or_card, LabelingInput) else 0
    if individuals is None and isinstance(inp_or_card, LabelingInput):
        individuals = inp_or_card.individuals
    nwb_confidence = exports.NWB_CONFIDENCE if calibration is None else \
        exports.NWB_CONFIDENCE_CALIBRATED.format(n=calibration.fitted_on)
    lab = _lab_packages()
    sleap = importlib.util.find_spec("sleap_io") is not None      # the ``sleap`` extra: SLEAP predictions files
    machine_folders: set[str] = set()       # labeled-data/<folder> names given to frame folders so far
    likelihood = _likelihood(preds, calibration)
    outputs: dict[str, str] = {}
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    groups, numbers = frame_groups(preds.ids)
    for key, rows in groups.items() if per_source else ():
        is_video = bool(numbers[rows][0] >= 0)
        ids = None                                        # a video's rows are named by their numbers
        if not is_video:
            ids = preds.ids[rows] if isinstance(rows, slice) else [preds.ids[n] for n in rows]
        stem = Path(key).stem if is_video else (relative(key).strip("./").replace("/", "_") or "images")
        index = numbers[rows] if is_video else [relative(i) for i in ids]
        keypoints, group_likelihood = preds.keypoints[rows], likelihood[rows]     # views of a video's rows
        path = pred_dir / f"{stem}.csv"
        exports.write_dlc_csv(path, f"fskp_{scorer}", list(card.keypoints), index, keypoints, group_likelihood,
                              individuals)
        outputs[f"dlc_csv:{stem}"] = str(path)
        if lab:
            outputs.update(_lab_outputs(card, key, stem, is_video, index, ids, keypoints, group_likelihood, pred_dir,
                                        f"fskp_{scorer}", iteration, machine_folders, individuals, nwb_confidence))
        if sleap:
            from pipeline.converters.slp import write_slp_predictions

            target = pred_dir / f"{stem}.predictions.slp"          # SLEAP's name for a predictions file
            write_slp_predictions(target, card.keypoints, card.links, key if is_video else ids,
                                  index if is_video else range(len(ids)), keypoints, group_likelihood)
            outputs[f"slp:{stem}"] = str(target)
        if is_video:                                      # where tracking failed, at a glance
            outputs[f"likelihood_png:{stem}"] = _likelihood_picture(card, key, pred_dir / f"{stem}.likelihood.png",
                                                                    index, group_likelihood, pcutoff)
        if overlay:
            if is_video:
                target = out / "overlay" / f"{stem}.mp4"
                exports.write_overlay_video(Path(key), target, FrameLookup(index, keypoints, group_likelihood),
                                            card.links, pcutoff, progress=_every_few_seconds(f"overlay {target.name}"))
                outputs[f"overlay:{stem}"] = str(target)
            else:
                exports.write_overlay_images([Path(i) for i in ids], out / "overlay" / stem, keypoints,
                                             group_likelihood, card.links, pcutoff)
                outputs[f"overlay:{stem}"] = str(out / "overlay" / stem)
    if not joint:
        return outputs

    def images_meta():                       # streamed into the JSON file, one frame at a time
        for frame_id, number in zip(preds.ids, map(int, numbers)):       # not .tolist(): 40 B a frame
            if number < 0:
                yield {"file_name": relative(frame_id), **_frame_size(frame_id, is_video=False)}
            else:
                video = frame_id.rsplit("#", 1)[0]
                yield {"file_name": f"{Path(video).name}#{number}", "frame_index": number,
                       **_frame_size(video, is_video=True)}
    coco_path = out / "predictions" / "keypoints_coco.json"
    exports.write_coco_json(coco_path, card, images_meta(), preds.keypoints, likelihood, pcutoff)
    outputs["coco_json"] = str(coco_path)
    outputs.update(write_suggestions(preds, likelihood, out, exclude, labeled_ids, n_suggestions, relative,
                                     suggest_by))
    return outputs


def _likelihood(preds, calibration) -> np.ndarray:
    """[N, K] the likelihood every output carries (module docstring of write_outputs), computed a chunk of
    frames at a time into a file-backed array (jobs/inference.py ``spill_array``)."""
    from jobs.inference import spill_array
    from pipeline import exports

    out = spill_array(preds.uncertainty.shape, np.float64)
    for rows in exports.row_chunks(len(out)):
        out[rows] = exports.likelihood_from_uncertainty(preds.uncertainty[rows]) if calibration is None else \
            calibration.likelihood(preds.uncertainty[rows], preds.embedding[rows],
                                   None if preds.spread is None else preds.spread[rows])
    return out


def frame_groups(ids: Sequence[str]) -> tuple[dict[str, slice | list[int]], np.ndarray]:
    """(the rows of each output file, [N] each row's frame number, -1 for an image), each id parsed once.
    A group is a video's frames (key: the video) or a folder's images (key: the folder), in the order of
    ``ids``; a group whose rows are consecutive (a video's frames, in frame order) comes as a slice."""
    from jobs.inference import frame_order

    runs: dict[str, list[list[int]]] = {}        # key -> [start, stop) runs of rows
    numbers = np.empty(len(ids), np.int64)
    for n, frame_id in enumerate(ids):
        video, numbers[n] = frame_order(frame_id)
        group = runs.setdefault(video if numbers[n] >= 0 else str(Path(frame_id).parent), [])
        if group and group[-1][1] == n:
            group[-1][1] = n + 1
        else:
            group.append([n, n + 1])
    groups = {key: slice(*r[0]) if len(r) == 1 else [n for a, b in r for n in range(a, b)] for key, r in runs.items()}
    return groups, numbers


class FrameLookup:
    """frame number -> (keypoints [K, 2], likelihood [K]) of a video's rows, without a dict entry per frame
    (``exports.write_overlay_video``'s ``frame_keypoints``).  numbers [N]: each row's frame number (in frame
    order from ``predict_views``; any other order is sorted once)."""

    def __init__(self, numbers: np.ndarray, keypoints: np.ndarray, likelihood: np.ndarray):
        numbers = np.asarray(numbers)
        ascending = bool(np.all(numbers[1:] > numbers[:-1]))
        self.order = None if ascending else np.argsort(numbers, kind="stable")     # rows by frame number
        self.numbers = numbers if ascending else numbers[self.order]
        self.keypoints, self.likelihood = keypoints, likelihood

    def _row(self, number: int) -> int | None:
        n = int(np.searchsorted(self.numbers, number))
        if n >= len(self.numbers) or self.numbers[n] != number:
            return None
        return n if self.order is None else int(self.order[n])

    def __contains__(self, number) -> bool:
        return self._row(number) is not None

    def __getitem__(self, number) -> tuple[np.ndarray, np.ndarray]:
        n = self._row(number)
        if n is None:
            raise KeyError(number)
        return self.keypoints[n], self.likelihood[n]


def _lab_packages() -> bool:
    """Whether the ``lab`` extra (PyTables, pynwb, ndx-pose) is installed; says what is skipped when not."""
    import importlib.util

    missing = [m for m in ("tables", "pynwb", "ndx_pose") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"DeepLabCut .h5 and NWB outputs skipped: {', '.join(missing)} not installed "
              f"(pip install 'fskp[lab]')", flush=True)
    return not missing


def _lab_outputs(card: Card, key: str, stem: str, is_video: bool, index: list, frame_ids: list[str],
                 keypoints: np.ndarray, likelihood: np.ndarray, pred_dir: Path, scorer: str,
                 iteration: int, machine_folders: set[str], individuals, nwb_confidence: str) -> dict[str, str]:
    """The files labs load into DeepLabCut and NWB tools, beside a group's CSV (pipeline/exports.py).

    A video: ``<stem>DLC_<scorer>.h5`` (analysed-video layout, rows = frame numbers) and ``<stem>.nwb``
    (time = frame number / the video's frame rate).  ``individuals``: DeepLabCut's multi-animal columns;
    ``nwb_confidence``: what the NWB series' confidence is.  A frame folder: ``labeled-data/<folder>/
    machinelabels-iter<iteration>.h5`` for DeepLabCut's refine GUI (<folder>: the frames' folder name, as
    in a DeepLabCut project; ``-2``, ``-3`` ... appended when two frame folders share a name, recorded in
    ``machine_folders``) and ``<stem>.nwb`` (frame i of the folder at i seconds: images carry no time; each
    frame's file is in the NWB file's source_video).
    """
    from pipeline import exports

    out: dict[str, str] = {}
    if is_video:
        rate, frames = _video_timing(key)
        out[f"dlc_h5:{stem}"] = str(exports.write_dlc_video_h5(pred_dir, key, scorer, list(card.keypoints), index,
                                                               keypoints, likelihood, individuals))
        timing = {"rate": rate} if np.array_equal(index, np.arange(len(index))) else \
            {"timestamps": np.asarray(index, np.float64) / rate}
        out[f"nwb:{stem}"] = str(exports.write_nwb(
            pred_dir / f"{stem}.nwb", card, keypoints, likelihood, **timing, source=[key], source_rate=rate,
            source_frames=frames, scorer=exports.dlc_scorer(scorer), confidence_definition=nwb_confidence,
            description=f"keypoints of {Path(key).name} predicted by fskp ({card.name})"))
    else:
        folder, n = Path(key).name, 1
        while folder in machine_folders:
            n += 1
            folder = f"{Path(key).name}-{n}"
        machine_folders.add(folder)
        images = [f"labeled-data/{folder}/{Path(f).name}" for f in frame_ids]
        out[f"dlc_machinelabels:{stem}"] = str(exports.write_dlc_machinelabels(
            pred_dir, iteration, scorer, list(card.keypoints), images, keypoints, likelihood, individuals))
        out[f"nwb:{stem}"] = str(exports.write_nwb(
            pred_dir / f"{stem}.nwb", card, keypoints, likelihood, rate=1.0, source=frame_ids,
            scorer=exports.dlc_scorer(scorer), confidence_definition=nwb_confidence,
            description=f"keypoints of the images in {Path(key).name} predicted by fskp ({card.name}); frame i "
                        f"(source_video's file i) at i seconds, since images carry no time"))
    return out


def _likelihood_picture(card: Card, video: str, path: Path, frame_numbers, likelihood, pcutoff: float) -> str:
    """``path``: the video's likelihood over time (pipeline/draw.py ``likelihood_strip``), written atomically."""
    from PIL import Image

    from pipeline.atomic import atomic_path
    from pipeline.draw import likelihood_strip

    fps = _video_rate(video)                             # its rate only: no frame count needed here
    with atomic_path(path) as tmp:
        Image.fromarray(likelihood_strip(card.keypoints, likelihood, np.asarray(frame_numbers), fps, pcutoff,
                                         Path(video).name)).save(tmp, format="PNG")
    return str(path)


def _video_rate(video: str) -> float:
    """Frames per second of a video (30 when the container does not say)."""
    import av

    with av.open(video) as c:
        s = c.streams.video[0]
        return float(s.average_rate or s.guessed_rate or 30)


def _video_timing(video: str) -> tuple[float, int]:
    """(frames per second, number of frames) of a video (30 fps when the container does not say)."""
    from pipeline.pool import video_length

    return _video_rate(video), video_length(video)


def _every_few_seconds(what: str, seconds: float = 10.0):
    """A progress(done, total) callback that prints at most every ``seconds`` (and at the end)."""
    import time

    last = [time.time()]

    def report(done: int, total: int | None) -> None:
        if time.time() - last[0] >= seconds or done == total:
            last[0] = time.time()
            print(f"{what}: {done}/{total or '?'} frames", flush=True)
    return report


_SIZES: dict[str, dict] = {}


def _frame_size(source: str, is_video: bool) -> dict:
    """{"width", "height"} of an image file or of a video's frames (cached per file)."""
    if source not in _SIZES:
        if is_video:
            import av

            with av.open(source) as c:
                s = c.streams.video[0]
                _SIZES[source] = {"width": int(s.width), "height": int(s.height)}
        else:
            from PIL import Image

            try:
                with Image.open(source) as im:
                    _SIZES[source] = {"width": im.width, "height": im.height}
            except OSError:
                _SIZES[source] = {"width": 0, "height": 0}
    return _SIZES[source]


def write_suggestions(preds, likelihood: np.ndarray, out: Path, exclude: set[str], labeled_ids: Sequence[str],
                      n: int, relative, rule: str = "coverage") -> dict[str, str]:
    """suggestions.csv (ranked frames to label next) and suggestions.png (a contact sheet of them).
    likelihood [N, K]: the likelihood the outputs carry, for the frames of ``preds``."""
    from jobs.inference import spill_array
    from pipeline.exports import row_chunks
    from pipeline.frame_ids import select_ids
    from pipeline.suggest import suggest_frames, suggestion_sheet
    from pipeline.suggest import write_suggestions as write_csv

    if n <= 0:
        return {}
    uncertainty = spill_array(likelihood.shape, np.float32)      # file-backed, a chunk of rows at a time
    for chunk in row_chunks(len(uncertainty)):
        uncertainty[chunk] = 1.0 - likelihood[chunk]
    readable = bool(preds.ok.all())             # a long video's arrays are passed as they are, not copied
    rows = slice(None) if readable else np.flatnonzero(preds.ok)
    ok = preds.ids if readable else select_ids(preds.ids, rows)
    labeled = set(labeled_ids)
    lab = [i for i, frame_id in enumerate(preds.ids) if frame_id in labeled] if labeled else []
    picks = suggest_frames(ok, uncertainty[rows], preds.embedding[rows], preds.embedding[lab].astype(np.float32),
                           n=n, exclude=set(exclude), rule=rule)
    if not picks:
        return {}
    write_csv(out / "suggestions.csv", picks, {p.id: relative(p.id) for p in picks})
    sheet = suggestion_sheet(_thumbnails([p.id for p in picks]), picks)
    from PIL import Image

    Image.fromarray(sheet).save(out / "suggestions.png")
    return {"suggestions_csv": str(out / "suggestions.csv"), "suggestions_png": str(out / "suggestions.png")}


def _thumbnails(frame_ids: Sequence[str], size: int = 160) -> list[np.ndarray]:
    """Each frame (an image file or ``<video>#<i>``) fitted into a size x size tile; a video's frames reached by
    seeking (``pipeline.pool.read_frames``)."""
    from PIL import Image

    from jobs.inference import frame_order
    from pipeline.converters._common import enclosing_square
    from pipeline.pool import read_frames
    from pipeline.prepared import crop_resize

    def tile(image: np.ndarray) -> np.ndarray:
        return crop_resize(image, enclosing_square(image.shape[1], image.shape[0]), size)

    tiles: dict[str, np.ndarray] = {}
    wanted: dict[str, set[int]] = {}
    for f in frame_ids:
        video, number = frame_order(f)
        if number >= 0:
            wanted.setdefault(video, set()).add(number)
        else:
            with Image.open(f) as im:
                tiles[f] = tile(np.asarray(im.convert("RGB")))
    for video, numbers in wanted.items():
        for i, rgb in read_frames(video, numbers):
            tiles[f"{video}#{i}"] = tile(rgb)
    return [tiles[f] for f in frame_ids]
