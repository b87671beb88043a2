"""Sphere tracing through a category's distance field, batched and packed: the renderer's core.

``Field`` is a category's signed-distance field for a batch of instances, each with its pose, seen from
the camera: rays are marched in the object's frame.  ``sphere_trace`` advances every live ray by (a
fraction of) its distance bound until it touches the surface or passes its far limit, keeping live rays
packed in rows of one instance each so the work follows the rays that remain (the scene parameters are
gathered per row, not per ray).  ``snap_to_surface`` places keypoints exactly on the surface.

All per-ray arithmetic is exactly rounded (see ``sdf``), and every decision is made per ray, so a ray's
result does not depend on the other rays, instances or threads it is evaluated with.
"""
from __future__ import annotations

import copy

import torch

from pipeline.synth.category import BatchParams, Category
from pipeline.synth.sdf import Vec3

Tensor = torch.Tensor

STEP = 0.9              # fraction of the distance bound advanced per step (the bounds are approximate)
MAX_STEPS = 160         # per keypoint ray (grazing ones crawl); a ray out of steps counts as touching
CHUNK = 65536           # points per distance evaluation: keeps temporaries in cache and off the page allocator
PACK = 256              # most rays per row of the tracer's packed layout (one instance per row)
SNAP_REACH = 0.25       # object units: keypoint searches start this far out along their direction
SNAP_STEPS = 48
INF = float("inf")


class Rotation:
    """A batch of 3x3 rotations as nine [B, 1] tensors, applied with explicit (exactly rounded) sums."""

    def __init__(self, m: Tensor | None = None, entries: list[list[Tensor]] | None = None):
        self.m = entries if entries is not None else \
            [[m[:, i, j].reshape(-1, 1).contiguous() for j in range(3)] for i in range(3)]

    def __call__(self, v: Vec3) -> Vec3:
        m = self.m
        return Vec3(*(m[i][0] * v.x + m[i][1] * v.y + m[i][2] * v.z for i in range(3)))

    def transposed(self) -> "Rotation":
        return Rotation(entries=[[self.m[j][i] for j in range(3)] for i in range(3)])

    def derive(self, transform) -> "Rotation":
        return Rotation(entries=[[transform(e) for e in row] for row in self.m])


