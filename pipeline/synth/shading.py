"""Shading: the object's and the occluders' colours under the scene's light, and the image blur.

A Lambert key light, a hemispherical ambient (sky above, ground below) darkened by a one-sample ambient
occlusion, and a Blinn-Phong highlight whose strength the category's albedo function sets per point.
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.synth.occluders import Occluders
from pipeline.synth.sdf import Vec3
from pipeline.synth.texture import clamp01, mix, stripes, value_noise
from pipeline.synth.trace import Field

Tensor = torch.Tensor


def shade(albedo: Vec3, specular: Tensor, normal: Vec3, view: Vec3, ao: Tensor, light: dict[str, Vec3]) -> Vec3:
    """Lambert key light + hemispherical ambient + Blinn-Phong highlight (exponent 32).  Camera frame."""
    lam = torch.clamp_min(normal.dot(light["direction"]), 0.0)
    up = 0.5 - 0.5 * normal.y                                      # camera y points down
    ambient = mix(light["ground"], light["sky"], up)
    half = (light["direction"] + view).normalized()
    s = torch.clamp_min(normal.dot(half), 0.0)
    for _ in range(5):
        s = s * s
    return albedo * (ambient * ao + light["colour"] * lam) + light["colour"] * (s * specular)


TETRAHEDRON = ((1.0, -1.0, -1.0), (-1.0, -1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, 1.0, 1.0))


def shade_object(field: Field, t: Tensor, dirs: Vec3, light: dict[str, Vec3], eps: float) -> tuple[Vec3, Tensor]:
    """Colour of the object where rays along camera directions dirs ([B, R]) stopped, at t, within
    eps * t of its surface; and t moved onto the surface by a Newton step along the ray (at most 4 eps t:
    a ray grazing the surface keeps its t), for the depth map."""
    d_obj = field.to_object(dirs)
    p = field.origin + d_obj * t
    r = p.x.shape[1]
    h = 2e-3
    probe = Vec3(*(torch.cat([c + h * o[i] for o in TETRAHEDRON], dim=1) for i, c in enumerate(p)))
    f = field.distance(probe).reshape(-1, 4, r)
    grad = Vec3(*(f[:, 0] * TETRAHEDRON[0][i] + f[:, 1] * TETRAHEDRON[1][i] + f[:, 2] * TETRAHEDRON[2][i]
                  + f[:, 3] * TETRAHEDRON[3][i] for i in range(3))) / (4 * h)
    n_obj = grad.normalized()
    # Newton along the ray: the tetrahedron's mean is f(p) and grad . d its slope per camera unit
    slope = grad.dot(d_obj)
    f_p = (f[:, 0] + f[:, 1] + f[:, 2] + f[:, 3]) * 0.25
    limit = 4 * eps * t
    step = torch.clamp(-f_p / torch.clamp_max(slope, -1e-3), -limit, limit)
    ao = torch.clamp(field.distance(p + n_obj * 0.1) / 0.1, 0.0, 1.0) * 0.7 + 0.3
    albedo, specular = field.category.albedo(p, field.params)
    return shade(albedo, specular, field.rotation(n_obj), -dirs, ao, light), t + torch.where(slope < 0, step, 0.0)


def shade_occluders(occ: Occluders, dirs: Vec3, light: dict[str, Vec3]) -> Vec3:
    """Colour of the occluders seen along camera directions dirs ([B, R], rays known to hit one)."""
    t, index, normal = occ.hits(dirs, with_normals=True)

    def pick(values: np.ndarray) -> Tensor:              # per-occluder values [B, MAX] -> per ray [B, R]
        return torch.gather(torch.as_tensor(np.ascontiguousarray(values, np.float32)), 1, index)

    raw = occ.raw
    q = (dirs * torch.where(torch.isfinite(t), t, 0.0) - Vec3(*(pick(raw["centre"][..., j]) for j in range(3)))) \
        / pick(raw["radii"][..., 0])
    grain = value_noise(q, torch.as_tensor(raw["noise"]), 1.5)
    stripe = pick(raw["stripe"])
    band = stripes(q, Vec3(*(pick(raw["axes"][:, :, 0, j]) for j in range(3))), stripe * 0.25, grain) * (stripe > 0)
    albedo = Vec3(*(pick(raw["colour"][..., j]) for j in range(3))) * (0.7 + 0.6 * grain)
    albedo = mix(albedo, albedo * 0.35, band)
    return shade(clamp01(albedo), torch.full_like(t, 0.3), normal, -dirs, torch.ones_like(t), light)


def blur(img: Tensor, amount: Tensor) -> Tensor:
    """Mix a 3x3 box blur into img [B, H, W, 3] by amount [B]."""
    pad = torch.nn.functional.pad(img.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    h, w = img.shape[1:3]
    acc = None
    for dy in range(3):
        for dx in range(3):
            s = pad[:, dy:dy + h, dx:dx + w]
            acc = s if acc is None else acc + s
    a = amount.reshape(-1, 1, 1, 1)
    return img * (1.0 - a) + acc * (a / 9.0)
