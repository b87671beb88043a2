"""Suggest which frames to label next, by one of two rules (``RULES``).

Shared by both: a frame's ``uncertainty`` is the mean over keypoints of the per-keypoint uncertainty
(1 - the likelihood the outputs write; NaN entries ignored; a frame with no finite value counts as the most
uncertain of all); its ``novelty`` is the cosine distance (1 - cos, 0..2) from its embedding to the nearest
labeled embedding, all embeddings L2-normalised first (an all-zero embedding is at distance 1 from everything);
with no labeled embeddings, the distance to the mean of all N normalised embeddings.

``coverage`` (the default): frames whose labels would reach the most uncertain frames.  A frame covers another
as much as the kernel k(d) = exp(-(d / s)^2) of their cosine distance d, s = the median novelty (how far a
typical frame is from the labeled ones); a labeled frame covers too.  The suggestions greedily maximise the
uncertainty-weighted coverage of the pool (a facility-location objective)

    F(S) = sum_j uncertainty_j * max over x in labeled + S of k(d(x, j)),

each pick the candidate with the largest gain.  A lone outlier gains only its own uncertainty; a frame amid
many uncertain frames far from every label gains theirs too, and its neighbours' gains fall once it is picked.
Its score is that gain (non-increasing with rank).  Up to ``COVERAGE_POOL`` candidates take part; beyond that
(a long video), a fixed seeded sample of them, picks included: O(P^2) memory, P <= 2,000 (16 MB of float32).
With no labeled frames nothing is covered at first.

``outliers``: frames unlike every labeled one that the model is unsure of -- the frames to check for failures.
Both measures become robust z-scores over the candidates, (x - median) / (1.4826 * MAD), ``base score =
z(uncertainty) + z(novelty)``, shifted to start at 0.  Diversity, greedily: take the candidate with the highest
score; every remaining candidate's score becomes ``base score * min(1, d / r)``, d = cosine distance to the
closest frame picked so far and r = the median nearest-neighbour cosine distance within a fixed, seeded sample
of max(3n, 50) candidates (the spacing of frames spread like the suggestions, not of consecutive video frames),
so neighbours of a picked frame sink; repeat.  Only distances to the picked frames are kept (updated one pick
at a time): memory is O(N * D), never N x N.

On the reaching project (README, "Suggestions and the refine loop, measured"; 5 frames added): ``coverage``'s
frames beat random ones beyond the spread on mean error, median and PCK with the supervised detector (three frame
sets); with the full one, better on average but not beyond the spread over four sets (level where round 1 is
already good); ``outliers``' did not (measured before the heatmap target).

Ties go to the smallest id under either rule.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.frame_ids import FrameIds

_EXACT_NN = 2048        # up to this many candidates the median nearest-neighbour distance is exact
_NN_QUERIES = 256       # otherwise it is the median over this many seeded query candidates
_BLOCK = 1 << 22        # elements of a similarity block (16 MiB of float32)
_ROWS = 1 << 14         # embeddings normalised at once
COVERAGE_POOL = 2000    # candidates the coverage rule weighs at most (a seeded sample beyond)
#: the suggestion rules (module docstring); the first is the default
RULES = ("coverage", "outliers")


@dataclass(frozen=True)
class Suggestion:
    """rank: 1 = label first.  score: the score it was picked with (base score times the redundancy
    factor at that moment; non-increasing with rank).  uncertainty: mean per-keypoint uncertainty.
    novelty: cosine distance to the nearest labeled frame (or to the mean embedding)."""
    rank: int
    id: str
    score: float
    uncertainty: float
    novelty: float


def suggest_frames(ids: Sequence[str], uncertainty: np.ndarray, embeddings: np.ndarray,
                   labeled_embeddings: np.ndarray, n: int = 20,
                   exclude: set[str] | frozenset[str] = frozenset(), rule: str = RULES[0]) -> list[Suggestion]:
    """Rank up to ``n`` frames to label next by ``rule`` (one of ``RULES``; the module docstring).

    ids: N unique frame ids.  uncertainty: [N, K] per-keypoint uncertainty in (0, 1), 0 = certain.
    embeddings: [N, D] frame embeddings.  labeled_embeddings: [M, D] embeddings of the frames already
    labeled (M may be 0; an empty array of any shape means M = 0).  exclude: ids never suggested.
    Returns min(n, number of candidates) suggestions, best first.
    """
    n_frames = len(ids)                  # a FrameIds is read an id at a time: no string per frame is kept
    if not (ids.unique() if isinstance(ids, FrameIds) else len(set(map(str, ids))) == n_frames):
        raise ValueError("ids must be unique")
    check_rule(rule)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    u = np.asarray(uncertainty)                                   # read a block at a time, never copied whole
    if u.ndim != 2 or u.shape[0] != n_frames or u.shape[1] == 0:
        raise ValueError(f"uncertainty must be [N={n_frames}, K>=1], got shape {u.shape}")
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] != n_frames or emb.shape[1] == 0:
        raise ValueError(f"embeddings must be [N={n_frames}, D>=1], got shape {emb.shape}")
    dim = emb.shape[1]
    lab = np.asarray(labeled_embeddings)
    if lab.size == 0:
        lab = np.zeros((0, dim), np.float32)
    elif lab.ndim != 2 or lab.shape[1] != dim:
        raise ValueError(f"labeled_embeddings must be [M, D={dim}], got shape {lab.shape}")
    if not all(np.isfinite(block).all() for _, block in _row_blocks(emb)):
        raise ValueError("embeddings contain NaN or infinite values")
    if not np.isfinite(lab).all():
        raise ValueError("labeled_embeddings contain NaN or infinite values")

    cand = np.fromiter((i for i, f in enumerate(ids) if str(f) not in exclude), dtype=np.int64) if exclude else \
        np.arange(n_frames)
    if len(cand) == 0 or n == 0:
        return []
    if rule == "coverage" and len(cand) > COVERAGE_POOL:     # the rule weighs a seeded sample: only its rows are read
        cand = cand[np.sort(np.random.default_rng(0).choice(len(cand), COVERAGE_POOL, replace=False))]

    rows = None if len(cand) == n_frames else cand
    e = _normalise(emb, rows)                                    # [C, D], the only copy of the embeddings
    unc = _frame_uncertainty(u, rows)
    if len(lab):
        nov = 1.0 - _max_similarity(e, _normalise(lab))
    else:
        centre = _normalise(_mean_unit_row(emb)[None])[0]
        nov = 1.0 - (e @ centre).astype(np.float64)
    nov = np.clip(nov, 0.0, 2.0)

    top = np.nanmax(np.r_[unc, 0.0]) + 1e-6                     # no finite uncertainty: the most uncertain
    unc_filled = np.where(np.isnan(unc), top, unc)
    pick = _greedy_coverage if rule == "coverage" else _greedy_outliers
    order, scores = pick(e, unc_filled, nov, min(n, len(cand)), lambda p: str(ids[cand[p]]), labeled=len(lab) > 0)
    return [Suggestion(rank=r, id=str(ids[cand[p]]), score=float(sc), uncertainty=float(unc[p]), novelty=float(nov[p]))
            for r, (p, sc) in enumerate(zip(order, scores), start=1)]


def check_rule(rule: str) -> None:
    """ValueError unless ``rule`` is one of ``RULES``."""
    if rule not in RULES:
        raise ValueError(f"the suggestion rule must be one of {', '.join(RULES)}, got {rule!r}")


def _best(score: np.ndarray, taken: np.ndarray, id_of) -> int:
    """The untaken candidate with the highest score, ties to the smallest id (``id_of(position)``)."""
    masked = np.where(taken, -np.inf, score)
    ties = np.flatnonzero(masked == masked.max())
    return int(ties[0]) if len(ties) == 1 else int(min(ties, key=id_of))


def _greedy_outliers(e: np.ndarray, unc: np.ndarray, nov: np.ndarray, n: int, id_of, labeled: bool):
    """The ``outliers`` rule (module docstring): (picked candidate positions, their scores), best first.
    ``labeled`` is not needed: the labeled frames enter through ``nov`` alone."""
    base = _robust_z(unc) + _robust_z(nov)
    base = base - base.min() + 1e-6
    sample = np.random.default_rng(0).permutation(len(e))[:max(3 * n, 50)]
    radius = max(_median_nn_distance(e[np.sort(sample)]), 1e-6)
    score = base.copy()
    d_min = np.full(len(e), np.inf)
    taken = np.zeros(len(e), bool)
    order, scores = [], []
    for _ in range(n):
        p = _best(score, taken, id_of)
        order.append(p)
        scores.append(score[p])
        taken[p] = True
        d = np.clip(1.0 - (e @ e[p]).astype(np.float64), 0.0, 2.0)
        np.minimum(d_min, d, out=d_min)
        score = base * np.minimum(1.0, d_min / radius)
    return order, scores


def _greedy_coverage(e: np.ndarray, unc: np.ndarray, nov: np.ndarray, n: int, id_of, labeled: bool):
    """The ``coverage`` rule (module docstring): (picked candidate positions, their gains), best first.
    e [C, D] unit rows, C <= ``COVERAGE_POOL`` (suggest_frames samples beyond); unc, nov [C]; the labeled frames
    (if ``labeled``) enter through ``nov``, their coverage."""
    scale = float(np.median(nov))
    if scale <= 0:
        scale = max(_median_nn_distance(e), 1e-6)
    kernel = np.clip(1.0 - e @ e.T, 0.0, 2.0)                           # [C, C] cosine distances, float32
    np.exp(-(kernel / np.float32(scale)) ** 2, out=kernel)
    covered = (np.exp(-(nov / scale) ** 2) if labeled else np.zeros(len(e))).astype(np.float32)
    weight = unc.astype(np.float32)
    taken = np.zeros(len(e), bool)
    order, scores = [], []
    for _ in range(min(n, len(e))):
        gain = np.maximum(kernel - covered[None, :], 0.0) @ weight              # [C]
        p = _best(gain, taken, id_of)
        order.append(p)
        scores.append(gain[p])
        taken[p] = True
        np.maximum(covered, kernel[p], out=covered)
    return order, scores


def write_suggestions(path_csv: str | os.PathLike, suggestions: list[Suggestion],
                      sources: dict[str, str] | None = None) -> Path:
    """Write ``rank,id,score,uncertainty,novelty`` (plus ``source`` when ``sources`` maps ids to where
    the frames come from; unknown ids get an empty source) to a CSV, atomically.  Returns the path."""
    path = Path(path_csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["rank", "id", "score", "uncertainty", "novelty"] + (["source"] if sources is not None else [])
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for s in suggestions:
            row = [s.rank, s.id, f"{s.score:.6g}", f"{s.uncertainty:.6g}", f"{s.novelty:.6g}"]
            if sources is not None:
                row.append(sources.get(s.id, ""))
            w.writerow(row)
    return path


def suggestion_sheet(images: list[np.ndarray], suggestions: list[Suggestion], columns: int = 4) -> np.ndarray:
    """Contact sheet of the suggested frames, ``images[i]`` showing ``suggestions[i]``, each tile
    with its rank written in the top-left corner.  images: equally sized [S, S, 3] uint8."""
    from PIL import Image, ImageDraw, ImageFont

    from pipeline.draw import image_grid

    if len(images) != len(suggestions):
        raise ValueError(f"{len(images)} images for {len(suggestions)} suggestions")
    if not images:
        raise ValueError("no images to tile")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    shape = np.asarray(images[0]).shape
    if len(shape) != 3 or shape[2] != 3:
        raise ValueError(f"images must be [S, S, 3], got shape {shape}")
    size = max(10, min(shape[:2]) // 8)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:                                  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    tiles = []
    for img, s in zip(images, suggestions):
        a = np.asarray(img)
        if a.shape != shape:
            raise ValueError(f"images differ in shape: {a.shape} vs {shape}")
        im = Image.fromarray(a.astype(np.uint8))
        draw = ImageDraw.Draw(im)
        text = str(s.rank)
        x0, y0, x1, y1 = draw.textbbox((2, 1), text, font=font)
        draw.rectangle([0, 0, x1 + 2, y1 + 2], fill=(0, 0, 0))
        draw.text((2, 1), text, fill=(255, 255, 0), font=font)
        tiles.append(np.asarray(im))
    return image_grid(tiles, min(columns, len(tiles)))


# ---- helpers ------------------------------------------------------------------------------------------
def _row_blocks(x: np.ndarray, rows: np.ndarray | None = None):
    """(start, block) over the rows of ``x`` (those indexed by ``rows``, else all), ``_ROWS`` at a time: a long
    video's arrays are read a block at a time instead of converted or indexed whole."""
    n = len(x) if rows is None else len(rows)
    for start in range(0, n, _ROWS):
        yield start, np.asarray(x[start:start + _ROWS] if rows is None else x[rows[start:start + _ROWS]])