class Field:
    """The category's distance field for one batch, with the object's pose: rays in object coordinates.

    Rows of point tensors are instances (or, after ``select``, any per-row choice of instances); the
    distance is evaluated in blocks of rows of about CHUNK points.
    """

    def __init__(self, category: Category, params: BatchParams, rotation: Tensor, translation: Tensor,
                 scale: Tensor):
        self.category, self.params = category, params
        self.rotation = Rotation(rotation)                         # object -> camera
        self.inverse = self.rotation.transposed()
        self.translation = Vec3(*(translation[:, i].reshape(-1, 1).contiguous() for i in range(3)))
        self.scale = scale.reshape(-1, 1)                          # [B, 1] object units -> camera units
        self.origin = self.inverse(-self.translation) / self.scale # the camera in the object frame
        self._blocks: dict[tuple[int, int], Field] = {}

    def select(self, rows: Tensor | slice) -> "Field":
        """The field with one row per entry of ``rows``: instance indices (gathered), or a slice of this
        field's rows (views)."""
        take = lambda t: t[rows]  # noqa: E731
        f = copy.copy(self)
        f.params, f.scale, f._blocks = self.params.select(rows), take(self.scale), {}
        f.rotation, f.inverse = self.rotation.derive(take), self.inverse.derive(take)
        f.translation, f.origin = Vec3(*map(take, self.translation)), Vec3(*map(take, self.origin))
        return f

    def block(self, start: int, stop: int) -> "Field":
        """Rows start..stop-1 (cached: the tracer reuses its blocks between repackings)."""
        key = (start, stop)
        if key not in self._blocks:
            self._blocks[key] = self.select(slice(start, stop))
        return self._blocks[key]

    def blocks(self, rows: int, width: int) -> list[tuple[int, int]]:
        """Row ranges of about CHUNK points each, for points laid out [rows, width]."""
        step = max(1, CHUNK // max(width, 1))
        return [(i, min(i + step, rows)) for i in range(0, rows, step)]

    def to_object(self, directions: Vec3) -> Vec3:
        """Camera-frame unit directions -> object-frame displacement per camera unit along the ray."""
        return self.inverse(directions) / self.scale

    def to_camera(self, points: Vec3) -> Vec3:
        return self.rotation(points) * self.scale + self.translation

    def distance(self, p: Vec3) -> Tensor:
        """Object-frame points (coordinates [rows, R]) -> distance bound in object units [rows, R]."""
        rows, width = torch.broadcast_shapes(p.x.shape, p.y.shape, p.z.shape)
        spans = self.blocks(rows, width)
        if len(spans) == 1:
            return self.category.sdf(p, self.params)
        p = Vec3(*(torch.broadcast_to(c, (rows, width)) for c in p))
        return torch.cat([self.category.sdf(Vec3(p.x[a:b], p.y[a:b], p.z[a:b]), self.block(a, b).params)
                          for a, b in spans])

    def distance_along(self, d: Vec3, t: Tensor) -> Tensor:
        """Distance in camera units at origin + t d, for object-frame ray steps d and t [rows, R]."""
        out = []
        for a, b in self.blocks(*t.shape):
            f, ta = self.block(a, b), t[a:b]
            p = Vec3(f.origin.x + d.x[a:b] * ta, f.origin.y + d.y[a:b] * ta, f.origin.z + d.z[a:b] * ta)
            out.append(self.category.sdf(p, f.params) * f.scale)
        return out[0] if len(out) == 1 else torch.cat(out)


def pack(live: Tensor, row_instance: Tensor, tensors: list[Tensor], width: int
         ) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Repack the live entries of [rows, R] tensors into rows of ``width`` that each hold rays of one
    instance: padding is at most width - 1 per instance, however unequal the instances' ray counts.

    row_instance: [rows] the instance of each row (non-decreasing).  Returns the new live mask
    [rows', width], the new row_instance [rows'] and the repacked tensors (padding: zeros).
    """
    r, c = live.nonzero(as_tuple=True)                      # row-major: grouped by instance
    inst = row_instance[r]
    n_inst = int(row_instance.max()) + 1 if row_instance.numel() else 0
    counts = torch.bincount(inst, minlength=n_inst)
    segments = (counts + width - 1) // width
    first_row = torch.cumsum(segments, 0) - segments
    rank = torch.arange(inst.numel()) - (torch.cumsum(counts, 0) - counts)[inst]
    new_r, new_c = first_row[inst] + torch.div(rank, width, rounding_mode="floor"), rank % width
    n_rows = int(segments.sum())
    out = []
    for x in tensors:
        y = x.new_zeros((n_rows, width))
        y[new_r, new_c] = x[r, c]
        out.append(y)
    new_live = torch.zeros(n_rows, width, dtype=torch.bool)
    new_live[new_r, new_c] = True
    return new_live, torch.repeat_interleave(torch.arange(n_inst), segments), out


def _pack_width(live: Tensor, row_instance: Tensor) -> int:
    """Row width for repacking: PACK, or less when the instances have few live rays each (padding fills
    the last row of every instance)."""
    per_row = live.sum(1)
    active = int(torch.unique_consecutive(row_instance[per_row > 0]).numel())
    mean = int(per_row.sum()) / max(active, 1)
    width = 8
    while width < mean and width < PACK:
        width *= 2
    return width


def sphere_trace(field: Field, d: Vec3, t: Tensor, t_far: Tensor, eps: Tensor, live: Tensor,
                 max_steps: Tensor | int = MAX_STEPS) -> tuple[Tensor, Tensor]:
    """March rays origin + t d (t in camera units) until the surface (distance < eps * t) or t_far.

    d: object-frame ray steps; t, t_far, eps, live, max_steps: [B, R].  Returns (t_hit [B, R], inf where
    no surface was met before t_far; reached [B, R], true where the ray got to t_far).  A ray still
    marching after max_steps crawls along a surface and counts as touching it.  Live rays are kept packed
    in rows of up to PACK rays of one instance each, repacked as they finish.
    """
    bsz, width = t.shape
    t_hit = torch.full((bsz * width,), INF)
    reached = torch.zeros(bsz * width, dtype=torch.bool)
    budget = torch.broadcast_to(torch.as_tensor(max_steps, dtype=torch.float32), (bsz, width))
    state = [torch.arange(bsz * width).reshape(bsz, width), t, t_far, eps, budget,
             *(torch.broadcast_to(c, (bsz, width)) for c in d)]
    row_instance = torch.arange(bsz)
    rows, packed = None, 0
    for step in range(int(budget.max()) if budget.numel() else 0):
        n_live = int(live.sum())
        if n_live == 0:
            break
        if rows is None or n_live < 0.7 * packed:
            live, row_instance, state = pack(live, row_instance, state, _pack_width(live, row_instance))
            rows, packed = field.select(row_instance), n_live
        ids, t, t_far, eps, budget, dx, dy, dz = state
        dist = rows.distance_along(Vec3(dx, dy, dz), t)
        hit = live & ((dist < eps * t) | (budget <= step))
        t_hit[ids[hit]] = t[hit]
        t = t + dist * STEP
        done = live & ~hit & (t >= t_far)
        reached[ids[done]] = True
        live = live & ~hit & ~done
        state[1] = t
    t_hit[state[0][live]] = state[1][live]                   # out of steps with the last budget
    return t_hit.reshape(bsz, width), reached.reshape(bsz, width)


def snap_to_surface(field: Field, points: Vec3, directions: Vec3) -> Vec3:
    """Place keypoints exactly on the surface: the first surface point met looking back along -direction
    from point + SNAP_REACH * direction (object frame; coordinates [B, K]).

    Sphere tracing finds the surface to within 1e-5, then Newton steps along the ray polish it; a start
    point inside the object, or a ray that meets no surface, is a fault of the category's guesses.
    """
    d = directions.normalized()
    start = points + d * SNAP_REACH
    f = field.distance(start)
    if (f <= 0).any():
        b, i = (f <= 0).nonzero()[0].tolist()
        raise RuntimeError(f"{field.category.name}: the search for keypoint {field.category.keypoints[i]} "
                           f"(batch row {b}) starts inside the object")
    t = torch.zeros_like(f)
    for _ in range(SNAP_STEPS):
        marching = f >= 1e-5                 # per keypoint, so a result never depends on the others
        if not marching.any():
            break
        t = torch.where(marching, t + f * STEP, t)
        f = field.distance(start - d * t)
    h = 1e-4
    for _ in range(3):                       # Newton along the ray: f(t + h) - f(t - h) ~ 2h df/dt
        probe = Vec3(*(torch.cat([c - dc * t, c - dc * (t + h), c - dc * (t - h)], dim=1) for c, dc in zip(start, d)))
        f3 = field.distance(probe).reshape(f.shape[0], 3, -1)
        slope = (f3[:, 1] - f3[:, 2]) / (2 * h)
        t = t - f3[:, 0] / torch.where(slope.abs() > 1e-6, slope, torch.full_like(slope, -1.0))
    points = start - d * t
    residual = field.distance(points).abs()
    if (residual > 1e-4).any() or (t > 2 * SNAP_REACH).any():
        b, i = ((residual > 1e-4) | (t > 2 * SNAP_REACH)).nonzero()[0].tolist()
        raise RuntimeError(f"{field.category.name}: keypoint {field.category.keypoints[i]} of batch row {b} "
                           f"did not land on the surface (distance {float(residual[b, i]):.5f}, "
                           f"{float(t[b, i]):.3f} along its search ray)")
    return points
