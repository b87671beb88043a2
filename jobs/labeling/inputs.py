"""What `fskp label` reads: a DeepLabCut project, images or a video with COCO/DeepLabCut labels, a SLEAP
project; every labeled frame an ``Instance`` in source pixels.  Links derived when the labels have none.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.card import Card
from pipeline.converters import coco, dlc
from pipeline.converters.dlc import DEFAULT_PCUTOFF   # DeepLabCut's default pcutoff (0.6)
from pipeline.prepared import DataError, Instance


@dataclass
class LabelingInput:
    """What `fskp label` works from; keypoints in source pixels, pixel centres at +0.5."""

    card: Card
    labeled: list[Instance]                 # split "train"; source = image file
    unlabeled: list[Path] = field(default_factory=list)    # image files without labels
    videos: list[Path] = field(default_factory=list)       # videos: the larger unlabeled pool
    root: Path | None = None                # paths in the DeepLabCut CSV are written relative to this
    scorer: str = "fskp"
    pcutoff: float = DEFAULT_PCUTOFF
    iteration: int = 0                      # a DeepLabCut project's refinement iteration (machinelabels-iter<N>)
    individuals: list[tuple[str, str]] | None = None   # multi-animal: (individual, body part) of each keypoint

    def relative(self, path: str | Path) -> str:
        p = Path(path)
        if self.root is not None:
            try:
                return p.resolve().relative_to(self.root.resolve()).as_posix()
            except ValueError:
                pass
        return p.as_posix()


# ---- reading the inputs ------------------------------------------------------------------------------
def read_dlc_project(project: str | Path, links: str | None = None) -> LabelingInput:
    """A DeepLabCut project: its labeled frames, its other extracted frames, and its videos
    (config.yaml's video_sets, else videos/ -- see pipeline.converters.dlc.pool_videos).

    links: ``--links a-b,b-c`` (names or 0-based indices), used instead of config.yaml's skeleton.  With
    neither, ``label`` derives links from the training frames' labels (``derive_links``)."""
    project = Path(project)
    cfg = dlc.read_config(project)
    card = dlc.card_for(project, links=parse_links(cfg["bodyparts"], links) if links else None)
    frames = [f for path in dlc.label_files(project, cfg.get("scorer"))
              for f in dlc.read_label_file(path, project, card.keypoints)]
    if not frames:
        raise DataError(project / "labeled-data", None, "no labeled frame in the project's CollectedData files")
    labeled = [Instance(id=f.id, split="train", source=str(f.image), keypoints=f.keypoints, visible=f.visible,
                        origin=(str(f.csv), f.line)) for f in frames]
    return LabelingInput(card=card, labeled=labeled, unlabeled=dlc.unlabeled_frames(project, frames),
                         videos=dlc.pool_videos(project), root=project, scorer=str(cfg.get("scorer") or "fskp"),
                         pcutoff=dlc.pcutoff_of(project, cfg), iteration=dlc.iteration_of(project, cfg),
                         individuals=dlc.keypoint_columns(cfg))


def parse_links(names: Sequence[str], links: str | None) -> list[tuple[int, int]]:
    """``--links a-b,b-c`` (keypoint names or 0-based indices) -> distinct sorted index pairs."""
    names = list(names)
    pairs = []
    for item in filter(None, (links or "").split(",")):
        ends = item.strip().split("-")
        if len(ends) != 2:
            raise ValueError(f"--links: expected pairs like a-b, got {item!r}")
        idx = [names.index(e) if e in names else int(e) if e.isdigit() and int(e) < len(names) else None
               for e in ends]
        if None in idx:
            raise ValueError(f"--links: {item!r} names a keypoint not in {names}")
        if idx[0] != idx[1]:
            pairs.append(tuple(sorted(idx)))
    return list(dict.fromkeys(pairs))


def card_from_options(names: Sequence[str], links: str | None, origin: str) -> Card:
    """A card from keypoint names and ``--links a-b,b-c`` (names or 0-based indices)."""
    from pipeline.converters.coco import card_from_keypoints

    return card_from_keypoints(re.sub(r"[^a-z0-9]+", "-", Path(origin).stem.lower()).strip("-") or "labels",
                               f"keypoints of {Path(origin).name}", list(names), parse_links(names, links),
                               origin=origin)


# ---- links when the labels come without a skeleton ---------------------------------------------------
def derive_links(keypoints: np.ndarray, visible: np.ndarray) -> list[tuple[int, int]]:
    """Links for keypoints that come without a skeleton: the minimum spanning tree of the keypoints
    under their mean pairwise distance in the labeled frames.

    keypoints [N, K, 2] (any pixels), visible [N, K].  The distance of a pair is its mean over the frames
    that label both; a pair never labeled in the same frame gets the distance of the two keypoints' mean
    positions, so every keypoint labeled at least once is linked into one tree.  Keypoints never labeled
    get no link.  Returns sorted index pairs, in order; [] when fewer than two keypoints are labeled.
    """
    from scipy.sparse.csgraph import minimum_spanning_tree

    kp, vis = np.asarray(keypoints, np.float64), np.asarray(visible, bool)
    labeled = np.flatnonzero(vis.any(0))
    if len(labeled) < 2:
        return []
    both = vis[:, :, None] & vis[:, None, :]                                        # [N, K, K]
    dist = np.linalg.norm(kp[:, :, None] - kp[:, None, :], axis=-1)                 # [N, K, K]
    together = both.sum(0)
    mean = np.where(together > 0, np.where(both, dist, 0.0).sum(0) / np.maximum(together, 1), np.nan)
    centre = np.array([kp[vis[:, k], k].mean(0) if vis[:, k].any() else (np.nan, np.nan)
                       for k in range(kp.shape[1])])
    apart = np.linalg.norm(centre[:, None] - centre[None, :], axis=-1)
    weights = np.where(np.isnan(mean), apart, mean)[np.ix_(labeled, labeled)]
    # csgraph reads 0 (and tiny weights) as "no edge"; every spanning tree has the same number of edges, so
    # adding 1 px to every weight keeps the minimum tree and links keypoints labeled on the same spot
    weights = weights + 1.0
    np.fill_diagonal(weights, 0.0)
    tree = minimum_spanning_tree(weights).tocoo()
    return sorted(tuple(sorted((int(labeled[a]), int(labeled[b])))) for a, b in zip(tree.row, tree.col))


def with_links(card: Card, links: list[tuple[int, int]], note: str) -> Card:
    """``card`` with ``links`` (index pairs) as its links and ``note`` added to its notes."""
    from pipeline.card import parse_card

    raw = {**card.raw, "links": [[card.keypoints[a], card.keypoints[b]] for a, b in links],
           "notes": " ".join(filter(None, [card.raw.get("notes", ""), note]))}
    return parse_card(raw, origin=f"card {card.name}")


def check_trainable(inp: LabelingInput) -> None:
    """Refuse inputs `fskp label` cannot train on, before anything starts (ValueError / DataError)."""
    card, where = inp.card, (inp.labeled[0].origin[0] if inp.labeled else inp.root or inp.card.name)
    if card.num_keypoints < 2:
        raise DataError(where, None, f"only {card.num_keypoints} keypoint ({', '.join(card.keypoints)}): fskp "
                                     f"label needs at least two, since its edge maps draw links between keypoints")
    if not inp.labeled:
        raise DataError(where, None, "no labeled frame to train on")
    if not any(i.visible.any() for i in inp.labeled):
        raise DataError(where, None, f"none of the {len(inp.labeled)} labeled frames labels a keypoint "
                                     f"(every x / y is empty): nothing to train on")


def links_for_training(inp: LabelingInput, train: list[Instance]) -> LabelingInput:
    """``inp`` as is when its card has links; else with links derived from the training frames' labels
    (``derive_links``), printed; refused when the training frames label fewer than two keypoints."""
    if inp.card.links:
        return inp
    links = derive_links(np.stack([i.keypoints for i in train]), np.stack([i.visible for i in train]))
    if not links:
        named = sorted({inp.card.keypoints[k] for i in train for k in np.flatnonzero(i.visible)})
        raise DataError(train[0].origin[0], None,
                        f"no skeleton and the {len(train)} training frames label only {named or 'no keypoint'}: "
                        f"links cannot be derived from fewer than two labeled keypoints; pass --links a-b,...")
    names = ", ".join(f"{inp.card.keypoints[a]}-{inp.card.keypoints[b]}" for a, b in links)
    print(f"no skeleton given: links derived from the {len(train)} training frames' labels (minimum spanning "
          f"tree of mean keypoint distances): {names}; pass --links to choose them", flush=True)
    unlinked = [inp.card.keypoints[k] for k in range(inp.card.num_keypoints) if not any(k in l for l in links)]
    if unlinked:
        print(f"  not labeled in any training frame, so without a link: {', '.join(unlinked)}", flush=True)
    return replace(inp, card=with_links(inp.card, links, f"Links derived by fskp label from {len(train)} "
                                                         f"training frames (minimum spanning tree): {names}."))


def read_labels(labels: str | Path, image_dirs: list[Path], card: Card | None, links: str | None) -> tuple[Card, list[Instance]]:
    """A COCO keypoints JSON or a DeepLabCut CSV whose images are found in ``image_dirs``."""
    labels = Path(labels)
    if not labels.is_file():
        raise FileNotFoundError(f"{labels}: label file not found")
    if labels.suffix.lower() == ".json":
        if card is None:
            cats = coco.keypoint_categories(coco.load_json(labels), labels)
            if not cats:
                raise DataError(labels, "categories", "no category with keypoints; pass --card")
            skeleton = cats[0].get("skeleton") or []
            card = card_from_options(list(cats[0]["keypoints"]),
                                     ",".join(f"{a - 1}-{b - 1}" for a, b in skeleton), str(labels))
        skipped: Counter = Counter()
        found = list(coco.read_annotation_file(labels, "train", image_dirs, card, skipped, id_prefix=""))
        return card, [replace(i, id=Path(i.source).stem) for i in found]
    if labels.suffix.lower() == ".csv":
        if card is None:
            card = card_from_options(list(dlc.read_csv(labels)[0].bodyparts), links, str(labels))
        frames = dlc.read_label_file(labels, image_dirs[0], card.keypoints)
        return card, [Instance(id=f.id, split="train", source=str(f.image), keypoints=f.keypoints,
                               visible=f.visible, origin=(str(f.csv), f.line)) for f in frames]
    raise ValueError(f"{labels}: labels must be a COCO keypoints .json or a DeepLabCut .csv")


def read_images(images: str | Path, labels: str | Path, card: Card | None = None,
                links: str | None = None) -> LabelingInput:
    """A folder of images and the labels of some of them; the others are the unlabeled pool."""
    from pipeline.pool import IMAGE_SUFFIXES

    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: image folder not found")
    card, labeled = read_labels(labels, [images], card, links)
    taken = {Path(i.source).resolve() for i in labeled}
    rest = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.resolve() not in taken)
    return LabelingInput(card=card, labeled=labeled, unlabeled=rest, root=images, individuals=csv_individuals(labels))


