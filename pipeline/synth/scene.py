"""Everything random about one rendered instance, drawn from its own generator.

``sample_scene(category, seed, index, camera)`` draws the object's parameters, its pose and placement in
front of the camera, the light, up to two occluders and the background.  The generator is seeded from
(seed, category, index) alone, so an instance is the same whatever batch or pool size it is made in.

Camera frame (also of the 3D keypoints): x right, y down, z forward (OpenCV); a pinhole with focal length
``camera.focal`` pixels and principal point at the image centre; pixel centres at integer + 0.5.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.synth.background import draw_background
from pipeline.synth.category import Category, Params, hsv_to_rgb, random_colour, uniform
from pipeline.synth.texture import sample_lattice

MAX_OCCLUDERS = 2
OCCLUDER_NONE, OCCLUDER_BAR, OCCLUDER_BLOB = 0, 1, 2


@dataclass(frozen=True)
class Camera:
    size: int                       # image side in pixels
    fov_deg: float = 30.0           # horizontal field of view

    @property
    def focal(self) -> float:
        return 0.5 * self.size / float(np.tan(np.radians(self.fov_deg) / 2))

    @property
    def centre(self) -> float:
        return 0.5 * self.size

    def as_dict(self) -> dict:
        return {"fx": self.focal, "fy": self.focal, "cx": self.centre, "cy": self.centre,
                "width": self.size, "height": self.size,
                "frame": "x right, y down, z forward (OpenCV); pixel centres at integer + 0.5"}


@dataclass
class Scene:
    index: int
    params: Params                  # the category's shape and appearance parameters (object frame)
    keypoint_guesses: np.ndarray    # [K, 2, 3] object frame: a point near the surface, an outward direction
    rotation: np.ndarray            # [3, 3] object -> camera
    translation: np.ndarray         # [3] camera frame
    scale: float                    # object units -> camera units
    light: dict[str, np.ndarray]    # direction (towards the light, camera frame), colour, sky, ground, exposure
    occluders: dict[str, np.ndarray]
    background: np.ndarray          # [H, W, 3] float32
    sensor_noise: np.ndarray        # [H, W, 3] float32
    blur: float                     # weight of the 3x3 blur mixed into the image, 0 = sharp


def instance_rng(seed: int, category: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(category.encode()), int(index)]))


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Object -> camera rotation: yaw about the object's up axis, then the object frame (y up, z towards
    the viewer) turned into the camera's (y down, z away), then pitch (the camera looking down) and roll."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    to_camera = np.diag([1.0, -1.0, -1.0])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_roll @ r_pitch @ to_camera @ r_yaw


def _occluders(rng: np.random.Generator, centre_cam: np.ndarray, radius: float, palette: list[np.ndarray]
               ) -> dict[str, np.ndarray]:
    """Up to two bars (infinite cylinders) or blobs (ellipsoids) between the camera and the object, whose
    keypoints lie within ``radius`` of ``centre_cam`` (camera frame)."""
    kind = np.zeros(MAX_OCCLUDERS, np.int64)
    centre = np.zeros((MAX_OCCLUDERS, 3), np.float32)
    axes = np.tile(np.eye(3, dtype=np.float32), (MAX_OCCLUDERS, 1, 1))      # rows: the blob's axes / bar axis first
    radii = np.ones((MAX_OCCLUDERS, 3), np.float32)
    colour = np.zeros((MAX_OCCLUDERS, 3), np.float32)
    stripe = np.zeros(MAX_OCCLUDERS, np.float32)
    count = int(rng.choice(3, p=[0.5, 0.35, 0.15]))
    for i in range(count):
        depth = centre_cam[2] - radius * uniform(rng, 1.15, 2.2)
        depth = max(depth, 0.35 * centre_cam[2])
        ratio = depth / centre_cam[2]
        # a point of the image near the object, at that depth
        pix = centre_cam[:2] / centre_cam[2] + rng.uniform(-0.9, 0.9, 2) * radius / centre_cam[2]
        centre[i] = (pix[0] * depth, pix[1] * depth, depth)
        if rng.random() < 0.55:
            kind[i] = OCCLUDER_BAR
            t = uniform(rng, 0, np.pi)
            axis = np.array([np.cos(t), np.sin(t), uniform(rng, -0.4, 0.4)])
            axes[i, 0] = axis / np.linalg.norm(axis)
            radii[i, 0] = radius * ratio * uniform(rng, 0.05, 0.22)
        else:
            kind[i] = OCCLUDER_BLOB
            t = uniform(rng, 0, np.pi)
            axes[i] = [[np.cos(t), np.sin(t), 0], [-np.sin(t), np.cos(t), 0], [0, 0, 1]]
            radii[i] = radius * ratio * rng.uniform(0.15, 0.45, 3)
        colour[i] = palette[int(rng.integers(len(palette)))] * uniform(rng, 0.6, 1.2) if rng.random() < 0.25 \
            else random_colour(rng)
        stripe[i] = uniform(rng, 2.0, 12.0) if rng.random() < 0.4 else 0.0
    return {"kind": kind, "centre": centre, "axes": axes.astype(np.float32), "radii": radii,
            "colour": np.clip(colour, 0, 1).astype(np.float32), "stripe": stripe, "noise": sample_lattice(rng)}


def _tint(rng: np.random.Generator, saturation: float, lo: float, hi: float) -> np.ndarray:
    """A light's colour: any hue, saturation up to ``saturation``, brightness between lo and hi."""
    hue, sat = uniform(rng, 0.0, 1.0), uniform(rng, 0.0, saturation)
    return (hsv_to_rgb(hue, sat, 1.0) * uniform(rng, lo, hi)).astype(np.float32)


