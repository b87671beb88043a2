"""Frame suggestions: the coverage rule's representative uncertain frames, the outliers rule's novel ones, both
diverse; exclusions, shapes and the CSV."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from pipeline.suggest import RULES, Suggestion, check_rule, suggest_frames, suggestion_sheet, write_suggestions

S = 64


def _disc(cx: float, cy: float, r: float, fg: int = 230, bg: int = 20) -> np.ndarray:
    yy, xx = np.mgrid[0:S, 0:S]
    img = np.full((S, S, 3), bg, np.uint8)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = fg
    return img


def _outliers(rng: np.random.Generator) -> list[np.ndarray]:
    yy, xx = np.mgrid[0:S, 0:S]
    noise = rng.integers(0, 256, (S, S, 3), dtype=np.uint8)
    stripes = np.zeros((S, S, 3), np.uint8)
    stripes[:, (xx[0] // 4) % 2 == 0] = 255
    inverted = 255 - _disc(32, 32, 10)
    checker = np.repeat(((((xx // 8) + (yy // 8)) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    return [noise, stripes, inverted, checker]


def _embed(images: list[np.ndarray]) -> np.ndarray:
    """Global-average-pooled features of a randomly initialised resnet18, as the detector's would be."""
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        return model(x).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def disc_set():
    rng = np.random.default_rng(0)
    normal = [_disc(*rng.uniform(18, 46, 2), r=rng.uniform(8, 12)) for _ in range(60)]
    outliers = _outliers(rng)
    emb = _embed(normal + outliers)
    ids = [f"disc{i:02d}" for i in range(60)] + ["out_noise", "out_stripes", "out_inverted", "out_checker"]
    labeled = list(range(0, 60, 8))[:8]
    assert len(labeled) == 8
    return ids, emb, labeled


def test_outliers_rule_ranks_frames_unlike_the_labeled_ones_first(disc_set):
    ids, emb, labeled = disc_set
    exclude = {ids[i] for i in labeled}
    outlier_ids = set(ids[60:])

    # Low, random uncertainty: the outliers are the four most novel frames whatever it is ...
    u = np.random.default_rng(1).uniform(0.1, 0.3, (len(ids), 5))
    every = suggest_frames(ids, u, emb, emb[labeled], n=len(ids), exclude=exclude, rule="outliers")
    novelty = {s.id: s.novelty for s in every}
    assert min(novelty[i] for i in outlier_ids) > max(v for k, v in novelty.items() if k not in outlier_ids)

    # ... and they rank first: far out on novelty (robust z-scores), which random low uncertainty cannot outweigh
    assert {s.id for s in every[:4]} == outlier_ids
    top = suggest_frames(ids, np.full((len(ids), 5), 0.2), emb, emb[labeled], n=6, exclude=exclude, rule="outliers")
    assert {s.id for s in top[:4]} == outlier_ids
    assert [s.rank for s in top] == [1, 2, 3, 4, 5, 6]
    assert all(a.score >= b.score for a, b in zip(top, top[1:]))
    assert not exclude & {s.id for s in every}


def _equally_novel(n: int, dim: int = 64):
    """n candidates, each at the same cosine distance (0.4) from the one labeled frame and from each other."""
    eye = np.eye(dim, dtype=np.float32)
    emb = 0.6 * eye[0] + 0.8 * eye[1:n + 1]
    return emb.astype(np.float32), eye[:1]


