"""Multi-animal DeepLabCut projects whose individuals are identities (``identity: true``): each individual's
body parts are keypoints of their own (``<individual>_<bodypart>``), the skeleton is repeated per individual,
and the outputs are written back in DeepLabCut's multi-animal layout (an ``individuals`` header row and
column level), which pandas reads as DeepLabCut does.  Without identities the project is refused, naming
config.yaml and saying what to do."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.converter_fixtures import write_mp4

pytestmark = pytest.mark.timeout(600)

INDIVIDUALS, PARTS, UNIQUE = ["m1", "m2"], ["nose", "head", "tail"], ["lever"]
W, H, N_FRAMES = 96, 80, 12
LABELED = [0, 2, 4, 6, 8, 10]
KEYPOINTS = [f"{i}_{p}" for i in INDIVIDUALS for p in PARTS] + UNIQUE


def scene(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame n: a red mouse (m1) walking right above a green one (m2) walking left, and a fixed lever;
    keypoints [7, 2] in KEYPOINTS order, pixel centres at +0.5."""
    from PIL import Image, ImageDraw

    t = n / (N_FRAMES - 1)
    m1 = np.array([20 + 40 * t, 22.0])
    m2 = np.array([76 - 40 * t, 56.0])
    kp = np.stack([m1 + (8, 0), m1, m1 - (14, 0), m2 - (8, 0), m2, m2 + (14, 0), (48.0, 74.0)])
    im = Image.new("RGB", (W, H), (20, 25, 30))
    d = ImageDraw.Draw(im)
    for a, colour in ((0, (230, 90, 80)), (3, (90, 220, 110))):
        d.line([tuple(kp[a]), tuple(kp[a + 2])], fill=colour, width=5)
        d.ellipse([kp[a + 1][0] - 5, kp[a + 1][1] - 4, kp[a + 1][0] + 5, kp[a + 1][1] + 4], fill=colour)
    d.rectangle([44, 71, 52, 77], fill=(200, 200, 60))
    return np.asarray(im), kp


def make_project(root: Path, config: dict | None = None, video: bool = False) -> Path:
    """A maDLC project as DeepLabCut 2.2+ writes it: config with individuals / multianimalbodyparts /
    uniquebodyparts, a CollectedData CSV with four header rows and three index columns; m2 is not in
    frame 4 (its cells empty, as DeepLabCut leaves them)."""
    from PIL import Image

    folder = root / "labeled-data" / "mice"
    folder.mkdir(parents=True)
    frames = [scene(n) for n in range(N_FRAMES)]
    if video:
        write_mp4(root / "videos" / "mice.mp4", [f for f, _ in frames])
    owners = [(i, p) for i in INDIVIDUALS for p in PARTS] + [("single", p) for p in UNIQUE]
    rows = [["scorer", "", ""] + ["Ann"] * 2 * len(owners),
            ["individuals", "", ""] + [i for i, _ in owners for _ in "xy"],
            ["bodyparts", "", ""] + [p for _, p in owners for _ in "xy"],
            ["coords", "", ""] + ["x", "y"] * len(owners)]
    for n in LABELED:
        Image.fromarray(frames[n][0]).save(folder / f"img{n:03d}.png")
        cells = []
        for k, (individual, _) in enumerate(owners):
            cells += ["", ""] if (n == 4 and individual == "m2") else [f"{v - 0.5:.2f}" for v in frames[n][1][k]]
        rows.append(["labeled-data", "mice", f"img{n:03d}.png"] + cells)
    with open(folder / "CollectedData_Ann.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    cfg = {"Task": "Mice", "scorer": "Ann", "date": "Dec4", "multianimalproject": True, "identity": True,
           "individuals": INDIVIDUALS, "multianimalbodyparts": PARTS, "uniquebodyparts": UNIQUE,
           "bodyparts": "MULTI!", "skeleton": [["nose", "head"], ["head", "tail"]], "pcutoff": 0.5}
    cfg.update(config or {})
    cfg = {k: v for k, v in cfg.items() if v is not None}        # None: leave the key out
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


