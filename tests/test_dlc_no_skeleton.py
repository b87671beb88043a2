"""DeepLabCut projects as labs have them: no skeleton (``skeleton: []`` or no key), and inputs that cannot train.

Without a skeleton `fskp label` derives the links from the training frames' labels (the minimum spanning tree
of the mean pairwise keypoint distances) and says which; `--links` replaces a project's skeleton; a project
with one body part or without a single labeled keypoint is refused before Ray starts, naming the file.
"""
from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.converter_fixtures import write_mp4

pytestmark = pytest.mark.timeout(600)

PARTS = ["nose", "head", "body", "tail"]
W, H, N_FRAMES = 96, 80, 16
LABELED = [0, 3, 6, 9, 12, 15]


def animal(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame i (an animal walking right) and its keypoints [4, 2], pixel centres at +0.5."""
    from PIL import Image, ImageDraw

    t = i / (N_FRAMES - 1)
    head = np.array([30 + 40 * t, 35 + 10 * np.sin(4 * t)])
    kp = np.stack([head + (7, 1), head, head - (12, -2), head - (26, -6)])
    im = Image.new("RGB", (W, H), (20, 25, 30))
    d = ImageDraw.Draw(im)
    d.line([tuple(p) for p in kp[1:]], fill=(200, 180, 160), width=5)
    d.ellipse([kp[1][0] - 5, kp[1][1] - 4, kp[1][0] + 5, kp[1][1] + 4], fill=(230, 210, 190))
    d.ellipse([kp[0][0] - 2, kp[0][1] - 2, kp[0][0] + 2, kp[0][1] + 2], fill=(255, 120, 120))
    return np.asarray(im), kp


def make_project(root: Path, parts: list[str] = PARTS, config: dict | None = None, empty: bool = False,
                 video: bool = False) -> Path:
    """A DeepLabCut project (layout and CSV as DeepLabCut writes them) labeling ``parts`` in LABELED frames;
    the tail is not labeled in frame 3 (as DeepLabCut leaves cells empty)."""
    from PIL import Image

    folder = root / "labeled-data" / "walk"
    folder.mkdir(parents=True)
    frames = [animal(i) for i in range(N_FRAMES)]
    if video:
        write_mp4(root / "videos" / "walk.mp4", [f for f, _ in frames])
    index = [PARTS.index(p) for p in parts]
    rows = [["scorer"] + ["Ann"] * 2 * len(parts), ["bodyparts"] + [p for p in parts for _ in "xy"],
            ["coords"] + ["x", "y"] * len(parts)]
    for i in LABELED:
        Image.fromarray(frames[i][0]).save(folder / f"img{i:03d}.png")
        cells = []
        for k in index:
            hidden = empty or (i == 3 and PARTS[k] == "tail")
            cells += ["", ""] if hidden else [f"{v - 0.5:.2f}" for v in frames[i][1][k]]
        rows.append([f"labeled-data/walk/img{i:03d}.png"] + cells)
    with open(folder / "CollectedData_Ann.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    cfg = {"Task": "Walk", "scorer": "Ann", "date": "Dec1", "bodyparts": parts, "skeleton": [], "pcutoff": 0.5}
    cfg.update(config or {})
    cfg = {k: v for k, v in cfg.items() if v is not None}        # None: leave the key out
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


# ---- the derived links -------------------------------------------------------------------------------
def brute_force_tree(weights: np.ndarray) -> set[tuple[int, int]]:
    """The lightest spanning tree by trying every set of K - 1 edges."""
    k = len(weights)
    edges = list(itertools.combinations(range(k), 2))
    best, tree = np.inf, None
    for chosen in itertools.combinations(edges, k - 1):
        parent = list(range(k))

        def root(i):
            while parent[i] != i:
                i = parent[i]
            return i
        spanning = True
        for a, b in chosen:
            ra, rb = root(a), root(b)
            spanning &= ra != rb
            parent[ra] = rb
        cost = sum(weights[a, b] for a, b in chosen)
        if spanning and cost < best:
            best, tree = cost, set(chosen)
    return tree


def test_derived_links_are_the_minimum_spanning_tree_of_mean_distances():
    from jobs.labeling.inputs import derive_links

    rng = np.random.default_rng(0)
    for trial in range(20):
        base = rng.uniform(0, 100, (5, 2))
        kp = base + rng.normal(0, 3, (6, 5, 2))                          # 6 frames, 5 keypoints
        visible = rng.random((6, 5)) > 0.2
        visible[0] = True                                                # every pair labeled together once
        both = visible[:, :, None] & visible[:, None, :]
        dist = np.linalg.norm(kp[:, :, None] - kp[:, None, :], axis=-1)
        mean = (dist * both).sum(0) / both.sum(0)
        assert set(derive_links(kp, visible)) == brute_force_tree(mean), f"trial {trial}"


def test_pairs_never_labeled_together_and_keypoints_never_labeled():
    from jobs.labeling.inputs import derive_links

    kp = np.array([[[0, 0], [10, 0], [0, 0], [0, 0]],
                   [[0, 0], [0, 0], [30, 0], [0, 0]]], float)
    visible = np.array([[True, True, False, False],
                        [True, False, True, False]])
    # 0-1: 10 apart, 0-2: 30 apart; 1 and 2 are never labeled together, so their mean positions (10, 0) and
    # (30, 0) give 20.  The tree: 0-1 and 1-2 (30 in all, against 40 for 0-1 and 0-2); 3 is never labeled.
    assert derive_links(kp, visible) == [(0, 1), (1, 2)]
    assert derive_links(kp[:, :1], visible[:, :1]) == []
    assert derive_links(kp, np.zeros_like(visible)) == []
    same = np.zeros((1, 3, 2))                                           # three keypoints on one spot
    assert len(derive_links(same, np.ones((1, 3), bool))) == 2


# ---- reading projects without a skeleton ---------------------------------------------------------------
@pytest.mark.parametrize("skeleton", [[], None], ids=["empty-skeleton", "no-skeleton-key"])
def test_project_without_skeleton_reads_and_derives_its_links(tmp_path, capsys, skeleton):
    from jobs.labeling.inputs import links_for_training, read_dlc_project

    project = make_project(tmp_path / "walk", config={"skeleton": skeleton})
    inp = read_dlc_project(project)
    assert inp.card.keypoints == tuple(PARTS) and inp.card.links == ()
    trained = links_for_training(inp, inp.labeled)
    assert trained.card.links == ((0, 1), (1, 2), (2, 3))                  # the chain nose-head-body-tail
    printed = capsys.readouterr().out
    assert "nose-head, head-body, body-tail" in printed and "--links" in printed
    assert trained.card.fingerprint != inp.card.fingerprint


def test_links_option_replaces_the_projects_skeleton(tmp_path):
    from jobs.labeling.inputs import links_for_training, read_dlc_project

    project = make_project(tmp_path / "walk", config={"skeleton": [["nose", "head"], ["head", "body"]],
                                                       "iteration": 3})
    assert read_dlc_project(project).card.links == ((0, 1), (1, 2))
    inp = read_dlc_project(project, links="nose-tail,head-body")
    assert inp.card.links == ((0, 3), (1, 2)) and inp.iteration == 3
    assert links_for_training(inp, inp.labeled) is inp                     # given links are kept
    with pytest.raises(ValueError, match="'nose-paw' names a keypoint not in"):
        read_dlc_project(project, links="nose-paw")


# ---- refused before Ray starts -----------------------------------------------------------------------
def test_one_body_part_is_refused_before_ray_starts(tmp_path, capsys):
    import ray

    from jobs.cli import main

    project = make_project(tmp_path / "walk", parts=["nose"])
    assert main(["label", "--project", str(project), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "CollectedData_Ann.csv" in err and "only 1 keypoint (nose)" in err and "at least two" in err
    assert not ray.is_initialized()


def test_project_without_a_labeled_keypoint_is_refused_before_ray_starts(tmp_path, capsys):
    import ray

    from jobs.cli import main

    project = make_project(tmp_path / "walk", empty=True)
    assert main(["label", "--project", str(project), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "CollectedData_Ann.csv" in err and f"none of the {len(LABELED)} labeled frames labels a keypoint" in err
    assert not ray.is_initialized()


def test_training_frames_with_one_labeled_keypoint_cannot_give_links(tmp_path):
    from dataclasses import replace

    from jobs.labeling.inputs import links_for_training, read_dlc_project
    from pipeline.prepared import DataError

    inp = read_dlc_project(make_project(tmp_path / "walk"))
    only_nose = [replace(i, visible=np.array([True, False, False, False])) for i in inp.labeled]
    with pytest.raises(DataError, match=r"label only \['nose'\].*pass --links"):
        links_for_training(inp, only_nose)


# ---- end to end --------------------------------------------------------------------------------------
TINY = ["--iterations", "4", "--size", "64", "--backbone", "resnet18", "--perceptual-vit", "vit_tiny_patch16_224",
        "--unlabeled-batch", "2", "--checkpoint-every", "4", "--log-every", "2", "--suggestions", "0", "--no-overlay"]


def test_label_trains_a_project_without_skeleton(tmp_path, capsys):
    import ray
    import torch

    from jobs.cli import main

    project = make_project(tmp_path / "walk", config={"skeleton": None}, video=True)
    out = tmp_path / "out"
    ray.init(include_dashboard=False, logging_level="ERROR")        # this machine's real CPU count, as a user's Ray
    try:
        code = main(["label", "--project", str(project), "--out", str(out),
                     "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", *TINY])
    finally:
        ray.shutdown()
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    assert "links derived from the 6 training frames' labels" in printed.out
    summary = json.loads((out / "label.json").read_text())
    assert summary["links"] == [["nose", "head"], ["head", "body"], ["body", "tail"]]
    state = torch.load(Path(summary["checkpoint"]) / "model.pt", map_location="cpu", weights_only=True)
    assert [tuple(link) for link in state["config"]["links"]] == [(0, 1), (1, 2), (2, 3)]
    predictions = out / "predictions"                 # beside the CSVs: DeepLabCut's .h5 files and NWB files
    for name in ("walk.csv", "walkDLC_fskp_Ann.h5", "walk.nwb", "labeled-data_walk.csv", "labeled-data_walk.nwb",
                 "labeled-data/walk/machinelabels-iter0.h5"):
        assert (predictions / name).is_file(), name
