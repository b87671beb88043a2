"""Render a batch of scenes: images, depth maps, keypoints in 2D and 3D, and their exact visibility.

For a batch of scenes of one category, every pixel's ray (through the pixel centre) and every keypoint's
ray (through the keypoint's exact projection) are sphere-traced together (``trace``) against the
category's distance field, from where each ray enters the object's bounding box; occluders are hit
analytically (``occluders``); hit pixels are shaded (``shading``) over the scene's background.

A keypoint is visible when it projects inside the image, its ray reaches it (to within
``VISIBILITY_TOL``) without touching the object's surface, and no occluder lies in front of it: hidden
behind the object's own surface or behind an occluder means invisible.

All per-ray arithmetic is exactly rounded (see ``sdf``), so each instance's pixels are identical whatever
batch it is rendered in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.synth.category import BatchParams, Category
from pipeline.synth.occluders import Occluders, column
from pipeline.synth.scene import Camera, Scene
from pipeline.synth.sdf import Vec3
from pipeline.synth.shading import blur, shade_object, shade_occluders
from pipeline.synth.trace import CHUNK, INF, MAX_STEPS, PACK, Field, pack, snap_to_surface, sphere_trace

Tensor = torch.Tensor

PIXEL_EPS = 0.5         # an image ray stops within half a pixel footprint of the surface
PIXEL_STEPS = 64        # per image ray: those still marching graze a silhouette
KEYPOINT_EPS = 2e-5     # a keypoint ray counts a surface as touched within this fraction of its length
VISIBILITY_TOL = 0.02   # object units: the last stretch before the keypoint that is not tested


@dataclass
class Rendered:
    images: np.ndarray            # [B, H, W, 3] uint8
    depth: np.ndarray             # [B, H, W] camera z of the object's surface; inf where the ray misses it
    occluder_depth: np.ndarray    # [B, H, W] camera z of the nearest occluder; inf where none
    keypoints: np.ndarray         # [B, K, 2] pixels (x right, y down)
    keypoints_3d: np.ndarray      # [B, K, 3] camera frame
    visible: np.ndarray           # [B, K]
    self_occluded: np.ndarray     # [B, K] the object's own surface lies in front of the keypoint
    occluded: np.ndarray          # [B, K] an occluder lies in front of it
    in_image: np.ndarray          # [B, K]
    boxes: np.ndarray             # [B, 4] x0, y0, x1, y1 around the object's visible pixels and keypoints


def _np(t: Tensor) -> np.ndarray:
    return t.cpu().numpy()


def image_directions(camera: Camera, x: Tensor, y: Tensor) -> Vec3:
    """Unit camera-frame directions of the rays through image points (x, y) in pixels."""
    return Vec3((x - camera.centre) / camera.focal, (y - camera.centre) / camera.focal, torch.ones_like(x)).normalized()


def pixel_directions(camera: Camera) -> Vec3:
    """Unit camera-frame directions through the pixel centres, row-major, each coordinate [1, H*W]."""
    c = torch.arange(camera.size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(c, c, indexing="ij")
    return image_directions(camera, x.reshape(1, -1), y.reshape(1, -1))


def _compact(live: Tensor, tensors: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Move each row's live entries of [B, R] tensors to the front and drop the columns no row needs."""
    b, r = live.nonzero(as_tuple=True)
    width = int(live.sum(1).max()) if b.numel() else 0
    pos = (torch.cumsum(live, dim=1) - 1)[b, r]
    out = []
    for x in tensors:
        y = x.new_zeros((live.shape[0], width))
        y[b, pos] = x[b, r]
        out.append(y)
    new_live = torch.zeros(live.shape[0], width, dtype=torch.bool)
    new_live[b, pos] = True
    return new_live, out


