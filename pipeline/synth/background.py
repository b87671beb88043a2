"""Cluttered backgrounds: a gradient, blotchy low-frequency colour, then random shapes painted over it.

Drawn per instance in numpy (float32) from the instance's generator.  Some shapes take the object's own
colours (``palette``) so that colour alone never separates the object from the background.
"""
from __future__ import annotations

import numpy as np

from pipeline.synth.category import random_colour, uniform


def _upsampled_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Random values on a (cells+1)^2 grid, bilinearly interpolated to size x size x channels."""
    grid = rng.random((cells + 1, cells + 1, channels), dtype=np.float32)
    x = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(cells / size)
    i = np.minimum(x.astype(np.int64), cells - 1)
    f = (x - i).astype(np.float32)
    rows = grid[i] * (1 - f)[:, None, None] + grid[i + 1] * f[:, None, None]          # [size, cells+1, C]
    return rows[:, i] * (1 - f)[None, :, None] + rows[:, i + 1] * f[None, :, None]


def _window(cx: float, cy: float, reach: float, size: int) -> tuple[slice, slice] | None:
    """The pixel rows and columns within ``reach`` (in image fractions) of (cx, cy), or None if empty."""
    x0, x1 = max(int((cx - reach) * size), 0), min(int((cx + reach) * size) + 1, size)
    y0, y1 = max(int((cy - reach) * size), 0), min(int((cy + reach) * size) + 1, size)
    return (slice(y0, y1), slice(x0, x1)) if x0 < x1 and y0 < y1 else None


def draw_background(rng: np.random.Generator, size: int, palette: list[np.ndarray]) -> np.ndarray:
    """A size x size x 3 float32 image in [0, 1]."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    xx, yy = coords[None, :], coords[:, None]
    angle = uniform(rng, 0, 2 * np.pi)
    slope = np.float32(uniform(rng, 0.5, 1.5))
    ramp = np.clip(0.5 + (np.float32(np.cos(angle)) * (xx - 0.5) + np.float32(np.sin(angle)) * (yy - 0.5)) * slope,
                   0, 1)
    c0, c1 = random_colour(rng), random_colour(rng)
    img = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    blotch = _upsampled_noise(rng, size, int(rng.integers(2, 7)), 3)
    img = img * np.float32(1 - 0.5 * uniform(rng, 0, 1)) + blotch * np.float32(0.5 * uniform(rng, 0, 1))

    for _ in range(int(rng.integers(3, 14))):
        colour = palette[int(rng.integers(len(palette)))] * np.float32(uniform(rng, 0.6, 1.2)) \
            if palette and rng.random() < 0.3 else random_colour(rng)
        cx, cy = (float(v) for v in rng.uniform(-0.1, 1.1, 2))
        kind = rng.random()
        t = uniform(rng, 0, np.pi)
        ct, st = np.float32(np.cos(t)), np.float32(np.sin(t))
        if kind < 0.35:                                  # ellipse, shaded like a lit ball or flat
            rx, ry = (float(v) for v in rng.uniform(0.04, 0.35, 2))
            win = _window(cx, cy, max(rx, ry), size)
            if win is None:
                continue
            dx, dy = xx[:, win[1]] - cx, yy[win[0]] - cy
            u, v = (ct * dx + st * dy) / rx, (-st * dx + ct * dy) / ry
            r2 = u * u + v * v
            mask, shade = r2 < 1, 1.0 - np.float32(uniform(rng, 0, 0.6)) * r2
        elif kind < 0.65:                                # rotated rectangle
            hx, hy = (float(v) for v in rng.uniform(0.03, 0.4, 2))
            win = _window(cx, cy, float(np.hypot(hx, hy)), size)
            if win is None:
                continue
            dx, dy = xx[:, win[1]] - cx, yy[win[0]] - cy
            u, v = np.abs(ct * dx + st * dy), np.abs(-st * dx + ct * dy)
            mask, shade = (u < hx) & (v < hy), 1.0 - np.float32(uniform(rng, -0.3, 0.3)) * (u / hx)
        elif kind < 0.9:                                 # thick line (a branch, a cable)
            win = (slice(0, size), slice(0, size))
            dist = np.abs(-st * (xx - cx) + ct * (yy - cy))
            width = uniform(rng, 0.005, 0.05)
            mask, shade = dist < width, 1.0 - np.float32(0.5 * uniform(rng, 0, 1)) * (dist / width) ** 2
        else:                                            # ring
            r, w = uniform(rng, 0.05, 0.3), uniform(rng, 0.01, 0.04)
            win = _window(cx, cy, r + w, size)
            if win is None:
                continue
            dx, dy = xx[:, win[1]] - cx, yy[win[0]] - cy
            mask = np.abs(np.sqrt(dx * dx + dy * dy) - r) < w
            shade = np.ones_like(mask, np.float32)
        region = img[win]
        img[win] = np.where(mask[..., None], colour * shade[..., None], region)

    if rng.random() < 0.5:                               # fine texture (foliage, fabric, gravel)
        fine = _upsampled_noise(rng, size, int(rng.integers(12, 40)), 1)
        img = img * (1 - np.float32(0.4 * uniform(rng, 0.2, 1)) * (fine - 0.5))
    return np.clip(img, 0.0, 1.0).astype(np.float32)
