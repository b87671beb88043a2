"""Shot selection (pipeline/select.py, `fskp select`) on a tiny prepared dataset with three clear clusters."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from jobs.cli import main
from pipeline import select
from pipeline.card import load_card
from pipeline.prepared import Instance, PreparedDataset, write_prepared
from pipeline.select import ShotSelection, resolve_shots, select_shots

BACKBONE = "resnet18"        # small and fast; its third-from-last feature level is layer2
SIZE = 32
PER_CLUSTER = 6
CLUSTERS = ("red", "stripes", "checker")

CARD = """\
name: tiny
title: Tiny test card
keypoints: [left, right, top]
links: [[left, right], [right, top]]
metric: {kind: pck, normalize: bbox_max_side, alpha: 0.1}
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Never try the network from tests (the selection then falls back to random initialisation)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _image(cluster: str, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if cluster == "red":
        base = np.broadcast_to(np.array([200, 30, 30]), (SIZE, SIZE, 3))
    elif cluster == "stripes":
        on = (yy // 4) % 2 == 0
        base = np.where(on[..., None], np.array([20, 220, 20]), np.array([0, 0, 0]))
    else:
        on = ((yy // 4) + (xx // 4)) % 2 == 0
        base = np.where(on[..., None], np.array([30, 30, 230]), np.array([255, 255, 255]))
    return np.clip(base + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


def _instances(rng: np.random.Generator):
    kp = np.array([[6.0, 16.0], [26.0, 16.0], [16.0, 5.0]])
    for i in range(PER_CLUSTER):            # interleaved, so stored order says nothing about the cluster
        for cluster in CLUSTERS:
            yield Instance(id=f"{cluster}-{i}", split="train", source=f"mem://{cluster}/{i}",
                           keypoints=kp + rng.normal(0, 1, kp.shape), visible=np.ones(3, bool),
                           origin=("synthetic", f"{cluster}-{i}"), image=_image(cluster, rng),
                           crop_box=(0.0, 0.0, float(SIZE), float(SIZE)))
    # a train row without keypoints (never a candidate) and a test row (another split)
    yield Instance(id="unlabelled-0", split="train", source="mem://u", keypoints=None, visible=None,
                   origin=("synthetic", "u"), image=_image("red", rng), crop_box=(0.0, 0.0, float(SIZE), float(SIZE)))
    yield Instance(id="test-0", split="test", source="mem://t", keypoints=kp, visible=np.ones(3, bool),
                   origin=("synthetic", "t"), image=_image("stripes", rng), crop_box=(0.0, 0.0, float(SIZE), float(SIZE)))


@pytest.fixture
def data_dir(tmp_path):
    card_path = tmp_path / "tiny.yaml"
    card_path.write_text(CARD)
    return write_prepared(tmp_path / "tiny", load_card(card_path), _instances(np.random.default_rng(0)),
                          size=SIZE, progress=False)


@pytest.fixture
def dataset(data_dir):
    return PreparedDataset(data_dir)


LABELLED = {f"{c}-{i}" for c in CLUSTERS for i in range(PER_CLUSTER)}


def cluster_of(sample_id: str) -> str:
    return sample_id.split("-")[0]


def test_kmeans_picks_one_image_per_cluster(dataset):
    sel = select_shots(dataset, 3, backbone=BACKBONE, cache=False)
    assert len(sel.ids) == 3 == sel.n
    assert {cluster_of(i) for i in sel.ids} == set(CLUSTERS)
    assert sel.method == "kmeans" and sel.seed == 0 and sel.train_size == len(LABELLED)
    assert sel.backbone == BACKBONE and sel.feature_layer == "layer2"
    assert sel.weights.startswith("random-init") and "pretrained weights unavailable" in sel.note
    assert sel.dataset_fingerprint == dataset.fingerprint


def test_vgg_uses_its_third_from_last_level(dataset):
    sel = select_shots(dataset, 3, backbone="vgg11", cache=False)
    assert sel.feature_layer == "features.14"     # vgg11 levels: features.1/.4/.9/.14/.19/.20
    assert {cluster_of(i) for i in sel.ids} == set(CLUSTERS)


@pytest.mark.parametrize("n", [1, 5, 10])
def test_kmeans_picks_exactly_n_distinct_labelled_ids(dataset, n):
    sel = select_shots(dataset, n, backbone=BACKBONE, cache=False)
    assert len(sel.ids) == n and len(set(sel.ids)) == n
    assert set(sel.ids) <= LABELLED


def test_kmeans_is_deterministic_and_cached_beside_the_data(dataset, data_dir):
    meta_before = (data_dir / "meta.json").read_bytes()
    first = select_shots(dataset, 4, seed=3, backbone=BACKBONE, cache=False)
    second = select_shots(dataset, 4, seed=3, backbone=BACKBONE, cache=False)
    assert first == second
    cached_run = select_shots(dataset, 4, seed=3, backbone=BACKBONE)            # computes and writes the cache
    cache_files = list((data_dir / "shots" / "features").glob(f"{BACKBONE}-random-seed0.npz"))
    assert len(cache_files) == 1
    from_cache = select_shots(dataset, 4, seed=3, backbone=BACKBONE)            # reads it
    assert cached_run.ids == from_cache.ids == first.ids
    assert (data_dir / "meta.json").read_bytes() == meta_before
    assert PreparedDataset(data_dir).fingerprint == dataset.fingerprint
    assert PreparedDataset(data_dir).count("train") == len(LABELLED) + 1


def test_stale_cache_is_recomputed(dataset, data_dir):
    reference = select_shots(dataset, 3, backbone=BACKBONE)
    cache = data_dir / "shots" / "features" / f"{BACKBONE}-random-seed0.npz"
    with np.load(cache) as z:
        fields = dict(z)
    np.savez(cache, **{**fields, "features": np.zeros_like(fields["features"]), "fingerprint": np.array("other")})
    assert select_shots(dataset, 3, backbone=BACKBONE).ids == reference.ids


def test_random_selection_is_deterministic_per_seed(dataset):
    a = select_shots(dataset, 5, method="random", seed=0)
    b = select_shots(dataset, 5, method="random", seed=0)
    c = select_shots(dataset, 5, method="random", seed=1)
    assert a.ids == b.ids
    assert a.ids != c.ids
    assert len(set(a.ids)) == 5 and set(a.ids) <= LABELLED
    assert a.backbone is None and a.weights is None


def test_percent_shots(dataset):
    assert select_shots(dataset, "50%", method="random").n == 9          # half of 18 labelled train images
    assert select_shots(dataset, "1%", method="random").n == 1           # 0.18 rounds to 0: at least one
    every = select_shots(dataset, "100%", backbone=BACKBONE)
    assert set(every.ids) == LABELLED and every.n == len(LABELLED)


def test_resolve_shots():
    assert resolve_shots("10", 100) == 10
    assert resolve_shots(7, 100) == 7
    assert resolve_shots("5%", 5864) == 293
    assert resolve_shots("2.5%", 100) == 3                               # 2.5 rounds half up
    for bad in ("0", "-3", "0%", "120%", "ten", "5 %%"):
        with pytest.raises(ValueError, match="shots must be"):
            resolve_shots(bad, 100)
    with pytest.raises(ValueError, match="only 18 labelled"):
        resolve_shots(19, 18)


def test_unknown_method_and_backbone(dataset):
    with pytest.raises(ValueError, match="unknown selection method"):
        select_shots(dataset, 3, method="farthest")
    with pytest.raises(ValueError, match="unknown backbone 'not-a-model'"):
        select_shots(dataset, 3, backbone="not-a-model")


def test_weights_file_that_does_not_fit_gives_a_clear_error(dataset, tmp_path):
    wrong = tmp_path / "wrong.pth"
    torch.save({"encoder.weight": torch.zeros(4, 4)}, wrong)
    with pytest.raises(ValueError, match=r"wrong\.pth: weights do not fit resnet18"):
        select_shots(dataset, 3, backbone=BACKBONE, weights=wrong)
    other_architecture = tmp_path / "vgg11.pth"
    torch.save(select._random_model("vgg11").state_dict(), other_architecture)
    with pytest.raises(ValueError, match="do not fit resnet18"):
        select_shots(dataset, 3, backbone=BACKBONE, weights=other_architecture)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read it as a PyTorch or safetensors state dict"):
        select_shots(dataset, 3, backbone=BACKBONE, weights=garbage)
    with pytest.raises(FileNotFoundError, match="missing.pth: weights file not found"):
        select_shots(dataset, 3, backbone=BACKBONE, weights=tmp_path / "missing.pth")


def test_weights_file_is_loaded_and_recorded(dataset, tmp_path):
    import timm

    torch.manual_seed(123)
    classifier = timm.create_model(BACKBONE)
    path = tmp_path / "r18.pth"
    torch.save(classifier.state_dict(), path)
    model, info = select.load_backbone(BACKBONE, path)
    assert torch.equal(model.state_dict()["conv1.weight"], classifier.state_dict()["conv1.weight"])
    assert torch.equal(model.state_dict()["layer2.1.conv2.weight"], classifier.state_dict()["layer2.1.conv2.weight"])
    sel = select_shots(dataset, 3, backbone=BACKBONE, weights=path, cache=False)
    assert sel.weights.startswith(f"file {path.resolve()} (sha256 ") and "unavailable" not in sel.note
    assert {cluster_of(i) for i in sel.ids} == set(CLUSTERS)


def test_random_init_is_said_once(dataset, monkeypatch, capsys):
    monkeypatch.setattr(select, "_said", set())
    select_shots(dataset, 2, backbone=BACKBONE, cache=False)
    select_shots(dataset, 3, backbone=BACKBONE, cache=False)
    err = capsys.readouterr().err
    assert err.count("resnet18: pretrained weights unavailable (offline); using random initialisation") == 1
    assert "give a weights file" in err and "--selection-weights package" in err


def test_selection_round_trips_through_json(dataset, tmp_path):
    sel = select_shots(dataset, 3, method="random", seed=4)
    assert ShotSelection.load(sel.save(tmp_path / "s" / "sel.json")) == sel
    (tmp_path / "bad.json").write_text('{"ids": []}')
    with pytest.raises(ValueError, match="not a shot selection file"):
        ShotSelection.load(tmp_path / "bad.json")


def test_cli_writes_the_json_and_prints_the_ids(data_dir, dataset, capsys):
    assert main(["select", "--data", str(data_dir), "--shots", "3", "--backbone", BACKBONE]) == 0
    out_file = data_dir / "shots" / "kmeans-3-seed0.json"
    saved = json.loads(out_file.read_text())
    assert saved["method"] == "kmeans" and saved["seed"] == 0 and saved["backbone"] == BACKBONE
    assert saved["dataset_fingerprint"] == dataset.fingerprint and saved["weights"].startswith("random-init")
    assert {cluster_of(i) for i in saved["ids"]} == set(CLUSTERS)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"wrote {out_file}: 3 of 18 training images")
    assert printed[1:] == saved["ids"]


def test_cli_random_with_out_and_percent(data_dir, tmp_path, capsys):
    out = tmp_path / "picked.json"
    assert main(["select", "--data", str(data_dir), "--shots", "50%", "--method", "random", "--seed", "2",
                 "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["n"] == 9 and saved["shots"] == "50%" and saved["ids"] == list(
        select_shots(PreparedDataset(data_dir), "50%", method="random", seed=2).ids)


def test_cli_reports_bad_weights_cleanly(data_dir, tmp_path, capsys):
    wrong = tmp_path / "wrong.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, wrong)
    assert main(["select", "--data", str(data_dir), "--shots", "3", "--backbone", BACKBONE,
                 "--weights", str(wrong)]) == 2
    assert "fskp select: error:" in capsys.readouterr().err
    assert not (data_dir / "shots" / "kmeans-3-seed0.json").exists()