def sample_scene(category: Category, seed: int, index: int, camera: Camera) -> Scene:
    """Instance ``index`` of the pool ``seed`` of ``category``, for ``camera``."""
    rng = instance_rng(seed, category.name, index)
    params = category.sample(rng)
    guesses = category.keypoint_guesses(params)
    view = category.view
    rotation = rotation_matrix(np.radians(uniform(rng, *view.yaw)), np.radians(uniform(rng, *view.pitch)),
                               np.radians(uniform(rng, *view.roll)))
    scale = uniform(rng, 0.85, 1.15)

    # frame the keypoints as seen from this view: the larger side of their box covers a random fraction of
    # the image (as a box crop with a margin would), the box centre placed off-centre within the room left
    turned = scale * guesses[:, 0] @ rotation.T
    lo, hi = turned.min(0), turned.max(0)
    half = float(max(hi[0] - lo[0], hi[1] - lo[1])) / 2
    fill = uniform(rng, 0.55, 0.85)
    depth = camera.focal * half / (fill * camera.size / 2)
    offset = rng.uniform(-1.0, 1.0, 2) * (1.0 - fill) * 0.6 * camera.size / 2
    centre_cam = np.array([offset[0] * depth / camera.focal, offset[1] * depth / camera.focal, depth])
    translation = centre_cam - (lo + hi) / 2
    kr = float(np.linalg.norm(turned - (lo + hi) / 2, axis=1).max())

    direction = np.array([uniform(rng, -1, 1), uniform(rng, -1, 0.5), -uniform(rng, 0.3, 1.2)])
    light = {
        "direction": (direction / np.linalg.norm(direction)).astype(np.float32),
        "colour": _tint(rng, 0.25, 0.6, 1.1),
        "sky": _tint(rng, 0.3, 0.2, 0.5),
        "ground": (random_colour(rng, s=(0.0, 0.5)) * uniform(rng, 0.05, 0.3)).astype(np.float32),
        "exposure": np.float32(uniform(rng, 0.85, 1.25)),
    }
    palette = [params[k] for k in category.palette]
    occluders = _occluders(rng, centre_cam, kr, palette)
    background = draw_background(rng, camera.size, palette)
    sensor_noise = (rng.standard_normal((camera.size, camera.size, 3)) * uniform(rng, 0.0, 0.03)).astype(np.float32)
    blur = uniform(rng, 0.0, 0.8) if rng.random() < 0.35 else 0.0
    return Scene(index=index, params=params, keypoint_guesses=guesses, rotation=rotation.astype(np.float32),
                 translation=translation.astype(np.float32), scale=scale, light=light, occluders=occluders,
                 background=background, sensor_noise=sensor_noise, blur=blur)