@pytest.mark.parametrize("rule", RULES)
def test_uncertainty_orders_equally_novel_frames(rule):
    n = 30
    emb, labeled = _equally_novel(n)
    rng = np.random.default_rng(2)
    u = rng.uniform(0.05, 0.95, (n, 4))
    u[3, 1] = np.nan                                       # ignored by the mean, not poisoning the frame
    ids = [f"f{i:02d}" for i in rng.permutation(n)]        # ids unrelated to uncertainty: ties by id can't fake it
    out = suggest_frames(ids, u, emb, labeled, n=n, rule=rule)
    assert len({round(s.novelty, 6) for s in out}) == 1
    by_uncertainty = [ids[i] for i in np.argsort(-np.nanmean(u, axis=1), kind="stable")]
    assert [s.id for s in out] == by_uncertainty
    assert np.isfinite([s.uncertainty for s in out]).all()

    u[5] = np.nan                                          # no uncertainty at all: counted as the most uncertain
    assert suggest_frames(ids, u, emb, labeled, n=1, rule=rule)[0].id == ids[5]


@pytest.mark.parametrize("rule", RULES)
def test_near_duplicates_do_not_crowd_the_top(rule):
    rng = np.random.default_rng(3)
    dim = 64
    labeled = rng.normal(size=(5, dim)).astype(np.float32)
    away = -labeled.sum(0) / np.linalg.norm(labeled.sum(0))   # far from every labeled frame
    dups = away + rng.normal(size=(10, dim)) * 1e-3
    others = rng.normal(size=(30, dim))
    emb = np.vstack([dups, others]).astype(np.float32)
    u = np.vstack([rng.uniform(0.8, 0.9, (10, 3)), rng.uniform(0.1, 0.7, (30, 3))])
    ids = [f"dup{i}" for i in range(10)] + [f"other{i:02d}" for i in range(30)]

    out = suggest_frames(ids, u, emb, labeled, n=len(ids), rule=rule)
    by_id = {s.id: s for s in out}
    # Without the diversity step the duplicates would be the top 10: most uncertain and most novel.
    assert min(by_id[f"dup{i}"].uncertainty for i in range(10)) > max(by_id[f"other{i:02d}"].uncertainty for i in range(30))
    assert min(by_id[f"dup{i}"].novelty for i in range(10)) > max(by_id[f"other{i:02d}"].novelty for i in range(30))

    top3 = [s.id for s in out[:3]]
    assert sum(i.startswith("dup") for i in top3) <= 1
    assert top3[0].startswith("dup")
    assert {f"dup{i}" for i in range(10)} <= set(by_id)        # pushed down, not dropped
    assert all(a.score >= b.score for a, b in zip(out, out[1:]))


def test_coverage_rule_prefers_an_unlabeled_crowd_to_lone_outliers(disc_set):
    """Discs on the left are labeled, those on the right are not; four outliers are unlike everything.  The
    outliers rule puts the outliers first (above); the coverage rule starts in the unlabeled right half, where
    one label reaches many uncertain frames, and spreads its picks there before any outlier."""
    ids, emb, _ = disc_set
    rng = np.random.default_rng(0)
    centres = [(rng.uniform(18, 46, 2), rng.uniform(8, 12))[0] for _ in range(60)]   # the fixture's draws
    left = [i for i, (cx, _) in enumerate(centres) if cx < 28]
    right = [i for i, (cx, _) in enumerate(centres) if cx > 36]
    assert len(left) >= 10 and len(right) >= 10
    labeled = left[::2]
    u = np.full((len(ids), 5), 0.5)
    out = suggest_frames(ids, u, emb, emb[labeled], n=8, exclude={ids[i] for i in labeled})
    first3 = [s.id for s in out[:3]]
    assert all(ids.index(i) < 60 and centres[ids.index(i)][0] > 32 for i in first3), first3
    assert out[0].id in {ids[i] for i in right}
    outliers = [s.id for s in suggest_frames(ids, u, emb, emb[labeled], n=8, exclude={ids[i] for i in labeled},
                                             rule="outliers")[:4]]
    assert set(outliers) == set(ids[60:])
    assert all(a.score >= b.score - 1e-9 for a, b in zip(out, out[1:]))       # greedy gains never grow