def csv_individuals(labels: str | Path) -> list[tuple[str, str]] | None:
    """(individual, body part) of each keypoint of a multi-animal DeepLabCut CSV; None for other label files."""
    labels = Path(labels)
    if labels.suffix.lower() != ".csv":
        return None
    found = dlc.read_csv(labels)[0].individuals
    return list(found) if found else None


def frame_number(name: str, where: Path, row) -> int:
    """The frame index in a labeled frame's name: its last group of digits (DeepLabCut extracts frame i
    of a video as img<i>.png)."""
    digits = re.findall(r"\d+", Path(name).stem)
    if not digits:
        raise DataError(where, row, f"cannot tell which video frame {name!r} is (no frame number in its name)")
    return int(digits[-1])


def extract_frames(video: Path, numbers: set[int], out: Path) -> dict[int, Path]:
    """Save the frames of ``video`` whose index is in ``numbers`` as out/img<i>.png, each reached by seeking
    (``pipeline.pool.read_frames``: numbered as the pool stream numbers the video's frames)."""
    from PIL import Image

    from pipeline.pool import read_frames

    out.mkdir(parents=True, exist_ok=True)
    saved = {}
    for i, rgb in read_frames(video, numbers):
        path = out / f"img{i:06d}.png"
        Image.fromarray(rgb).save(path)
        saved[i] = path
    missing = sorted(numbers - set(saved))
    if missing:
        raise DataError(video, None, f"the labels name frames {missing[:5]} but the video has fewer frames")
    return saved