# ---- reading -----------------------------------------------------------------------------------------
def test_individuals_are_keypoints_and_the_skeleton_is_repeated_per_individual(tmp_path):
    from jobs.labeling.inputs import read_dlc_project

    inp = read_dlc_project(make_project(tmp_path / "mice"))
    assert list(inp.card.keypoints) == KEYPOINTS
    assert sorted(inp.card.links) == [(0, 1), (1, 2), (3, 4), (4, 5)]
    assert inp.individuals == [(i, p) for i in INDIVIDUALS for p in PARTS] + [("single", "lever")]
    assert len(inp.labeled) == len(LABELED) and len(inp.unlabeled) == 0
    for inst in inp.labeled:
        n = int(Path(inst.source).stem[3:])
        truth = scene(n)[1]
        hidden = np.zeros(len(KEYPOINTS), bool) if n != 4 else np.array([False] * 3 + [True] * 3 + [False])
        assert inst.visible.tolist() == (~hidden).tolist()
        np.testing.assert_allclose(inst.keypoints[~hidden], truth[~hidden], atol=0.01)


def test_links_option_names_the_flattened_keypoints(tmp_path):
    from jobs.labeling.inputs import read_dlc_project

    inp = read_dlc_project(make_project(tmp_path / "mice"), links="m1_nose-m1_tail,m2_head-lever")
    assert sorted(inp.card.links) == [(0, 2), (4, 6)]


@pytest.mark.parametrize("identity", [False, None])
def test_individuals_that_are_not_identities_are_refused_saying_what_to_do(tmp_path, identity):
    from pipeline.converters import dlc
    from pipeline.prepared import DataError

    project = make_project(tmp_path / "mice", config={"identity": identity})
    with pytest.raises(DataError, match=r"config.yaml.*identity.*not supported yet.*identity: true.*Planned.*"
                                        r"single-animal"):
        dlc.read_config(project)


@pytest.mark.parametrize("config, message", [
    ({"individuals": ["m1", "single"]}, r"individuals.*'single' is DeepLabCut's name"),
    ({"individuals": ["m1", "m1"]}, r"individuals.*duplicate"),
    ({"multianimalbodyparts": []}, r"multianimalbodyparts.*non-empty list"),
    ({"uniquebodyparts": ["m1_nose"]}, r"\['m1_nose'\] come out twice"),
    ({"skeleton": [["nose", "paw"]]}, r"skeleton\[0\].*two body parts from"),
])
def test_bad_multi_animal_configs_name_the_key(tmp_path, config, message):
    from pipeline.converters import dlc
    from pipeline.prepared import DataError

    project = make_project(tmp_path / "mice", config=config)
    with pytest.raises(DataError, match=r"config.yaml.*" + message):
        dlc.card_for(project)


def test_an_individuals_row_of_the_wrong_width_names_the_line(tmp_path):
    from pipeline.converters import dlc
    from pipeline.prepared import DataError

    bad = tmp_path / "CollectedData_me.csv"
    bad.write_text("scorer,me,me,me,me\nindividuals,m1,m1,m2\nbodyparts,nose,nose,nose,nose\n"
                   "coords,x,y,x,y\nimg0.png,1,2,3,4\n")
    with pytest.raises(DataError, match=r"CollectedData_me.csv, row 2: individuals row has 4 columns, coords row 5"):
        dlc.read_csv(bad)