def _columns(width: int, bsz: int) -> list[slice]:
    """Column ranges of a [bsz, width] layout holding about CHUNK elements each."""
    step = max(1, CHUNK // max(bsz, 1))
    return [slice(i, min(i + step, width)) for i in range(0, width, step)]


def _cols(v: Vec3, sl: slice) -> Vec3:
    return Vec3(v.x[:, sl], v.y[:, sl], v.z[:, sl])


def _single_threaded(fn):
    """Run ``fn`` with one torch thread on the given device (see ``render``), restoring the thread count."""
    @functools.wraps(fn)
    def wrapped(*args, device: str | torch.device = "cpu", **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if torch.device(device).type == "cpu":      # the default already; the device mode costs per op
                return fn(*args, **kwargs)
            with torch.device(device):
                return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapped


def _field(category: Category, scenes: list[Scene], camera: Camera) -> Field:
    return Field(category, BatchParams.stack([s.params for s in scenes]),
                 torch.as_tensor(np.stack([s.rotation for s in scenes])),
                 torch.as_tensor(np.stack([s.translation for s in scenes])),
                 torch.tensor([s.scale for s in scenes], dtype=torch.float32))


def _ray_spans(field: Field, occ: Occluders, scenes: list[Scene], dirs: Vec3) -> tuple[Tensor, Tensor, Tensor]:
    """For rays from the camera along unit dirs ([B, R]): where each meets an occluder (t, inf if none),
    and where it enters and leaves the object's bounding box (slabs, in the object frame)."""
    bsz = len(scenes)
    d_obj = field.to_object(dirs)
    lows, highs = zip(*(field.category.bound(s.params) for s in scenes))
    lows = [column([lo[axis] for lo in lows]) for axis in range(3)]
    highs = [column([hi[axis] for hi in highs]) for axis in range(3)]
    t_occ, t0, t1 = [], [], []
    for sl in _columns(dirs.x.shape[1], bsz):
        t_occ.append(occ.hits(_cols(dirs, sl))[0])
        a, b = torch.zeros(bsz, 1), torch.full((bsz, 1), INF)
        for axis in range(3):
            o, d = field.origin[axis], d_obj[axis][:, sl]
            ta, tb = (lows[axis] - o) / d, (highs[axis] - o) / d
            a, b = torch.maximum(a, torch.minimum(ta, tb)), torch.minimum(b, torch.maximum(ta, tb))
        t0.append(a), t1.append(b)
    return torch.cat(t_occ, dim=1), torch.cat(t0, dim=1), torch.cat(t1, dim=1)


@_single_threaded
def render(category: Category, scenes: list[Scene], camera: Camera) -> Rendered:
    """Render a batch of scenes of one category (keyword ``device``: where the tensors live, default
    'cpu'; the results are numpy).

    On the CPU the work runs on one thread: its many small operations scale badly across threads (and
    collapse when other processes hold the cores); parallelism comes from rendering batches in separate
    processes instead (``dataset.rendered_batches``).
    """
    bsz, size = len(scenes), camera.size
    n_pix = size * size
    field = _field(category, scenes, camera)
    occ = Occluders(scenes)

    # keypoints on the surface, in the camera frame and in the image
    guesses = np.stack([s.keypoint_guesses for s in scenes])          # [B, K, 2, 3]: point, outward direction
    as_vec = lambda a: Vec3(*(torch.as_tensor(np.ascontiguousarray(a[..., j])) for j in range(3)))  # noqa: E731
    k_cam = field.to_camera(snap_to_surface(field, as_vec(guesses[:, :, 0]), as_vec(guesses[:, :, 1])))
    kx = k_cam.x / k_cam.z * camera.focal + camera.centre
    ky = k_cam.y / k_cam.z * camera.focal + camera.centre
    k_dist = k_cam.length()

    # trace all rays from the camera together: the pixels' (to the first surface), then the keypoints'
    # (to just before the keypoint: any surface met on the way hides it)
    pix = pixel_directions(camera)
    dirs = Vec3(*(torch.cat([pc.expand(bsz, -1), kc], dim=1) for pc, kc in zip(pix, k_cam / k_dist)))
    t_occ, t0, t1 = _ray_spans(field, occ, scenes, dirs)
    per_pixel = lambda v: torch.full((bsz, n_pix), v)                 # noqa: E731
    t_far = torch.cat([torch.minimum(t1[:, :n_pix], t_occ[:, :n_pix]), k_dist - VISIBILITY_TOL * field.scale], dim=1)
    eps = torch.cat([per_pixel(PIXEL_EPS / camera.focal), torch.full(k_dist.shape, KEYPOINT_EPS)], dim=1)
    max_steps = torch.cat([per_pixel(float(PIXEL_STEPS)), torch.full(k_dist.shape, float(MAX_STEPS))], dim=1)
    live = t0 < t_far
    t_hit, reached = sphere_trace(field, field.to_object(dirs), t0, t_far, eps, live, max_steps)

    kp_reached = reached[:, n_pix:] | ~live[:, n_pix:]        # a ray that starts past t_far has nothing before it
    in_image = (kx >= 0) & (kx < size) & (ky >= 0) & (ky < size)
    occluded = t_occ[:, n_pix:] < k_dist

    pix_dirs = Vec3(*(c[:, :n_pix] for c in dirs))
    image, t_obj, occ_front = _colour_pixels(field, occ, scenes, pix_dirs, t_hit[:, :n_pix], t_occ[:, :n_pix],
                                             PIXEL_EPS / camera.focal)
    image = image.reshape(bsz, size, size, 3)
    image = blur(image, torch.tensor([s.blur for s in scenes], dtype=torch.float32))
    exposure = torch.tensor([s.light["exposure"] for s in scenes], dtype=torch.float32).reshape(-1, 1, 1, 1)
    image = image * exposure + torch.as_tensor(np.stack([s.sensor_noise for s in scenes]))
    image = torch.round(torch.clamp(image, 0.0, 1.0) * 255.0).to(torch.uint8)

    keypoints, in_image = _np(torch.stack([kx, ky], dim=-1)), _np(in_image)
    seen = _np((torch.isfinite(t_obj) & ~occ_front).reshape(bsz, size, size))
    return Rendered(images=_np(image), depth=_np((t_obj * pix_dirs.z).reshape(bsz, size, size)),
                    occluder_depth=_np((t_occ[:, :n_pix] * pix_dirs.z).reshape(bsz, size, size)),
                    keypoints=keypoints, keypoints_3d=_np(k_cam.stack()),
                    visible=in_image & _np(kp_reached & ~occluded), self_occluded=in_image & ~_np(kp_reached),
                    occluded=_np(occluded), in_image=in_image, boxes=_boxes(seen, keypoints, in_image))


def _colour_pixels(field: Field, occ: Occluders, scenes: list[Scene], dirs: Vec3, t_obj: Tensor, t_occ: Tensor,
                   eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """The background, with the object shaded where an image ray hit it and the occluders where one lies
    in front (image rays stop at an occluder, so the two never overlap).

    dirs, t_obj, t_occ: [B, P] per pixel; eps: the tracer's stop distance per unit t.  Returns the image
    [B, P, 3] in [0, 1], the depth map's distances t_obj moved onto the surface, and where an occluder is
    in front [B, P].
    """
    bsz, n_pix = t_obj.shape
    light = {k: Vec3(*(column([s.light[k][j] for s in scenes]) for j in range(3)))
             for k in ("direction", "colour", "sky", "ground")}
    image = torch.as_tensor(np.stack([s.background for s in scenes])).reshape(bsz * n_pix, 3)
    flat_t = t_obj.reshape(-1).clone()
    live, row_instance, (ids, t, *d) = pack(torch.isfinite(t_obj), torch.arange(bsz),
                                            [torch.arange(bsz * n_pix).reshape(bsz, n_pix), t_obj, *dirs], PACK)
    rows = field.select(row_instance)
    row_light = {k: Vec3(*(c[row_instance] for c in v)) for k, v in light.items()}
    for a, b in rows.blocks(*live.shape):
        colour, t_surface = shade_object(rows.block(a, b), t[a:b], Vec3(*(c[a:b] for c in d)),
                                         {k: Vec3(*(c[a:b] for c in v)) for k, v in row_light.items()}, eps)
        m = live[a:b]
        image[ids[a:b][m]] = colour.stack()[m]
        flat_t[ids[a:b][m]] = t_surface[m]
    image = image.reshape(bsz, n_pix, 3)
    occ_front = torch.isfinite(t_occ) & (t_occ < t_obj)
    if occ_front.any():
        cols, (ids, *d) = _compact(occ_front, [torch.arange(n_pix).expand(bsz, -1), *dirs])
        colour = torch.cat([shade_occluders(occ, Vec3(*(c[:, sl] for c in d)), light).stack()
                            for sl in _columns(cols.shape[1], bsz)], dim=1)
        b, r = cols.nonzero(as_tuple=True)
        image[b, ids[b, r]] = colour[b, r]
    return image, flat_t.reshape(bsz, n_pix), occ_front


def _boxes(seen: np.ndarray, keypoints: np.ndarray, in_image: np.ndarray) -> np.ndarray:
    """[B, 4] boxes (x0, y0, x1, y1) around the object's visible pixels ([B, H, W]) and in-image keypoints."""
    boxes = np.zeros((len(seen), 4), np.float32)
    for i in range(len(seen)):
        ys, xs = np.nonzero(seen[i])
        xs = np.concatenate([xs, xs + 1.0, keypoints[i, in_image[i], 0]])
        ys = np.concatenate([ys, ys + 1.0, keypoints[i, in_image[i], 1]])
        boxes[i] = (xs.min(), ys.min(), xs.max(), ys.max()) if len(xs) else (0, 0, seen.shape[2], seen.shape[1])
    return boxes


@_single_threaded
def first_surface_depth(category: Category, scenes: list[Scene], camera: Camera, xy: np.ndarray) -> np.ndarray:
    """Camera z of the first surface (the object or an occluder) on the rays through image points xy
    ([B, M, 2] pixels, sub-pixel), traced to within KEYPOINT_EPS of it; inf where there is none.

    An independent check of visibility: a keypoint is visible exactly when the first surface through its
    image point is the keypoint itself (keyword ``device`` as for ``render``).
    """
    field, occ = _field(category, scenes, camera), Occluders(scenes)
    xy = torch.as_tensor(np.asarray(xy, np.float32))
    dirs = image_directions(camera, xy[..., 0].contiguous(), xy[..., 1].contiguous())
    t_occ, t0, t1 = _ray_spans(field, occ, scenes, dirs)
    t_far = torch.minimum(t1, t_occ)
    t_hit, _ = sphere_trace(field, field.to_object(dirs), t0, t_far, torch.full_like(t0, KEYPOINT_EPS), t0 < t_far,
                            MAX_STEPS)
    return _np(torch.minimum(t_hit, t_occ) * dirs.z)
