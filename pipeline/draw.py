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