def test_coverage_rule_without_labeled_frames_starts_in_the_middle_of_the_crowd():
    """Nothing labeled: a frame amid a tight crowd covers it; the frames around it follow only after a frame
    of the second, smaller crowd, and a lone outlier of the same uncertainty comes last."""
    rng = np.random.default_rng(5)
    dim = 32
    a, b, c = (v / np.linalg.norm(v) for v in rng.normal(size=(3, dim)))
    crowd = a + rng.normal(size=(20, dim)) * 0.05
    small = b + rng.normal(size=(6, dim)) * 0.05
    emb = np.vstack([crowd, small, c[None]]).astype(np.float32)
    ids = [f"crowd{i:02d}" for i in range(20)] + [f"small{i}" for i in range(6)] + ["lone"]
    out = suggest_frames(ids, np.full((len(ids), 3), 0.5), emb, np.zeros((0, dim), np.float32), n=len(ids))
    order = [s.id for s in out]
    assert order[0].startswith("crowd") and order[1].startswith("small")
    assert order.index("lone") > order.index("small0") and order.index("lone") > 1


def test_unknown_rule_is_refused():
    import jobs.labeling.job


    with pytest.raises(ValueError, match="coverage, outliers"):
        suggest_frames(["a"], np.zeros((1, 1)), np.ones((1, 2)), np.zeros((0, 2)), rule="entropy")
    assert jobs.labeling.job.check_rule is check_rule                 # fskp label's check, before training
    with pytest.raises(ValueError, match="coverage, outliers"):
        check_rule("entropy")
    check_rule("outliers")