def _normalise(x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x`` (those indexed by ``rows``, else all) scaled to unit L2 norm, as a new float32 array; all-zero
    rows stay zero.  Built a block at a time, so a long video's embeddings (float16) are copied once, not three
    times."""
    out = np.empty((len(x) if rows is None else len(rows), np.shape(x)[1]), np.float32)
    for start, block in _row_blocks(x, rows):
        block = block.astype(np.float32, copy=False)
        norm = np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + len(block)] = block / np.where(norm > 0, norm, 1.0).astype(np.float32)
    return out


def _mean_unit_row(x: np.ndarray) -> np.ndarray:
    """[D] float64: the mean of ``x``'s rows scaled to unit length (``_normalise``), a block at a time."""
    total = np.zeros(np.shape(x)[1], np.float64)
    for _, block in _row_blocks(x):
        total += _normalise(block).sum(axis=0, dtype=np.float64)
    return total / max(len(x), 1)


def _frame_uncertainty(u: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """[C] float64: the nanmean over keypoints of ``u``'s rows (those indexed by ``rows``, else all); NaN where a
    frame has no finite value.  A block at a time (``_row_blocks``)."""
    out = np.empty(len(u) if rows is None else len(rows), np.float64)
    for start, block in _row_blocks(u, rows):
        block = block.astype(np.float64, copy=False)
        finite = np.isfinite(block)
        count = finite.sum(axis=1)
        total = np.where(finite, block, 0.0).sum(axis=1)
        out[start:start + len(block)] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def _robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 * MAD); the scale falls back to the standard deviation (or 1) when the MAD is 0."""
    med = np.median(x)
    scale = 1.4826 * np.median(np.abs(x - med))
    if scale <= 0:
        scale = float(np.std(x)) or 1.0
    return (x - med) / scale


def _max_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of a, the largest cosine similarity to a row of b (both normalised), in blocks."""
    out = np.empty(len(a))
    step = max(1, _BLOCK // max(len(b), 1))
    for i in range(0, len(a), step):
        out[i:i + step] = (a[i:i + step] @ b.T).max(axis=1)
    return out


def _median_nn_distance(e: np.ndarray) -> float:
    """Median over candidates of the cosine distance to their nearest other candidate (0 when C = 1)."""
    c = len(e)
    if c < 2:
        return 0.0
    if c <= _EXACT_NN:
        query = np.arange(c)
    else:
        query = np.sort(np.random.default_rng(0).choice(c, _NN_QUERIES, replace=False))
    q = e[query]
    best = np.full(len(query), -np.inf, np.float32)
    step = max(1, _BLOCK // len(query))
    for j in range(0, c, step):
        sim = q @ e[j:j + step].T                                    # [Q, B]
        own = (query >= j) & (query < j + step)                      # a query is not its own neighbour
        sim[np.flatnonzero(own), query[own] - j] = -np.inf
        np.maximum(best, sim.max(axis=1), out=best)
    return float(np.median(np.clip(1.0 - best.astype(np.float64), 0.0, 2.0)))
