"""Draw keypoints, their links and (optionally) their uncertainty on an image, for previews and overlays.

Visible keypoints are filled discs, hidden ones hollow rings; a link is solid when both ends are visible
and thin otherwise.  Each keypoint keeps one colour (by index) across images so they can be told apart.
"""
from __future__ import annotations

import colorsys

import numpy as np


def keypoint_colours(k: int) -> list[tuple[int, int, int]]:
    """k distinct, saturated colours spread around the hue circle."""
    out = []
    for i in range(k):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray,
                   links: tuple[tuple[int, int], ...] | list = (), uncertainty: np.ndarray | None = None,
                   scale: int = 1, radius: float = 2.0) -> np.ndarray:
    """Return a copy of ``image`` ([H, W, 3] uint8) with the keypoints drawn.

    keypoints: [K, 2] pixels of ``image`` (x right, y down; pixel centres at +0.5); visible: [K] bool.
    links: keypoint index pairs.  uncertainty: [K] or [K, 2] standard deviations in pixels, drawn as
    ellipses of one standard deviation.  scale: enlarge the image by this integer factor first (lines
    and discs keep their size in the enlarged image).
    """
    from PIL import Image, ImageDraw

    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    vis = np.asarray(visible, bool).reshape(-1)
    if len(kp) != len(vis):
        raise ValueError(f"{len(kp)} keypoints but {len(vis)} visibility flags")
    im = Image.fromarray(np.asarray(image, np.uint8))
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(im)
    xy = kp * scale
    colours = keypoint_colours(len(kp))
    finite = np.isfinite(xy).all(1)
    for a, b in links:
        if not (finite[a] and finite[b]):
            continue
        both = vis[a] and vis[b]
        draw.line([tuple(xy[a]), tuple(xy[b])], fill=(255, 255, 255) if both else (170, 170, 170),
                  width=2 if both else 1)
    if uncertainty is not None:
        sd = np.asarray(uncertainty, np.float64).reshape(len(kp), -1) * scale
        sd = np.broadcast_to(sd, (len(kp), 2))
        for i in np.flatnonzero(finite):
            (x, y), (sx, sy) = xy[i], sd[i]
            draw.ellipse([x - sx, y - sy, x + sx, y + sy], outline=colours[i], width=1)
    for i in np.flatnonzero(finite):
        x, y = xy[i]
        box = [x - radius, y - radius, x + radius, y + radius]
        if vis[i]:
            draw.ellipse(box, fill=colours[i], outline=(0, 0, 0))
        else:
            draw.ellipse(box, outline=colours[i], width=1)
    return np.asarray(im)


def image_grid(images: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """Tile equally sized [H, W, 3] images row by row on a dark background."""
    if not images:
        raise ValueError("no images to tile")
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    out = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), 24, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = img
    return out


#: likelihood strip (``likelihood_strip``): pixels per body-part row, at most this many time columns
STRIP_ROW, STRIP_COLUMNS = 14, 1200


def likelihood_colour(likelihood: np.ndarray, pcutoff: float) -> np.ndarray:
    """[...] likelihoods -> [..., 3] uint8: red below ``pcutoff`` (darker the lower), yellow at it to green at 1,
    grey where there is none (NaN: a frame the decoder never gave)."""
    p = np.nan_to_num(likelihood, nan=-1.0)
    low = np.clip(p / max(pcutoff, 1e-9), 0, 1)[..., None] * [90, 0, 0] + [140, 20, 20]
    high = np.clip((p - pcutoff) / max(1 - pcutoff, 1e-9), 0, 1)[..., None] * [-190, -40, 0] + [230, 200, 40]
    rgb = np.where((p >= pcutoff)[..., None], high, low)
    return np.where((p < 0)[..., None], 150, rgb).astype(np.uint8)


