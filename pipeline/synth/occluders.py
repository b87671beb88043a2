"""Occluders in front of the object: bars (infinite cylinders) and blobs (ellipsoids), hit analytically.

``scene.sample_scene`` draws up to MAX_OCCLUDERS per instance between the camera and the object; here a
batch of them is intersected with camera rays in closed form (exactly rounded arithmetic, as everywhere
in the renderer).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.synth.scene import MAX_OCCLUDERS, OCCLUDER_BAR, OCCLUDER_BLOB, Scene
from pipeline.synth.sdf import Vec3

Tensor = torch.Tensor
INF = float("inf")


def column(x: np.ndarray | list) -> Tensor:
    """Per-instance values as a [B, 1] float32 column."""
    return torch.as_tensor(np.asarray(x, np.float32)).reshape(-1, 1)


def _quadratic_hit(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Smallest positive root of a t^2 + b t + c (a > 0), or inf."""
    disc = b * b - 4.0 * a * c
    t = (-b - torch.sqrt(torch.clamp_min(disc, 0.0))) / (2.0 * torch.clamp_min(a, 1e-12))
    return torch.where((disc > 0) & (t > 0), t, torch.full_like(t, INF))


class Occluders:
    """The batch's occluders (bars: infinite cylinders; blobs: ellipsoids) as [B, 1] parameter columns."""

    def __init__(self, scenes: list[Scene]):
        occ = {k: np.stack([s.occluders[k] for s in scenes]) for k in scenes[0].occluders}
        self.raw = occ
        self.present = [bool((occ["kind"][:, i] != 0).any()) for i in range(MAX_OCCLUDERS)]
        self.kind = [torch.as_tensor(occ["kind"][:, i]).reshape(-1, 1) for i in range(MAX_OCCLUDERS)]
        vec = lambda a: Vec3(*(column(a[:, j]) for j in range(3)))  # noqa: E731
        self.centre = [vec(occ["centre"][:, i]) for i in range(MAX_OCCLUDERS)]
        self.axes = [[vec(occ["axes"][:, i, a]) for a in range(3)] for i in range(MAX_OCCLUDERS)]
        self.radii = [vec(occ["radii"][:, i]) for i in range(MAX_OCCLUDERS)]

    def hits(self, dirs: Vec3, with_normals: bool = False) -> tuple[Tensor, Tensor, Vec3 | None]:
        """Analytic hits by rays from the camera origin along unit ``dirs`` ([B, R]): t [B, R] (inf where
        none), the index of the occluder hit [B, R], and (optionally) its unit normal."""
        shape = torch.broadcast_shapes(dirs.x.shape, dirs.y.shape, dirs.z.shape)
        best_t = torch.full(shape, INF)
        best_i = torch.zeros(shape, dtype=torch.int64)
        best_n = Vec3(*(torch.zeros(shape) for _ in range(3))) if with_normals else None
        for i in range(MAX_OCCLUDERS):
            if not self.present[i]:
                continue
            kind, c, axes, radii = self.kind[i], self.centre[i], self.axes[i], self.radii[i]
            # bar: an infinite cylinder about axes[0]
            a = axes[0]
            dp = dirs - a * dirs.dot(a)
            wp = -c - a * (-c).dot(a)
            t_bar = _quadratic_hit(dp.dot(dp), 2.0 * wp.dot(dp), wp.dot(wp) - radii.x * radii.x)
            # blob: an ellipsoid with those axes and radii
            o_e = Vec3(*(ax.dot(-c) for ax in axes)) / radii
            d_e = Vec3(*(ax.dot(dirs) for ax in axes)) / radii
            t_blob = _quadratic_hit(d_e.dot(d_e), 2.0 * o_e.dot(d_e), o_e.dot(o_e) - 1.0)
            t = torch.where(kind == OCCLUDER_BAR, t_bar, torch.where(kind == OCCLUDER_BLOB, t_blob, INF))
            closer = t < best_t
            best_t = torch.where(closer, t, best_t)
            best_i = torch.where(closer, i, best_i)
            if with_normals:
                tz = torch.where(torch.isfinite(t), t, 0.0)
                rel = dirs * tz - c
                n_bar = rel - a * rel.dot(a)
                q = (o_e + d_e * tz) / radii
                n_blob = axes[0] * q.x + axes[1] * q.y + axes[2] * q.z
                bar = kind == OCCLUDER_BAR
                n = Vec3(*(torch.where(bar, nb, nl) for nb, nl in zip(n_bar, n_blob))).normalized()
                best_n = Vec3(*(torch.where(closer, nn, bn) for nn, bn in zip(n, best_n)))
        return best_t, best_i, best_n
