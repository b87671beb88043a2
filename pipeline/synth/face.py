"""A soft, deformable face-like head (the paper's WFLW / SynthesisAI kind of object).

Cranium, face, jaw, chin and neck are ellipsoids and capsules blended smoothly; eyes sit in carved
sockets; brows, nose, nostril wings and lips are blended on.  Identity varies the proportions (head and
jaw width, eye spacing and size, nose length and projection, mouth width, lip thickness); expression
varies eye opening, brow raise, smile and an open mouth (which also drops the jaw).

23 keypoints on the surface (3D-projected, like the SynthesisAI faces of Table 2: a jaw point behind the
cheek is hidden, not moved to the silhouette): 7 along the jaw, 2 per brow, 2 per eye, 4 on the nose,
4 on the mouth.  Left and right are the subject's own (the subject's left eye appears on the image's
right in a frontal view).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.synth import sdf as S
from pipeline.synth.category import (BatchParams, Category, Params, ViewRange, f32, hsv_to_rgb, random_colour,
                                     scalar, uniform)
from pipeline.synth.sdf import Vec3
from pipeline.synth.texture import clamp01, fbm, grey, mix, sample_lattice, smoothstep, stripes

Tensor = torch.Tensor

KEYPOINTS = (
    "right_jaw_1", "right_jaw_2", "right_jaw_3", "chin", "left_jaw_3", "left_jaw_2", "left_jaw_1",
    "right_brow_outer", "right_brow_inner", "left_brow_inner", "left_brow_outer",
    "right_eye_outer_corner", "right_eye_inner_corner", "left_eye_inner_corner", "left_eye_outer_corner",
    "nose_bridge", "nose_tip", "right_nostril", "left_nostril",
    "right_mouth_corner", "upper_lip", "left_mouth_corner", "lower_lip",
)

FACE_MASK_CENTRE = (0.0, -0.12, 0.22)
FACE_MASK_RADII_YZ = (0.78, 0.62)
CRANIUM_CENTRE = (0.0, 0.18, -0.08)


def _ellipsoid_front(centre, radii, x: float, y: float) -> float:
    """z of the front of an axis-aligned ellipsoid at (x, y), or -inf outside its outline."""
    u = 1.0 - ((x - centre[0]) / radii[0]) ** 2 - ((y - centre[1]) / radii[1]) ** 2
    return centre[2] + radii[2] * float(np.sqrt(u)) if u > 0 else -np.inf


def _front_z(cranium_r, face_w: float, x: float, y: float) -> float:
    """Approximate z of the head's front surface at (x, y), used to place features on it."""
    face = _ellipsoid_front(FACE_MASK_CENTRE, (face_w, *FACE_MASK_RADII_YZ), x, y)
    cranium = _ellipsoid_front(CRANIUM_CENTRE, cranium_r, x, y)
    return max(face, cranium) + 0.03                              # + the smooth union's swelling


