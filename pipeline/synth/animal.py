"""An articulated four-legged animal (the paper's ATRW tiger kind of object).

A torso (a tapered capsule with a belly), a neck and head with snout and ears, four two-segment legs with
paws, and a two-segment tail, blended smoothly.  Shape varies the proportions (body length and girth,
leg length and thickness, neck, head, snout, ears, tail: from a cat to a horse); pose varies every joint
angle (leg swing and knee bend per leg, neck raise, head turn and tilt, tail curl); appearance varies the
coat colour and pattern (plain, stripes, spots), a lighter belly and darker paws.

15 keypoints on the surface: nose, ear tips, three points along the spine (withers, mid back, tail base),
the tail tip, and on the outer side of each leg the knee and the paw.  Left and right are the animal's
own (+x in the object frame).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.synth import sdf as S
from pipeline.synth.category import (BatchParams, Category, Params, ViewRange, f32, hsv_to_rgb, random_colour,
                                     scalar, uniform)
from pipeline.synth.sdf import Vec3
from pipeline.synth.texture import clamp01, fbm, mix, sample_lattice, smoothstep, stripes

Tensor = torch.Tensor

KEYPOINTS = (
    "nose", "left_ear", "right_ear", "withers", "mid_back", "tail_base", "tail_tip",
    "left_front_knee", "left_front_paw", "right_front_knee", "right_front_paw",
    "left_back_knee", "left_back_paw", "right_back_knee", "right_back_paw",
)
LEGS = ("left_front", "right_front", "left_back", "right_back")


def _direction(down_angle_deg: float) -> np.ndarray:
    """A unit vector in the y-z plane: straight down at 0 degrees, turning forward (+z) for positive angles."""
    a = np.radians(down_angle_deg)
    return np.array([0.0, -np.cos(a), np.sin(a)])


class Animal(Category):
    name = "synth_animal"
    keypoints = KEYPOINTS
    view = ViewRange(yaw=(-180.0, 180.0), pitch=(-5.0, 35.0), roll=(-10.0, 10.0))
    palette = ("coat", "accent")

    # ---- parameters ----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Params:
        u = lambda lo, hi: uniform(rng, lo, hi)  # noqa: E731
        half_body = u(0.42, 0.68)
        r_hip, r_chest = u(0.16, 0.25), u(0.19, 0.29)
        torso_y = u(0.0, 0.1)
        shoulder = np.array([0.0, torso_y, half_body])
        hip = np.array([0.0, torso_y + u(-0.06, 0.06), -half_body])
        upper_len, lower_len = u(0.22, 0.4), u(0.22, 0.4)
        leg_r = u(0.07, 0.12)
        p: Params = {
            "torso_a": hip.astype(np.float32), "torso_b": shoulder.astype(np.float32),
            "torso_r": f32(r_hip, r_chest),
            "belly_c": f32(0.0, torso_y - 0.3 * r_chest, 0.1 * half_body),
            "belly_r": f32(0.85 * r_chest, 0.95 * r_chest, 1.05 * half_body),
        }
        # legs: joint at the torso side, knee, paw
        joints, knees, paws = [], [], []
        for leg in LEGS:
            side = 1.0 if leg.startswith("left") else -1.0
            front = leg.endswith("front")
            base = (shoulder if front else hip) + np.array([side * 0.55 * (r_chest if front else r_hip),
                                                            -0.35 * r_chest, 0.0])
            swing = u(-35.0, 30.0) if front else u(-20.0, 45.0)
            bend = u(0.0, 50.0) if front else -u(15.0, 70.0)
            knee = base + upper_len * _direction(swing)
            paw = knee + lower_len * _direction(swing + bend)
            joints.append(base), knees.append(knee), paws.append(paw)
        p["leg_joint"] = np.array(joints, np.float32)
        p["leg_knee"] = np.array(knees, np.float32)
        p["leg_paw"] = np.array(paws, np.float32)
        p["leg_r"] = f32(leg_r, 0.7 * leg_r, 0.55 * leg_r)
        p["paw_r"] = f32(0.8 * leg_r, 0.55 * leg_r, 1.1 * leg_r)

        # neck and head
        neck_len, neck_raise = u(0.25, 0.5), np.radians(u(5.0, 60.0))
        neck_base = shoulder + np.array([0.0, 0.3 * r_chest, 0.3 * r_chest])
        head_c = neck_base + neck_len * np.array([0.0, np.sin(neck_raise), np.cos(neck_raise)])
        head_r = u(0.12, 0.19)
        turn, tilt = np.radians(u(-40.0, 40.0)), np.radians(u(5.0, 50.0))
        snout_dir = np.array([np.sin(turn) * np.cos(tilt), -np.sin(tilt), np.cos(turn) * np.cos(tilt)])
        nose = head_c + (head_r + u(0.1, 0.3)) * snout_dir
        ear_len = u(0.08, 0.2)
        ears_base, ears_tip = [], []
        for side in (1.0, -1.0):
            lateral = np.array([side * np.cos(turn), 0.0, -side * np.sin(turn)])
            base = head_c + head_r * (0.55 * lateral + np.array([0.0, 0.7, 0.0])) - 0.1 * head_r * snout_dir
            tip_dir = 0.35 * lateral + np.array([0.0, 1.0, 0.0]) - 0.2 * snout_dir
            ears_base.append(base), ears_tip.append(base + ear_len * tip_dir / np.linalg.norm(tip_dir))
        p["neck_a"], p["neck_b"] = neck_base.astype(np.float32), head_c.astype(np.float32)
        p["neck_r"] = f32(u(0.6, 0.8) * r_chest, 0.75 * head_r)
        p["head_c"], p["head_r"] = head_c.astype(np.float32), scalar(head_r)
        p["nose"] = nose.astype(np.float32)
        p["snout_r"] = f32(0.7 * head_r, u(0.035, 0.065))
        p["ears_a"], p["ears_b"] = np.array(ears_base, np.float32), np.array(ears_tip, np.float32)
        p["ear_r"] = f32(u(0.035, 0.06), 0.012)

        # tail: two segments from the top of the rump
        tail_len = u(0.2, 0.45)
        t0 = hip + np.array([0.0, 0.45 * r_hip, -0.75 * r_hip])
        lift = u(-60.0, 65.0)                                           # from raised (-60) to drooping (65)
        t1 = t0 + tail_len * _direction(-90.0 + lift)                   # -90: straight back
        curl = float(np.clip(-90.0 + lift + u(-60.0, 60.0), -170.0, -20.0))
        t2 = t1 + tail_len * (_direction(curl) + np.array([u(-0.5, 0.5), 0.0, 0.0]))
        p["tail"] = np.array([t0, t1, t2], np.float32)
        p["tail_r"] = f32(u(0.035, 0.06), 0.035, 0.02)

        # appearance
        coat = hsv_to_rgb(u(0.02, 0.12), u(0.2, 0.9), u(0.15, 0.95)) if rng.random() < 0.6 else \
            random_colour(rng, s=(0.0, 0.8), v=(0.1, 0.95))
        p["coat"] = coat
        p["accent"] = random_colour(rng, s=(0.0, 0.8), v=(0.02, 0.9)) if rng.random() < 0.5 else \
            (coat * u(0.1, 0.5)).astype(np.float32)
        p["belly"] = np.clip(coat + u(0.0, 0.5), 0, 1).astype(np.float32)
        p["socks"] = (coat * u(0.2, 1.4)).clip(0, 1).astype(np.float32)
        pattern = rng.random()
        p["stripe_amount"] = scalar(1.0 if pattern < 0.35 else 0.0)
        p["spot_amount"] = scalar(1.0 if 0.35 <= pattern < 0.6 else 0.0)
        d = np.array([u(-0.2, 0.2), u(-0.4, 0.4), 1.0])
        p["stripe_dir"] = (d / np.linalg.norm(d)).astype(np.float32)
        p["stripe_freq"] = scalar(u(3.0, 8.0))
        p["fur"] = scalar(u(0.1, 0.4))
        p["noise"] = sample_lattice(rng)
        p["torso_y"] = scalar(torso_y)
        return p

    def keypoint_guesses(self, p: Params) -> np.ndarray:
        up = (0.0, 1.0, 0.0)
        nose, head_c = p["nose"], p["head_c"]
        snout = (nose - head_c) / np.linalg.norm(nose - head_c)
        ear_dirs = p["ears_b"] - p["ears_a"]
        hip, shoulder = p["torso_a"], p["torso_b"]
        r_hip, r_chest = p["torso_r"]
        tail = p["tail"]
        pts = [(nose, snout), (p["ears_b"][0], ear_dirs[0]), (p["ears_b"][1], ear_dirs[1]),
               (shoulder + (0, r_chest, 0), up), ((hip + shoulder) / 2 + (0, (r_hip + r_chest) / 2, 0), up),
               (tail[0] + (0, 0.05, 0), (0.0, 1.0, 0.3)), (tail[2], tail[2] - tail[1])]
        for i, leg in enumerate(LEGS):
            side = 1.0 if leg.startswith("left") else -1.0
            pts.append((p["leg_knee"][i], (side, 0.0, 0.0)))
            pts.append((p["leg_paw"][i], (side, 0.0, 0.0)))
        return np.array([[np.asarray(a, np.float32), np.asarray(b, np.float32)] for a, b in pts], np.float32)

    def bound(self, p: Params) -> tuple[np.ndarray, np.ndarray]:
        pts = np.concatenate([p["torso_a"][None], p["torso_b"][None], p["leg_joint"], p["leg_knee"], p["leg_paw"],
                              p["head_c"][None], p["nose"][None], p["ears_b"], p["tail"]])
        margin = float(p["torso_r"].max()) + 0.12
        lo, hi = pts.min(0) - margin, pts.max(0) + margin
        lo[2] = min(lo[2], float(p["belly_c"][2] - p["belly_r"][2]) - 0.05)
        hi[2] = max(hi[2], float(p["belly_c"][2] + p["belly_r"][2]) + 0.05)
        return lo.astype(np.float32), hi.astype(np.float32)

    # ---- geometry -------------------------------------------------------------------------------------
    def _parts(self, p: Vec3, s: BatchParams) -> dict[str, Tensor]:
        torso = S.tapered_capsule(p, s.v("torso_a"), s.v("torso_b"), s.s("torso_r", 0), s.s("torso_r", 1))
        torso = S.smooth_union(torso, S.ellipsoid(p, s.v("belly_c"), s.v("belly_r")), 0.12)
        legs = paws = None
        r0, r1, r2 = s.s("leg_r", 0), s.s("leg_r", 1), s.s("leg_r", 2)
        for i in range(4):
            knee = s.v("leg_knee", i)
            leg = S.smooth_union(S.tapered_capsule(p, s.v("leg_joint", i), knee, r0, r1),
                                 S.tapered_capsule(p, knee, s.v("leg_paw", i), r1, r2), 0.04)
            paw = S.ellipsoid(p, s.v("leg_paw", i) + Vec3(0.0, 0.0, s.s("paw_r", 2) * 0.5), s.v("paw_r"))
            legs = leg if legs is None else torch.minimum(legs, leg)
            paws = paw if paws is None else torch.minimum(paws, paw)
        legs = S.smooth_union(legs, paws, 0.04)
        neck = S.tapered_capsule(p, s.v("neck_a"), s.v("neck_b"), s.s("neck_r", 0), s.s("neck_r", 1))
        head = S.smooth_union(S.sphere(p, s.v("head_c"), s.s("head_r")),
                              S.tapered_capsule(p, s.v("head_c"), s.v("nose"), s.s("snout_r", 0), s.s("snout_r", 1)),
                              0.06)
        ears = torch.minimum(S.tapered_capsule(p, s.v("ears_a", 0), s.v("ears_b", 0), s.s("ear_r", 0), s.s("ear_r", 1)),
                             S.tapered_capsule(p, s.v("ears_a", 1), s.v("ears_b", 1), s.s("ear_r", 0), s.s("ear_r", 1)))
        head = S.smooth_union(head, ears, 0.03)
        tail = torch.minimum(
            S.tapered_capsule(p, s.v("tail", 0), s.v("tail", 1), s.s("tail_r", 0), s.s("tail_r", 1)),
            S.tapered_capsule(p, s.v("tail", 1), s.v("tail", 2), s.s("tail_r", 1), s.s("tail_r", 2)))
        return {"torso": torso, "legs": legs, "paws": paws, "neck": neck, "head": head, "tail": tail}

    def sdf(self, p: Vec3, s: BatchParams) -> Tensor:
        f = self._parts(p, s)
        d = S.smooth_union(f["torso"], f["legs"], 0.1)
        d = S.smooth_union(d, f["neck"], 0.1)
        d = S.smooth_union(d, f["head"], 0.08)
        return S.smooth_union(d, f["tail"], 0.05)

    # ---- appearance -----------------------------------------------------------------------------------
    def albedo(self, p: Vec3, s: BatchParams) -> tuple[Vec3, Tensor]:
        f = self._parts(p, s)
        noise = fbm(p, s.raw("noise"), 5.0)
        colour = s.v("coat") * (1.0 - s.s("fur") * 0.5 + s.s("fur") * noise)
        belly = smoothstep(0.0, -0.12, p.y - s.s("torso_y") + 0.1 + 0.1 * noise) * smoothstep(0.05, 0.0, f["torso"])
        colour = mix(colour, s.v("belly"), belly * 0.8)
        pattern = stripes(p, s.v("stripe_dir"), s.s("stripe_freq"), noise * 2.0, 0.15) * s.s("stripe_amount")
        spots = smoothstep(0.58, 0.64, noise) * s.s("spot_amount")
        colour = mix(colour, s.v("accent"), torch.maximum(pattern, spots) * (1.0 - belly))
        colour = mix(colour, s.v("socks"), smoothstep(0.02, 0.0, f["paws"]))
        nose_tip = smoothstep(0.08, 0.05, (p - s.v("nose")).length())
        colour = mix(colour, s.v("accent") * 0.3, nose_tip)
        specular = 0.08 + 0.5 * nose_tip
        return clamp01(colour), specular
