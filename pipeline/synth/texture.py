"""Procedural surface patterns: lattice value noise, stripes and spots, evaluated in the object's frame.

Every pattern reads per-instance random numbers (a noise lattice, directions, frequencies) drawn by the
category's sampler, so two instances of a category never share a texture, and it moves with the object.
Like ``sdf``, only exactly rounded operations are used (no sin/exp), keeping renders batch-independent.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.synth.sdf import Vec3

Tensor = torch.Tensor

LATTICE = 8          # value-noise lattice side (wraps around)


def sample_lattice(rng: np.random.Generator) -> np.ndarray:
    """Random values in [0, 1] on a LATTICE^3 grid, flattened (a category's 'noise' parameter)."""
    return rng.random(LATTICE ** 3).astype(np.float32)


def smoothstep(e0: float | Tensor, e1: float | Tensor, x: Tensor) -> Tensor:
    t = torch.clamp((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def value_noise(p: Vec3, lattice: Tensor, frequency: float) -> Tensor:
    """Trilinear value noise in [0, 1] at points p (coordinates [B, R]); lattice: [B, LATTICE^3]."""
    bsz = lattice.shape[0]
    cells, weights = [], []
    for c in (p.x, p.y, p.z):
        q = c * frequency + 64.0                  # keep coordinates positive for the integer lattice
        base = torch.floor(q)
        f = q - base
        f = f * f * (3.0 - 2.0 * f)
        i = base.to(torch.int64) % LATTICE
        cells.append((i, (i + 1) % LATTICE))
        weights.append((1.0 - f, f))
    out = None
    for cx in (0, 1):
        for cy in (0, 1):
            for cz in (0, 1):
                index = (cells[0][cx] * LATTICE + cells[1][cy]) * LATTICE + cells[2][cz]
                v = torch.gather(lattice, 1, index.reshape(bsz, -1)).reshape(index.shape)
                term = v * (weights[0][cx] * weights[1][cy] * weights[2][cz])
                out = term if out is None else out + term
    return out


def fbm(p: Vec3, lattice: Tensor, frequency: float) -> Tensor:
    """Two octaves of value noise, in [0, 1]."""
    return value_noise(p, lattice, frequency) * 0.65 + value_noise(p + 17.0, lattice, frequency * 2.3) * 0.35


def stripes(p: Vec3, direction: Vec3, frequency: Tensor | float, warp: Tensor, sharpness: float = 0.25) -> Tensor:
    """A soft stripe mask in [0, 1] across ``direction``, bent by ``warp`` ([B, R])."""
    s = p.dot(direction) * frequency + warp
    tri = torch.abs(s - torch.floor(s) - 0.5) * 2.0          # triangle wave in [0, 1]
    return smoothstep(0.5 - sharpness, 0.5 + sharpness, tri)


def mix(a: Vec3, b: Vec3, t: Tensor) -> Vec3:
    """Blend colours a and b by t."""
    return a * (1.0 - t) + b * t


def grey(value: float | Tensor) -> Vec3:
    return Vec3(value, value, value)


def clamp01(c: Vec3) -> Vec3:
    return Vec3(torch.clamp(c.x, 0.0, 1.0), torch.clamp(c.y, 0.0, 1.0), torch.clamp(c.z, 0.0, 1.0))