def read_video(video: str | Path, labels: str | Path, work: Path, card: Card | None = None,
               links: str | None = None) -> LabelingInput:
    """A video and labels of some of its frames, named by frame number (img0123.png = frame 123, as
    DeepLabCut extracts them; a COCO ``file_name`` likewise).  The labeled frames are saved as PNGs under
    ``work``; the whole video is the unlabeled pool."""
    video, labels = Path(video), Path(labels)
    if not video.is_file():
        raise FileNotFoundError(f"{video}: video not found")
    names = _label_image_names(labels)
    numbers = {frame_number(n, labels, row) for row, n in names}
    folder = work / "frames" / video.stem
    extract_frames(video, numbers, folder)
    card, labeled = read_labels(_renamed_labels(labels, names, folder), [folder], card, links)
    return LabelingInput(card=card, labeled=[replace(i, origin=(str(labels), i.origin[1])) for i in labeled],
                         videos=[video], root=folder, individuals=csv_individuals(labels))


def read_slp_project(slp: str | Path, work: Path, links: str | None = None) -> LabelingInput:
    """A SLEAP project (``.slp``, read with sleap-io: pipeline/converters/slp.py): its user-labeled frames, its
    skeleton (edges as links, or ``--links`` instead) and its media videos as the unlabeled pool.  Labeled
    frames of a media video are saved as PNGs under ``work`` (so they are scored like any labeled image);
    the videos are predicted whole.  One animal per frame: a frame with several user instances is refused."""
    from collections import Counter

    from PIL import Image

    from pipeline.converters import slp as slp_format

    slp = Path(slp)
    card = slp_format.card_for(slp)
    if links:
        card = with_links(card, parse_links(card.keypoints, links), f"Links given with --links: {links}")
    skipped: Counter = Counter()
    labeled = []
    for inst in slp_format.instances(slp, card, skipped):
        if inst.id.count("/") > 1:
            raise DataError(slp, inst.origin[1], "several user instances in one frame: fskp label labels one animal "
                                                 "per frame (multi-animal projects are planned, not supported yet)")
        if inst.image is not None:                          # a decoded video frame: saved as a PNG
            video, number = inst.source.rsplit("#", 1)
            path = work / "frames" / Path(video).stem / f"img{int(number):06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(inst.image).save(path)
            inst = replace(inst, source=str(path), image=None)
        labeled.append(replace(inst, crop_box=None))
    for what, n in skipped.items():
        print(f"{slp.name}: skipped {n} {what}", flush=True)
    if not labeled:
        raise DataError(slp, None, "no user-labeled frame in the project")
    return LabelingInput(card=card, labeled=labeled, videos=slp_format.pool_videos(slp), root=slp.parent,
                         scorer="sleap")