class Face(Category):
    name = "synth_face"
    keypoints = KEYPOINTS
    view = ViewRange(yaw=(-90.0, 90.0), pitch=(-30.0, 30.0), roll=(-25.0, 25.0))
    palette = ("skin", "hair")

    # ---- parameters ----------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator) -> Params:
        u = lambda lo, hi: uniform(rng, lo, hi)  # noqa: E731
        hw, hh, hd = u(0.66, 0.80), u(0.86, 1.0), u(0.82, 0.95)
        fw, jw = u(0.55, 0.66), u(0.46, 0.62)
        mouth_open = max(0.0, u(-0.06, 0.12))
        ex, ey, ew = u(0.25, 0.32), u(0.05, 0.14), u(0.10, 0.135)
        eye_open = u(0.3, 1.0)
        raise_ = u(-0.03, 0.08)
        nose_len, nose_proj, nose_w = u(0.27, 0.40), u(0.14, 0.26), u(0.8, 1.25)
        mw, my, smile, lip = u(0.17, 0.26), u(-0.53, -0.43) - 0.3 * mouth_open, u(-0.04, 0.08), u(0.8, 1.3)
        brow_thick = u(0.8, 1.3)
        fz = lambda x, y: _front_z((hw, hh, hd), fw, x, y)  # noqa: E731

        p: Params = {
            "cranium_c": f32(*CRANIUM_CENTRE), "cranium_r": f32(hw, hh, hd),
            "face_c": f32(*FACE_MASK_CENTRE), "face_r": f32(fw, *FACE_MASK_RADII_YZ),
            "jaw_c": f32(0.0, -0.5 - 0.5 * mouth_open, 0.18), "jaw_r": f32(jw, 0.46, 0.55),
            "chin_c": f32(0.0, -0.86 - mouth_open, 0.52), "chin_r": scalar(u(0.16, 0.23)),
            "neck_a": f32(0.0, -0.45, -0.22), "neck_b": f32(0.0, -1.35, -0.3),
            "neck_r": scalar(u(0.36, 0.44)),
            "ears_c": np.array([[-(hw - 0.02), 0.0, -0.06], [hw - 0.02, 0.0, -0.06]], np.float32),
            "ears_r": np.tile(f32(0.06, u(0.16, 0.21), u(0.10, 0.13)), (2, 1)),
        }
        eye_z = fz(ex, ey)
        p["sockets_c"] = np.array([[-ex, ey, eye_z + 0.03], [ex, ey, eye_z + 0.03]], np.float32)
        p["sockets_r"] = np.tile(f32(ew + 0.04, 0.06 + 0.05 * eye_open, 0.1), (2, 1))
        p["eyes_c"] = np.array([[-ex, ey, eye_z - 0.08], [ex, ey, eye_z - 0.08]], np.float32)
        p["eyes_r"] = np.tile(f32(ew, 0.035 + 0.045 * eye_open, 0.1), (2, 1))
        gaze = f32(u(-0.4, 0.4) * ew, u(-0.2, 0.2) * ew)
        p["iris_xy"] = np.array([[-ex + gaze[0], ey + gaze[1]], [ex + gaze[0], ey + gaze[1]]], np.float32)
        p["iris_r"] = scalar(u(0.040, 0.055) * (0.6 + 0.4 * eye_open))

        inner_x, outer_x = ex - 0.07, ex + ew + 0.05
        inner_y, outer_y = ey + 0.16 + raise_, ey + 0.12 + 0.6 * raise_ + u(-0.03, 0.02)
        p["brows_a"] = np.array([[-inner_x, inner_y, fz(inner_x, inner_y) - 0.01],
                                 [inner_x, inner_y, fz(inner_x, inner_y) - 0.01]], np.float32)
        p["brows_b"] = np.array([[-outer_x, outer_y, fz(outer_x, outer_y) - 0.04],
                                 [outer_x, outer_y, fz(outer_x, outer_y) - 0.04]], np.float32)
        p["brows_r"] = f32(0.032 * brow_thick, 0.022 * brow_thick)

        tip_y = ey - nose_len
        tip_z = fz(0.0, tip_y) + nose_proj - 0.08
        p["nose_a"] = f32(0.0, ey + 0.02, fz(0.0, ey) - 0.05)
        p["nose_b"] = f32(0.0, tip_y, tip_z)
        p["nose_r"] = f32(0.05, 0.08 * nose_w)
        p["alae_c"] = np.array([[-0.085 * nose_w, tip_y + 0.02, tip_z - 0.11],
                                [0.085 * nose_w, tip_y + 0.02, tip_z - 0.11]], np.float32)
        p["alae_r"] = scalar(0.065 * nose_w)

        mz = fz(0.0, my)
        corner_z = fz(mw, my) - 0.05
        upper = f32(0.0, my + 0.025 + 0.5 * mouth_open, mz + 0.01)
        lower = f32(0.0, my - 0.03 - 0.7 * mouth_open, mz - 0.005)
        right, left = f32(-mw, my + smile, corner_z), f32(mw, my + smile, corner_z)
        p["lips_a"] = np.stack([right, left, right, left])
        p["lips_b"] = np.stack([upper, upper, lower, lower])
        p["lips_ra"] = np.full(4, 0.016, np.float32)
        p["lips_rb"] = f32(0.032 * lip, 0.032 * lip, 0.038 * lip, 0.038 * lip)
        p["mouth_c"] = f32(0.0, my - 0.1 * mouth_open, mz + 0.03)
        p["mouth_r"] = f32(0.85 * mw, 0.008 + 0.55 * mouth_open, 0.11)

        # appearance
        if rng.random() < 0.75:
            skin = hsv_to_rgb(u(0.02, 0.10), u(0.25, 0.65), u(0.30, 0.95))
        else:
            skin = random_colour(rng, s=(0.15, 0.8), v=(0.3, 0.95))
        hair = random_colour(rng, s=(0.2, 0.9), v=(0.05, 0.9)) if rng.random() < 0.3 else \
            hsv_to_rgb(u(0.03, 0.12), u(0.2, 0.8), u(0.05, 0.85))
        p["skin"], p["hair"] = skin, hair
        p["lip_colour"] = random_colour(rng, s=(0.3, 0.9), v=(0.2, 0.8)) if rng.random() < 0.3 else \
            np.clip(skin * f32(0.85, 0.55, 0.55) * u(0.7, 1.1), 0, 1).astype(np.float32)
        p["iris_colour"] = random_colour(rng, s=(0.2, 0.9), v=(0.1, 0.6))
        p["sclera"] = hsv_to_rgb(u(0.0, 1.0), u(0.0, 0.15), u(0.7, 1.0))
        p["hairline"] = scalar(u(0.3, 0.55) if rng.random() < 0.85 else 5.0)      # 5: bald
        p["paint"] = random_colour(rng, s=(0.3, 1.0), v=(0.2, 1.0))
        p["paint_amount"] = scalar(u(0.3, 0.9) if rng.random() < 0.25 else 0.0)
        p["paint_dir"] = rng.normal(size=3).astype(np.float32)
        p["paint_dir"] /= np.linalg.norm(p["paint_dir"])
        p["paint_freq"] = scalar(u(1.0, 4.0))
        p["mottle"] = scalar(u(0.05, 0.35))
        p["noise"] = sample_lattice(rng)
        return p

    def keypoint_guesses(self, p: Params) -> np.ndarray:
        hw, jw = float(p["cranium_r"][0]), float(p["jaw_r"][0])
        drop = -0.5 - float(p["jaw_c"][1])            # jaw drop from an open mouth, 0.5 x mouth opening
        jaw = []
        for sign in (-1.0, 1.0):
            jaw.append([((sign * (hw - 0.08), -0.22, 0.15), (sign, 0.0, 0.6)),
                        ((sign * (jw + 0.02), -0.62 - 0.8 * drop, 0.12), (sign, -0.5, 0.2)),
                        ((sign * (0.5 * jw + 0.06), -0.92 - 1.6 * drop, 0.45), (0.6 * sign, -0.8, 0.5))])
        chin_c, chin_r = p["chin_c"], float(p["chin_r"])
        chin = ((0.0, float(chin_c[1]) - chin_r + 0.05, float(chin_c[2]) + 0.05), (0.0, -0.6, 1.0))
        front = (0.0, 0.0, 1.0)
        brow_up = (0.0, 0.3, 1.0)
        brows = [(p["brows_b"][0], brow_up), (p["brows_a"][0], brow_up), (p["brows_a"][1], brow_up),
                 (p["brows_b"][1], brow_up)]
        ec, er = p["eyes_c"], p["eyes_r"]
        eyes = [(ec[0] - [er[0][0], 0, 0], front), (ec[0] + [er[0][0], 0, 0], front),
                (ec[1] - [er[1][0], 0, 0], front), (ec[1] + [er[1][0], 0, 0], front)]
        alae, ar = p["alae_c"], float(p["alae_r"])
        nose = [(p["nose_a"], front), (p["nose_b"], (0.0, -0.2, 1.0)),
                (alae[0] - [ar, 0, 0], (-1.0, 0.0, 0.8)), (alae[1] + [ar, 0, 0], (1.0, 0.0, 0.8))]
        la, lb = p["lips_a"], p["lips_b"]
        mouth = [(la[0], front), (lb[0], (0.0, -0.1, 1.0)), (la[1], front), (lb[2], (0.0, -0.3, 1.0))]
        pts = jaw[0] + [chin] + jaw[1][::-1] + brows + eyes + nose + mouth
        return np.array([[np.asarray(a, np.float32), np.asarray(b, np.float32)] for a, b in pts], np.float32)

    def bound(self, p: Params) -> tuple[np.ndarray, np.ndarray]:
        hw = float(p["cranium_r"][0])
        return f32(-hw - 0.1, -1.9, -1.1), f32(hw + 0.1, 1.25, 1.3)

    # ---- geometry -------------------------------------------------------------------------------------
    def _head(self, p: Vec3, s: BatchParams) -> Tensor:
        d = S.smooth_union(S.ellipsoid(p, s.v("cranium_c"), s.v("cranium_r")),
                           S.ellipsoid(p, s.v("face_c"), s.v("face_r")), 0.3)
        d = S.smooth_union(d, S.ellipsoid(p, s.v("jaw_c"), s.v("jaw_r")), 0.3)
        d = S.smooth_union(d, S.sphere(p, s.v("chin_c"), s.s("chin_r")), 0.25)
        neck_r = s.s("neck_r")
        d = S.smooth_union(d, S.tapered_capsule(p, s.v("neck_a"), s.v("neck_b"), neck_r, neck_r + 0.04), 0.2)
        ears = torch.minimum(S.ellipsoid(p, s.v("ears_c", 0), s.v("ears_r", 0)),
                             S.ellipsoid(p, s.v("ears_c", 1), s.v("ears_r", 1)))
        return S.smooth_union(d, ears, 0.05)

    @staticmethod
    def _pair(fn, *args) -> Tensor:
        return torch.minimum(fn(0, *args), fn(1, *args))

    def _parts(self, p: Vec3, s: BatchParams) -> dict[str, Tensor]:
        """Distances to the features, each [B, R]."""
        sockets = self._pair(lambda i: S.ellipsoid(p, s.v("sockets_c", i), s.v("sockets_r", i)))
        eyes = self._pair(lambda i: S.ellipsoid(p, s.v("eyes_c", i), s.v("eyes_r", i)))
        brows = self._pair(lambda i: S.tapered_capsule(p, s.v("brows_a", i), s.v("brows_b", i),
                                                       s.s("brows_r", 0), s.s("brows_r", 1)))
        alae = self._pair(lambda i: S.sphere(p, s.v("alae_c", i), s.s("alae_r")))
        nose = S.smooth_union(S.tapered_capsule(p, s.v("nose_a"), s.v("nose_b"), s.s("nose_r", 0), s.s("nose_r", 1)),
                              alae, 0.05)
        lips = S.tapered_capsule(p, s.v("lips_a", 0), s.v("lips_b", 0), s.s("lips_ra", 0), s.s("lips_rb", 0))
        for i in (1, 2, 3):
            lips = torch.minimum(lips, S.tapered_capsule(p, s.v("lips_a", i), s.v("lips_b", i),
                                                         s.s("lips_ra", i), s.s("lips_rb", i)))
        mouth = S.ellipsoid(p, s.v("mouth_c"), s.v("mouth_r"))
        return {"sockets": sockets, "eyes": eyes, "brows": brows, "nose": nose, "lips": lips, "mouth": mouth}

    def sdf(self, p: Vec3, s: BatchParams) -> Tensor:
        f = self._parts(p, s)
        d = S.smooth_subtract(self._head(p, s), f["sockets"], 0.06)
        d = S.smooth_union(d, f["brows"], 0.04)
        d = S.smooth_union(d, f["nose"], 0.08)
        d = S.smooth_union(d, f["lips"], 0.03)
        d = S.smooth_subtract(d, f["mouth"], 0.02)
        return torch.minimum(d, f["eyes"])

    # ---- appearance -----------------------------------------------------------------------------------
    def albedo(self, p: Vec3, s: BatchParams) -> tuple[Vec3, Tensor]:
        f = self._parts(p, s)
        noise = fbm(p, s.raw("noise"), 3.0)
        mottle = s.s("mottle")
        skin = s.v("skin") * (1.0 - 0.5 * mottle + mottle * noise)
        paint = stripes(p, s.v("paint_dir"), s.s("paint_freq"), noise * 1.5) * s.s("paint_amount")
        colour = mix(skin, s.v("paint"), paint)
        hair = smoothstep(0.0, 0.05, p.y - 0.55 * p.z + 0.15 * noise - s.s("hairline"))
        colour = mix(colour, s.v("hair") * (0.7 + 0.6 * noise), hair)
        colour = mix(colour, s.v("hair") * 0.8, smoothstep(0.02, 0.0, f["brows"]))
        colour = mix(colour, s.v("lip_colour"), smoothstep(0.015, 0.0, f["lips"]))
        colour = mix(colour, s.v("lip_colour") * 0.08 + 0.02, smoothstep(0.0, -0.02, f["mouth"]))
        # eyes: sclera, iris, pupil
        on_eye = smoothstep(0.012, 0.002, f["eyes"])
        r_iris = torch.minimum(S.length2(p.x - s.s("iris_xy", 0, 0), p.y - s.s("iris_xy", 0, 1)),
                               S.length2(p.x - s.s("iris_xy", 1, 0), p.y - s.s("iris_xy", 1, 1)))
        ir = s.s("iris_r")
        eye = mix(s.v("sclera"), s.v("iris_colour"), smoothstep(ir, ir * 0.85, r_iris))
        eye = mix(eye, grey(0.03), smoothstep(ir * 0.45, ir * 0.35, r_iris))
        colour = mix(colour, eye, on_eye)
        specular = 0.25 + 0.6 * on_eye - 0.15 * hair
        return clamp01(colour), specular