# ---- writing -----------------------------------------------------------------------------------------
def predictions(n: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    kp = rng.uniform(5, 90, (n, len(KEYPOINTS), 2))
    kp[1, 3:6] = np.nan                                             # m2 not found in frame 1
    return kp, rng.uniform(0.1, 1.0, (n, len(KEYPOINTS)))


OWNERS = [(i, p) for i in INDIVIDUALS for p in PARTS] + [("single", "lever")]


def test_csv_is_deeplabcuts_multi_animal_layout_and_reads_back(tmp_path):
    import pandas as pd

    from pipeline import exports
    from pipeline.converters import dlc

    kp, lk = predictions()
    images = [f"labeled-data/mice/img{n:03d}.png" for n in range(3)]
    for n in range(3):
        (tmp_path / "labeled-data" / "mice").mkdir(parents=True, exist_ok=True)
        (tmp_path / images[n]).write_bytes(b"")
    path = exports.write_dlc_csv(tmp_path / "m.csv", "fskp_Ann", KEYPOINTS, images, kp, lk, OWNERS)
    df = pd.read_csv(path, header=[0, 1, 2, 3], index_col=0)          # how DeepLabCut reads a maDLC CSV
    assert df.columns.names == ["scorer", "individuals", "bodyparts", "coords"]
    assert df[("fskp_Ann", "m2", "tail", "x")].iloc[0] == pytest.approx(kp[0, 5, 0] - 0.5)
    assert df[("fskp_Ann", "single", "lever", "likelihood")].tolist() == pytest.approx(lk[:, 6].tolist())
    assert np.isnan(df[("fskp_Ann", "m2", "nose", "y")].iloc[1])
    frames = dlc.read_label_file(path, tmp_path, tuple(KEYPOINTS), pcutoff=0.0)   # and fskp reads it back
    np.testing.assert_allclose(frames[0].keypoints, kp[0], atol=1e-9)
    assert frames[1].visible.tolist() == [True] * 3 + [False] * 3 + [True]


def test_h5_files_carry_the_individuals_level(tmp_path):
    import pandas as pd

    from pipeline import exports

    kp, lk = predictions()
    video_h5 = exports.write_dlc_video_h5(tmp_path, "mice.mp4", "fskp_Ann", KEYPOINTS, [0, 1, 2], kp, lk, OWNERS)
    images = [f"labeled-data/mice/img{n:03d}.png" for n in range(3)]
    machine = exports.write_dlc_machinelabels(tmp_path, 0, "fskp_Ann", KEYPOINTS, images, kp, lk, OWNERS)
    for path in (video_h5, machine):
        df = pd.read_hdf(path, "df_with_missing")
        assert df.columns.names == ["scorer", "individuals", "bodyparts", "coords"]
        assert list(df.columns.get_level_values("individuals").unique()) == ["m1", "m2", "single"]
        assert df[("DLC_fskp_Ann", "m1", "head", "y")].iloc[2] == pytest.approx(kp[2, 1, 1] - 0.5)
    with pytest.raises(ValueError, match="distinct"):
        exports.write_dlc_csv(tmp_path / "x.csv", "s", KEYPOINTS, images, kp, lk, OWNERS[:-1] + [OWNERS[0]])


# ---- end to end --------------------------------------------------------------------------------------
def test_label_trains_a_multi_animal_project_and_writes_its_layout(tmp_path, capsys):
    import pandas as pd
    import ray

    from jobs.cli import main

    project = make_project(tmp_path / "mice", video=True)
    out = tmp_path / "out"
    ray.init(include_dashboard=False, logging_level="ERROR")
    try:
        code = main(["label", "--project", str(project), "--out", str(out), "--tracking-uri",
                     f"sqlite:///{tmp_path}/mlflow.db", "--iterations", "4", "--size", "64", "--backbone",
                     "resnet18", "--perceptual-vit", "vit_tiny_patch16_224", "--unlabeled-batch", "2",
                     "--checkpoint-every", "4", "--log-every", "2", "--suggestions", "0", "--no-overlay",
                     "--shots", "4"])
    finally:
        ray.shutdown()
    printed = capsys.readouterr()
    assert code == 0, printed.err[-3000:]
    summary = json.loads((out / "label.json").read_text())
    assert summary["keypoints"] == KEYPOINTS
    assert ["m2_head", "m2_tail"] in summary["links"]
    predictions_dir = out / "predictions"
    video = pd.read_hdf(predictions_dir / "miceDLC_fskp_Ann.h5", "df_with_missing")
    assert video.columns.names == ["scorer", "individuals", "bodyparts", "coords"] and len(video) == N_FRAMES
    machine = pd.read_hdf(predictions_dir / "labeled-data" / "mice" / "machinelabels-iter0.h5", "df_with_missing")
    assert list(machine.columns.get_level_values("individuals").unique()) == ["m1", "m2", "single"]
    table = pd.read_csv(predictions_dir / "mice.csv", header=[0, 1, 2, 3], index_col=0)
    assert table.shape == (N_FRAMES, 3 * len(KEYPOINTS))

    # fskp predict with the run's checkpoint writes the same layout
    ray.init(include_dashboard=False, logging_level="ERROR")
    try:
        assert main(["predict", "--checkpoint", summary["checkpoint"], "--video", str(project / "videos" / "mice.mp4"),
                     "--out", str(tmp_path / "pred"), "--no-overlay", "--suggestions", "0"]) == 0
    finally:
        ray.shutdown()
    again = pd.read_csv(tmp_path / "pred" / "predictions" / "mice.csv", header=[0, 1, 2, 3], index_col=0)
    assert [c[1:] for c in again.columns] == [c[1:] for c in table.columns]     # scorer: fskp's own