def test_exclude_n_shapes_and_csv(tmp_path):
    rng = np.random.default_rng(4)
    n_frames, dim = 12, 16
    emb = rng.normal(size=(n_frames, dim)).astype(np.float32)
    u = rng.uniform(0.1, 0.9, (n_frames, 3))
    ids = [f"img{i:02d}.png" for i in range(n_frames)]
    exclude = {"img00.png", "img05.png", "img07.png"}

    out = suggest_frames(ids, u, emb, emb[[0, 5, 7]], n=100, exclude=exclude)
    assert len(out) == n_frames - len(exclude)
    assert {s.id for s in out} == set(ids) - exclude
    assert [s.rank for s in out] == list(range(1, len(out) + 1))
    assert all(isinstance(s, Suggestion) for s in out)
    assert len(suggest_frames(ids, u, emb, emb[[0, 5, 7]], n=4, exclude=exclude)) == 4
    assert suggest_frames(ids, u, emb, emb[:0], n=5, exclude=set(ids)) == []
    no_labels = suggest_frames(ids, u, emb, np.zeros((0, dim)), n=3)       # M = 0: distance to the mean
    assert len(no_labels) == 3 and all(s.novelty >= 0 for s in no_labels)
    again = suggest_frames(ids, u, emb, emb[[0, 5, 7]], n=100, exclude=exclude)
    assert again == out                                                      # deterministic

    bad = [
        dict(uncertainty=u[:-1]),                         # N mismatch
        dict(uncertainty=u[:, 0]),                        # not [N, K]
        dict(embeddings=emb[:, :, None]),                 # not [N, D]
        dict(embeddings=emb[:-1]),                        # N mismatch
        dict(labeled_embeddings=emb[:2, :-1]),            # D mismatch
        dict(ids=ids[:-1] + ids[:1]),                     # duplicate id
        dict(n=-1),
        dict(embeddings=np.where(np.arange(dim) == 0, np.nan, emb).astype(np.float32)),
    ]
    base = dict(ids=ids, uncertainty=u, embeddings=emb, labeled_embeddings=emb[:2], n=3)
    for change in bad:
        with pytest.raises(ValueError):
            suggest_frames(**{**base, **change})

    path = write_suggestions(tmp_path / "sub" / "suggest.csv", out[:3], sources={"img01.png": "videoA.mp4"})
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["rank", "id", "score", "uncertainty", "novelty", "source"]
    assert [r[1] for r in rows[1:]] == [s.id for s in out[:3]]
    assert [int(r[0]) for r in rows[1:]] == [1, 2, 3]
    assert float(rows[1][2]) == pytest.approx(out[0].score, rel=1e-5)
    assert {r[5] for r in rows[1:]} <= {"videoA.mp4", ""}
    assert [p.name for p in path.parent.iterdir()] == ["suggest.csv"]         # no temporary left behind
    plain = write_suggestions(tmp_path / "plain.csv", out)
    with open(plain, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["rank", "id", "score", "uncertainty", "novelty"] and len(rows) == len(out) + 1


def test_suggestion_sheet_tiles_and_ranks():
    sugg = [Suggestion(rank=i + 1, id=f"f{i}", score=1.0, uncertainty=0.5, novelty=0.5) for i in range(5)]
    images = [np.full((48, 48, 3), 40 * i + 30, np.uint8) for i in range(5)]
    sheet = suggestion_sheet(images, sugg, columns=3)
    assert sheet.shape == (2 * 48 + 2, 3 * 48 + 2 * 2, 3) and sheet.dtype == np.uint8
    tile = sheet[:48, :48]
    assert (tile != images[0]).any()                        # the rank is written on it ...
    assert (tile[24:, 24:] == images[0][24:, 24:]).all()    # ... in a corner, the rest untouched
    def text_mask(r, c):
        t = sheet[r * 50:r * 50 + 48, c * 50:c * 50 + 48].astype(int)
        return (t[..., 0] > 200) & (t[..., 1] > 200) & (t[..., 2] < 80)     # yellow digits
    assert text_mask(0, 0).any() and text_mask(0, 1).any() and text_mask(1, 1).any()
    assert (text_mask(0, 0) != text_mask(0, 1)).any()       # "1" and "2" are different marks
    with pytest.raises(ValueError):
        suggestion_sheet(images[:4], sugg)


def test_a_long_videos_suggestions_read_only_the_frames_they_weigh(tmp_path, monkeypatch):
    """The suggestions of an hour of video (108,000 frames) once held four copies of every frame's embedding
    (2.3 KB per frame, the driver's growth with video length), then one normalised float32 copy (0.64 KB per
    frame); now the coverage rule copies only the seeded sample it weighs (``COVERAGE_POOL`` frames), the
    uncertainty is file-backed and the ids are a FrameIds: the peak's growth per frame, between 10,000 and 40,000
    frames, measured 0 B (2026-12-07).  The picks are those of the same ids as a list."""
    import tracemalloc

    import jobs.labeling.outputs as outputs
    from jobs.inference import Predictions
    from pipeline.frame_ids import FrameIds

    monkeypatch.setattr(outputs, "_thumbnails", lambda ids, size=160: [np.zeros((size, size, 3), np.uint8) for _ in ids])
    rng = np.random.default_rng(0)

    def peak(n: int, k: int = 5, d: int = 128) -> int:
        ids = FrameIds()
        ids.add_video("/videos/session1_camera2.mp4", n)
        preds = Predictions(ids=ids, keypoints=rng.random((n, k, 2)), uncertainty=rng.random((n, k)).astype(np.float32),
                            embedding=rng.standard_normal((n, d)).astype(np.float16), ok=np.ones(n, bool))
        likelihood = 1.0 - preds.uncertainty
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            written = outputs.write_suggestions(preds, likelihood, tmp_path, set(), ids[:10], 20, lambda p: p)
            assert "suggestions_csv" in written and "suggestions_png" in written
            grown = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        as_list = suggest_frames(list(ids), preds.uncertainty, preds.embedding, preds.embedding[:10], n=20)
        with open(tmp_path / "suggestions.csv", newline="") as f:
            assert [row["id"] for row in csv.DictReader(f)] == [s.id for s in as_list]
        return grown

    per_frame = (peak(40000) - peak(10000)) / 30000
    assert per_frame < 16, f"{per_frame:.0f} bytes per frame"
    print(f"suggestions' heap peak: {per_frame:.0f} bytes per frame")
