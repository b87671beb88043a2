"""A rigid car-like object (the paper's CarFusion kind of object).

A rounded body with sloped hood and boot, a cabin cut by windshield and rear-window planes, wheel arches
and four wheels, headlights, tail lights and side mirrors.  The class varies its proportions (length,
width, ride height, wheel size and wheelbase, cabin length, height, position and slopes: from a low coupe
to a tall van) and its paint, glass, rim and light colours.

14 keypoints on the surface: the outer centre of each wheel, the four lights, the two mirror tips and the
four corners of the roof.  Left and right are the car's own (its left is the driver's side in a
left-hand-drive car, +x in the object frame).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.synth import sdf as S
from pipeline.synth.category import (BatchParams, Category, Params, ViewRange, f32, hsv_to_rgb, random_colour,
                                     scalar, uniform)
from pipeline.synth.sdf import Vec3
from pipeline.synth.texture import clamp01, fbm, mix, sample_lattice, smoothstep

Tensor = torch.Tensor

KEYPOINTS = (
    "right_front_wheel", "left_front_wheel", "right_back_wheel", "left_back_wheel",
    "right_headlight", "left_headlight", "right_taillight", "left_taillight",
    "right_mirror", "left_mirror",
    "right_front_roof", "left_front_roof", "right_back_roof", "left_back_roof",
)

GROUND = -0.5          # y of the ground the wheels stand on


def _plane(normal_yz: tuple[float, float], through: tuple[float, float]) -> np.ndarray:
    """A plane with normal (0, ny, nz) through (y, z), as [nx, ny, nz, offset] (positive side outside)."""
    n = np.array([0.0, *normal_yz])
    n /= np.linalg.norm(n)
    return np.array([*n, n[1] * through[0] + n[2] * through[1]], np.float32)


class Car(Category):
    name = "synth_car"
    keypoints = KEYPOINTS
    view = ViewRange(yaw=(-180.0, 180.0), pitch=(0.0, 35.0), roll=(-8.0, 8.0))
    palette = ("paint",)

    # ---- parameters ----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Params:
        u = lambda lo, hi: uniform(rng, lo, hi)  # noqa: E731
        half_len, half_w = u(0.95, 1.2), u(0.38, 0.47)
        wheel_r, wheel_w = u(0.15, 0.2), u(0.055, 0.08)
        wheel_y = GROUND + wheel_r
        body_bottom = GROUND + u(0.07, 0.14)
        body_top = body_bottom + u(0.26, 0.4)
        wheelbase = u(0.58, 0.72) * half_len
        cab_w = half_w * u(0.8, 0.92)
        cab_h = u(0.2, 0.36)
        cab_len = u(0.38, 0.62) * half_len
        cab_z = u(-0.35, 0.05) * half_len
        cab_top = body_top + cab_h
        screen = np.radians(u(30.0, 60.0))          # windshield slope from vertical
        rear = np.radians(u(10.0, 55.0))
        front_z, back_z = cab_z + cab_len, cab_z - cab_len

        p: Params = {
            "body_c": f32(0.0, (body_bottom + body_top) / 2, 0.0),
            "body_h": f32(half_w, (body_top - body_bottom) / 2, half_len),
            "body_round": scalar(u(0.05, 0.12)),
            "hood": _plane((1.0, np.tan(np.radians(u(5.0, 25.0)))), (body_top - 0.02, half_len - u(0.1, 0.3))),
            "boot": _plane((1.0, -np.tan(np.radians(u(5.0, 30.0)))), (body_top - 0.02, -half_len + u(0.05, 0.25))),
            "cab_c": f32(0.0, body_top + cab_h / 2 - 0.03, cab_z),
            "cab_h": f32(cab_w, cab_h / 2 + 0.03, cab_len),
            "cab_round": scalar(u(0.03, 0.08)),
            "screen": _plane((np.sin(screen), np.cos(screen)), (cab_top, front_z - cab_h * np.tan(screen) * 0.5)),
            "rear": _plane((np.sin(rear), -np.cos(rear)), (cab_top, back_z + cab_h * np.tan(rear) * 0.5)),
            "wheel_c": np.array([[-(half_w - wheel_w + 0.01), wheel_y, wheelbase],
                                 [half_w - wheel_w + 0.01, wheel_y, wheelbase],
                                 [-(half_w - wheel_w + 0.01), wheel_y, -wheelbase],
                                 [half_w - wheel_w + 0.01, wheel_y, -wheelbase]], np.float32),
            "wheel_r": scalar(wheel_r), "wheel_w": scalar(wheel_w),
            "arch_r": scalar(wheel_r + u(0.02, 0.05)),
        }
        light_y = body_top - u(0.05, 0.1)
        light_x = half_w - u(0.08, 0.14)
        p["lights_c"] = np.array([[-light_x, light_y, half_len - 0.04], [light_x, light_y, half_len - 0.04],
                                  [-light_x, light_y, -half_len + 0.04], [light_x, light_y, -half_len + 0.04]],
                                 np.float32)
        p["lights_r"] = f32(u(0.07, 0.12), u(0.025, 0.045), 0.06)
        mirror_z = front_z - cab_h * np.tan(screen) * 0.75
        p["mirrors_c"] = np.array([[-(cab_w + 0.06), body_top + 0.06, mirror_z],
                                   [cab_w + 0.06, body_top + 0.06, mirror_z]], np.float32)
        p["mirror_h"] = f32(0.06, 0.035, 0.025)

        # appearance
        paint = random_colour(rng, s=(0.0, 1.0), v=(0.08, 0.95))
        p["paint"] = paint
        p["roof_paint"] = random_colour(rng) if rng.random() < 0.2 else paint
        p["glass"] = hsv_to_rgb(u(0.0, 1.0), u(0.0, 0.4), u(0.03, 0.3))
        p["tyre"] = hsv_to_rgb(0.0, 0.0, u(0.03, 0.15))
        p["rim"] = random_colour(rng, s=(0.0, 0.3), v=(0.3, 0.9)) if rng.random() < 0.8 else paint
        p["head_colour"] = hsv_to_rgb(u(0.1, 0.18), u(0.0, 0.3), u(0.75, 1.0)) if rng.random() < 0.6 else \
            random_colour(rng)
        p["tail_colour"] = hsv_to_rgb(u(-0.03, 0.08), u(0.6, 1.0), u(0.4, 0.95)) if rng.random() < 0.7 else \
            random_colour(rng)
        p["trim"] = hsv_to_rgb(0.0, 0.0, u(0.02, 0.2)) if rng.random() < 0.6 else paint * 0.8
        p["grime"] = scalar(u(0.0, 0.35))
        p["shine"] = scalar(u(0.3, 1.0))
        p["noise"] = sample_lattice(rng)
        p["half_len"], p["body_top"], p["cab_top"] = scalar(half_len), scalar(body_top), scalar(cab_top)
        return p

    def keypoint_guesses(self, p: Params) -> np.ndarray:
        wc, ww = p["wheel_c"], float(p["wheel_w"])
        wheels = [((c[0] + np.sign(c[0]) * ww, c[1], c[2]), (np.sign(c[0]), 0.0, 0.0)) for c in wc]
        lc = p["lights_c"]
        lights = [((c[0], c[1], c[2] + np.sign(c[2]) * 0.1), (0.0, 0.0, np.sign(c[2]))) for c in lc]
        mc, mh = p["mirrors_c"], p["mirror_h"]
        mirrors = [((c[0] + np.sign(c[0]) * mh[0], c[1], c[2]), (np.sign(c[0]), 0.0, 0.0)) for c in mc]
        cab_c, cab_h = p["cab_c"], p["cab_h"]
        top = float(p["cab_top"])
        screen, rear = p["screen"], p["rear"]
        # where the windshield and rear-window planes meet the roof
        z_front = (screen[3] - screen[1] * top) / screen[2]
        z_back = (rear[3] - rear[1] * top) / rear[2]
        x = cab_h[0] - 0.06
        roof = []
        for z, zdir in ((z_front - 0.05, 0.4), (z_back + 0.05, -0.4)):
            for sign in (-1.0, 1.0):
                roof.append(((sign * x, top - 0.02, z), (0.5 * sign, 1.0, zdir)))
        pts = wheels + lights + mirrors + roof
        return np.array([[np.asarray(a, np.float32), np.asarray(b, np.float32)] for a, b in pts], np.float32)

    def bound(self, p: Params) -> tuple[np.ndarray, np.ndarray]:
        w = float(p["body_h"][0]) + 0.2
        return f32(-w, GROUND - 0.02, -float(p["half_len"]) - 0.05), \
            f32(w, float(p["cab_top"]) + 0.05, float(p["half_len"]) + 0.05)

    # ---- geometry -------------------------------------------------------------------------------------
    @staticmethod
    def _plane(p: Vec3, s: BatchParams, name: str) -> Tensor:
        return p.y * s.s(name, 1) + p.z * s.s(name, 2) - s.s(name, 3)

    def _parts(self, p: Vec3, s: BatchParams) -> dict[str, Tensor]:
        body = S.round_box(p, s.v("body_c"), s.v("body_h"), s.s("body_round"))
        body = S.smooth_intersect(body, self._plane(p, s, "hood"), 0.04)
        body = S.smooth_intersect(body, self._plane(p, s, "boot"), 0.04)
        cabin = S.round_box(p, s.v("cab_c"), s.v("cab_h"), s.s("cab_round"))
        cabin = S.smooth_intersect(cabin, self._plane(p, s, "screen"), 0.03)
        cabin = S.smooth_intersect(cabin, self._plane(p, s, "rear"), 0.03)
        wheels = arches = None
        r, w, ar = s.s("wheel_r"), s.s("wheel_w"), s.s("arch_r")
        for i in range(4):
            c = s.v("wheel_c", i)
            wheel = S.cylinder_x(p, c, r, w, 0.025)
            arch = S.cylinder_x(p, c, ar, w + 0.1, 0.0)
            wheels = wheel if wheels is None else torch.minimum(wheels, wheel)
            arches = arch if arches is None else torch.minimum(arches, arch)
        lights = S.ellipsoid(p, s.v("lights_c", 0), s.v("lights_r"))
        for i in (1, 2, 3):
            lights = torch.minimum(lights, S.ellipsoid(p, s.v("lights_c", i), s.v("lights_r")))
        mirrors = torch.minimum(S.round_box(p, s.v("mirrors_c", 0), s.v("mirror_h"), 0.015),
                                S.round_box(p, s.v("mirrors_c", 1), s.v("mirror_h"), 0.015))
        return {"body": body, "cabin": cabin, "wheels": wheels, "arches": arches, "lights": lights,
                "mirrors": mirrors}

    def sdf(self, p: Vec3, s: BatchParams) -> Tensor:
        f = self._parts(p, s)
        d = S.smooth_union(f["body"], f["cabin"], 0.05)
        d = S.smooth_subtract(d, f["arches"], 0.02)
        d = torch.minimum(d, f["lights"])
        d = S.smooth_union(d, f["mirrors"], 0.02)
        return torch.minimum(d, f["wheels"])

    # ---- appearance -----------------------------------------------------------------------------------
    def albedo(self, p: Vec3, s: BatchParams) -> tuple[Vec3, Tensor]:
        f = self._parts(p, s)
        noise = fbm(p, s.raw("noise"), 4.0)
        colour = s.v("paint") * (1.0 - s.s("grime") * noise)
        colour = mix(colour, s.v("roof_paint"), smoothstep(-0.02, 0.0, p.y - s.s("cab_top") + 0.03))
        # glass: the cabin between the belt line and the roof, but for a pillar in the middle
        on_cabin = smoothstep(0.01, 0.0, f["cabin"] - f["body"] + 0.005)
        belt = smoothstep(0.0, 0.015, p.y - s.s("body_top") - 0.02)
        under_roof = smoothstep(0.0, 0.015, s.s("cab_top") - 0.045 - p.y)
        pillar = 1.0 - smoothstep(0.025, 0.04, torch.abs(p.z - s.s("cab_c", 2)))
        glass = on_cabin * belt * under_roof * (1.0 - pillar)
        colour = mix(colour, s.v("glass") * (0.8 + 0.4 * noise), glass)
        # grille and bumpers: dark trim low on the front and back
        trim = smoothstep(0.0, 0.01, torch.abs(p.z) - s.s("half_len") + 0.06) * \
            smoothstep(0.0, 0.01, s.s("body_c", 1) - p.y + 0.02)
        colour = mix(colour, s.v("trim"), trim)
        # lights: front and back colours
        on_light = smoothstep(0.008, 0.0, f["lights"])
        colour = mix(colour, mix(s.v("tail_colour"), s.v("head_colour"), (p.z > 0).float()), on_light)
        colour = mix(colour, s.v("trim"), smoothstep(0.008, 0.0, f["mirrors"]) * 0.5)
        # wheels: tyre, and the rim on the outer face
        on_wheel = smoothstep(0.008, 0.0, f["wheels"])
        dy = p.y - s.s("wheel_c", 0, 1)
        dz = torch.abs(p.z) - torch.abs(s.s("wheel_c", 0, 2))
        rim = smoothstep(0.65, 0.55, S.length2(dy, dz) / s.s("wheel_r"))
        colour = mix(colour, mix(s.v("tyre"), s.v("rim"), rim), on_wheel)
        specular = s.s("shine") * (1.0 - on_wheel * (1.0 - rim)) + 0.6 * glass
        return clamp01(colour), specular