def lowest_per_column(likelihood: np.ndarray, columns: int, pcutoff: float):
    """([C] each column's first row, [C, K] the lowest likelihood of each column's rows (NaN where all are NaN),
    [K] how many rows are under ``pcutoff``) for ``likelihood`` [N, K] cut into C near-equal runs of rows, read a
    chunk of rows at a time (no copy of a long video's array)."""
    from pipeline.exports import row_chunks

    n, k = likelihood.shape
    starts = (np.arange(columns) * n) // columns
    worst, below = np.full((columns, k), np.nan), np.zeros(k, np.int64)
    for chunk in row_chunks(n):
        rows = np.asarray(likelihood[chunk], np.float64)
        first, last = np.searchsorted(starts, [chunk.start, chunk.stop - 1], side="right") - 1   # their columns
        bounds = np.r_[0, starts[first + 1:last + 1] - chunk.start]
        worst[first:last + 1] = np.fmin(worst[first:last + 1], np.fmin.reduceat(rows, bounds, axis=0))
        below += (rows < pcutoff).sum(axis=0)                          # NaN compares False: not counted
    return starts, worst, below


def likelihood_strip(names, likelihood: np.ndarray, frame_numbers: np.ndarray, fps: float, pcutoff: float,
                     video: str = "") -> np.ndarray:
    """[H, W, 3] uint8: a video's likelihood over time, one row per body part, for finding the stretches where
    tracking failed.  likelihood: [N, K] in frame order (a file-backed array is read a chunk of rows at a time);
    frame_numbers: [N].  Each of at most ``STRIP_COLUMNS`` columns shows the *lowest* likelihood of its frames
    (``likelihood_colour``: a single bad frame is not averaged away); the right margin says each part's share of
    frames under ``pcutoff``; the time axis is in minutes:seconds at ``fps``."""
    from PIL import Image, ImageDraw

    n, k = likelihood.shape
    columns = min(STRIP_COLUMNS, n)
    starts, worst, below = lowest_per_column(likelihood, columns, pcutoff)
    left, right, top, bottom = 130, 70, 22, 30
    wide = max(1, 600 // columns)                                      # a short video's frames drawn wider
    width, height = left + columns * wide + right, top + k * STRIP_ROW + bottom
    im = Image.new("RGB", (width, height), "white")
    strip = np.repeat(np.repeat(likelihood_colour(worst.T, pcutoff), STRIP_ROW, axis=0), wide, axis=1)
    im.paste(Image.fromarray(strip), (left, top))
    d = ImageDraw.Draw(im)
    d.text((4, 4), f"{video + ': ' if video else ''}lowest likelihood of every {n / columns:.3g} frame(s); red under "
                   f"pcutoff {pcutoff:g}, grey not decoded", fill="black")
    scale = likelihood_colour(np.linspace(0, 1, 100), pcutoff)[None].repeat(10, axis=0)   # the colour key
    im.paste(Image.fromarray(scale), (width - 130, 6))
    d.text((width - 160, 4), "0", fill="black"), d.text((width - 26, 4), "1", fill="black")
    for i, name in enumerate(names):
        y = top + i * STRIP_ROW + 1
        d.text((4, y), str(name)[:20], fill="black")
        d.text((left + columns * wide + 6, y), f"{100 * below[i] / max(n, 1):.1f} % low", fill="black")
    seconds = frame_numbers[starts] / max(fps, 1e-9)
    span = max(float(seconds[-1] - seconds[0]), 1.0)
    step = next(s for s in (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 1e9) if span / s <= 8)
    for t in np.arange(np.ceil(seconds[0] / step) * step, seconds[-1] + 1e-9, step):
        x = left + int(np.searchsorted(seconds, t)) * wide
        d.line([(x, top + k * STRIP_ROW), (x, top + k * STRIP_ROW + 4)], fill="black")
        d.text((x - 14, top + k * STRIP_ROW + 8), f"{int(t) // 60}:{int(t) % 60:02d}", fill="black")
    return np.asarray(im)
