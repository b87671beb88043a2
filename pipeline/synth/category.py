"""What a synthetic object category provides to the renderer.

A category is a parametric 3D object: ``sample`` draws one instance's shape and appearance parameters
(identity, expression, joint angles, colours, pattern) as small numpy arrays of fixed shapes; ``sdf`` and
``albedo`` evaluate the signed distance and the surface colour for a batch of points, with each parameter
served as ``[B, 1]`` tensors by ``BatchParams``; ``keypoint_guesses`` places the K keypoints near the
surface with an outward direction (the renderer snaps them onto it exactly along it).  The object frame is
x = the object's own left, y = up, z = forward (where the face looks, the car drives, the animal walks);
units are about half a head height.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.synth.sdf import Vec3

Params = dict[str, np.ndarray]
Tensor = torch.Tensor


class BatchParams:
    """A category's parameters stacked over a batch of B instances, served as ``[B, 1]`` tensors that
    broadcast against ``[B, R]`` point coordinates (cached: the tracer asks for them at every step)."""

    def __init__(self, arrays: dict[str, Tensor]):
        self.arrays = arrays                      # name -> [B, *shape]
        self._cache: dict[tuple, object] = {}

    @classmethod
    def stack(cls, params: list[Params]) -> "BatchParams":
        return cls({k: torch.as_tensor(np.stack([p[k] for p in params])) for k in params[0]})

    def s(self, name: str, *index: int) -> Tensor:
        """A scalar parameter (or one element of an array parameter) as [B, 1]."""
        key = ("s", name, index)
        if key not in self._cache:
            a = self.arrays[name]
            self._cache[key] = a[(slice(None),) + index].reshape(-1, 1).contiguous()
        return self._cache[key]

    def v(self, name: str, *index: int) -> Vec3:
        """A 3-vector parameter (or row ``index`` of an array of them) as a Vec3 of [B, 1]."""
        key = ("v", name, index)
        if key not in self._cache:
            a = self.arrays[name][(slice(None),) + index]
            self._cache[key] = Vec3(*(a[:, i].reshape(-1, 1).contiguous() for i in range(3)))
        return self._cache[key]

    def raw(self, name: str) -> Tensor:
        """A parameter as stacked, [B, *shape] (e.g. a noise lattice)."""
        return self.arrays[name]

    def select(self, rows: Tensor | slice) -> "BatchParams":
        """One row per entry of ``rows``: instance indices (gathered; repeats allowed) or a slice (views)."""
        return _Derived(self, lambda t: t[rows])


class _Derived(BatchParams):
    """Parameters of another BatchParams with a row transform applied, lazily and cached (a function
    only pays for the parameters it reads)."""

    def __init__(self, parent: BatchParams, transform):
        super().__init__({})
        self.parent, self.transform = parent, transform

    def s(self, name: str, *index: int) -> Tensor:
        key = ("s", name, index)
        if key not in self._cache:
            self._cache[key] = self.transform(self.parent.s(name, *index))
        return self._cache[key]

    def v(self, name: str, *index: int) -> Vec3:
        key = ("v", name, index)
        if key not in self._cache:
            self._cache[key] = Vec3(*(self.transform(c) for c in self.parent.v(name, *index)))
        return self._cache[key]

    def raw(self, name: str) -> Tensor:
        key = ("raw", name)
        if key not in self._cache:
            self._cache[key] = self.transform(self.parent.raw(name))
        return self._cache[key]


@dataclass(frozen=True)
class ViewRange:
    """Pose ranges in degrees.  Yaw turns the object about its up axis (0 = facing the camera), pitch
    tilts the camera to look down on it (positive) or up, roll turns the image."""

    yaw: tuple[float, float]
    pitch: tuple[float, float]
    roll: tuple[float, float]


class Category(ABC):
    name: str                      # the card's name (pipeline/cards/<name>.yaml)
    keypoints: tuple[str, ...]     # in the card's order
    view: ViewRange
    palette: tuple[str, ...]       # colour parameters that backgrounds and occluders sometimes borrow

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Params:
        """One instance's shape and appearance parameters (float32 arrays, fixed shapes per category)."""

    @abstractmethod
    def keypoint_guesses(self, params: Params) -> np.ndarray:
        """[K, 2, 3]: per keypoint (in ``keypoints`` order) an object-frame point near the surface and an
        outward direction; the keypoint is the first surface point seen from 0.25 units out along that
        direction, looking back (``render.snap_to_surface``)."""

    @abstractmethod
    def bound(self, params: Params) -> tuple[np.ndarray, np.ndarray]:
        """An axis-aligned box (low corner [3], high corner [3]) holding the whole object: rays that miss
        it see background, and tracing starts where a ray enters it."""

    @abstractmethod
    def sdf(self, p: Vec3, s: BatchParams) -> Tensor:
        """Signed distance in object units at points p (coordinates [B, R]) -> [B, R]."""

    @abstractmethod
    def albedo(self, p: Vec3, s: BatchParams) -> tuple[Vec3, Tensor]:
        """Surface colour (coordinates r, g, b in [0, 1]) and specular strength at surface points p."""


def uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour from hue (turns), saturation, value in [0, 1]."""
    import colorsys

    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def random_colour(rng: np.random.Generator, s: tuple[float, float] = (0.0, 1.0),
                  v: tuple[float, float] = (0.1, 1.0)) -> np.ndarray:
    return hsv_to_rgb(rng.random(), uniform(rng, *s), uniform(rng, *v))


def f32(*values) -> np.ndarray:
    """A float32 vector."""
    return np.array(values, np.float32)


def scalar(value: float) -> np.ndarray:
    """A float32 scalar parameter (0-d, so it stacks to [B] and broadcasts as [B, 1] against [B, R])."""
    return np.array(value, np.float32)