def _label_image_names(labels: Path) -> list[tuple[object, str]]:
    """(row, image name) of every labeled frame of a COCO JSON or DeepLabCut CSV."""
    if labels.suffix.lower() == ".json":
        return [(f"images[{i}]", im.get("file_name", "")) for i, im in enumerate(coco.load_json(labels).get("images") or [])]
    head, rows = dlc.read_csv(labels)
    return [(line, "/".join(r[:head.n_index])) for line, r in rows]


def _renamed_labels(labels: Path, names: list[tuple[object, str]], folder: Path) -> Path:
    """A copy of the label file whose image names point at the extracted frames (folder/img<i>.png)."""
    import csv

    target = folder / ("labels" + labels.suffix.lower())
    if labels.suffix.lower() == ".json":
        data = coco.load_json(labels)
        for row, im in zip(names, data.get("images") or []):
            im["file_name"] = f"img{frame_number(im.get('file_name', ''), labels, row[0]):06d}.png"
        target.write_text(json.dumps(data))
        return target
    head, rows = dlc.read_csv(labels)
    out = [list(h[:1] + h[head.n_index:]) for h in head.rows]
    for line, r in rows:
        out.append([f"img{frame_number('/'.join(r[:head.n_index]), labels, line):06d}.png"] + r[head.n_index:])
    with open(target, "w", newline="") as f:
        csv.writer(f).writerows(out)
    return target


