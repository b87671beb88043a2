"""Geometric constraints: 2D equivariance (§3.3 Eq. 3), 3D part similarity (§3.4 Eq. 5, Umeyama [77]),
landmark smoothing (Supplement A).  Pure functions of tensors; everything here runs in float32.

Keypoints are (x, y) in [-1, 1] with the ``align_corners=False`` convention, so ``affine_grid`` /
``grid_sample`` with ``align_corners=False`` move image content and keypoints alike.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F


def _fp32(t: torch.Tensor):
    return torch.autocast(t.device.type, enabled=False)


# ---- Umeyama and the 3D similarity loss (Eq. 5) ------------------------------------------------------
def umeyama(src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor | None = None,
            eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares similarity dst ~ scale * R @ src + t (Umeyama 1991), batched and weighted.

    src, dst [..., n, d]; weight [..., n] >= 0 (None: all 1).  Returns scale [...], R [..., d, d] with
    det(R) = +1 (a reflection is never returned: when det(U) det(V) < 0 the last singular direction is
    flipped, Umeyama's S matrix), t [..., d].
    """
    if weight is None:
        weight = torch.ones(src.shape[:-1], device=src.device, dtype=src.dtype)
    w = (weight / weight.sum(-1, keepdim=True).clamp_min(eps)).unsqueeze(-1)       # [..., n, 1]
    mu_src, mu_dst = (w * src).sum(-2), (w * dst).sum(-2)
    xs, xd = src - mu_src.unsqueeze(-2), dst - mu_dst.unsqueeze(-2)
    var_src = (w * xs.square()).sum((-2, -1))
    cov = (w * xd).transpose(-1, -2) @ xs                                          # [..., d, d]
    U, D, Vh = torch.linalg.svd(cov)
    sign = torch.where(torch.linalg.det(U) * torch.linalg.det(Vh) < 0, -1.0, 1.0)  # [...]
    S = torch.ones_like(D)
    S = torch.cat([S[..., :-1], sign.unsqueeze(-1).to(S.dtype)], dim=-1)           # diag of Umeyama's S
    R = U @ (S.unsqueeze(-1) * Vh)
    scale = (D * S).sum(-1) / var_src.clamp_min(eps)
    t = mu_dst - scale.unsqueeze(-1) * (R @ mu_src.unsqueeze(-1)).squeeze(-1)
    return scale, R, t


def apply_similarity(x: torch.Tensor, scale, R, t) -> torch.Tensor:
    """x [..., n, d] -> scale * R x + t."""
    return scale[..., None, None] * (x @ R.transpose(-1, -2)) + t.unsqueeze(-2)


def depth_targets(keypoints: torch.Tensor, keypoints_3d: torch.Tensor) -> torch.Tensor:
    """Table 2's depth labels in the units of the 2D keypoints: [L, K, 2] in [-1, 1], [L, K, 3] camera frame
    -> [L, K] relative depth d with (k, d) a similarity of the 3D points (rotation, no reflection).

    Per instance, the scaled-orthographic camera closest to the labels: the least-squares 2 x 3 map A from the
    centred 3D points to the centred 2D keypoints, its nearest scaled row-orthonormal s R12 (SVD), and
    d = s (r1 x r2) . (X - mean X).  The camera's own axes never enter, so its handedness cannot flip the depth.
    Instances with a non-finite 3D point get NaN (no depth label)."""
    with _fp32(keypoints):
        kp, k3 = keypoints.float(), keypoints_3d.float()
        known = torch.isfinite(k3).all(-1).all(-1) & torch.isfinite(kp).all(-1).all(-1)       # [L]
        X = torch.where(known[:, None, None], k3, torch.zeros_like(k3))
        x = torch.where(known[:, None, None], kp, torch.zeros_like(kp))
        Xc, xc = X - X.mean(1, keepdim=True), x - x.mean(1, keepdim=True)
        A = torch.linalg.lstsq(Xc, xc, driver="gelsd" if Xc.device.type == "cpu" else None).solution.transpose(1, 2)
        U, D, Vh = torch.linalg.svd(A, full_matrices=False)                 # A [L, 2, 3] = U diag(D) Vh
        rows = U @ Vh                                                       # [L, 2, 3] orthonormal rows
        normal = torch.linalg.cross(rows[:, 0], rows[:, 1], dim=-1)         # r3 = r1 x r2: det [r1; r2; r3] = +1
        depth = D.mean(-1, keepdim=True) * (Xc @ normal.unsqueeze(-1)).squeeze(-1)
        return torch.where(known[:, None], depth, torch.full_like(depth, float("nan")))


def part_masks(parts: tuple[tuple[int, ...], ...], num_keypoints: int, device=None) -> torch.Tensor:
    """Membership [G, K] of each part, then of the whole object (last row)."""
    groups = list(parts) + [tuple(range(num_keypoints))]
    masks = torch.zeros(len(groups), num_keypoints, device=device)
    for g, idx in enumerate(groups):
        masks[g, list(idx)] = 1.0
    return masks


def part_weights(num_parts: int, whole_object_weight: float, device=None) -> torch.Tensor:
    """[G] weights matching ``part_masks``: 1 per part, ``whole_object_weight`` for the whole object."""
    return torch.tensor([1.0] * num_parts + [whole_object_weight], device=device)


def shape_spread(points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RMS distance of the masked points from their centroid.  points [..., K, D], mask [..., K] -> [...]."""
    m = mask.float()
    n = m.sum(-1, keepdim=True).clamp_min(1.0)
    centroid = (points * m[..., None]).sum(-2, keepdim=True) / n[..., None]
    return (((points - centroid) ** 2).sum(-1) * m).sum(-1).div(n[..., 0]).sqrt()


def scale_free(per_instance: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """A distance made blind to a uniform rescaling of the predicted shapes: divided by each shape's spread
    (with gradient), times the batch's mean spread (without), so that its size stays that of the plain loss.
    Eq. 3 and Eq. 5 as written cost less for a smaller shape; this version does not reward shrinking."""
    spread = spread.clamp_min(1e-3)
    return per_instance / spread * spread.mean().detach()


def similarity_loss_3d(kp3d: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor,
                       random_pairing: bool, scale_invariant: bool = False) -> torch.Tensor:
    """Eq. 5.  kp3d [N, K, 3] (keypoints with depth); masks [G, K], weights [G] (``part_masks/weights``).

    For each instance i and part P a partner c != i is chosen: at random (``random_pairing``, the first
    iterations), else the c whose part, after its best similarity to i's, has the smallest mean L2
    distance.  The similarity eta is estimated without gradients (Supplement A: "the gradients are stopped
    in the similarity transformation estimation"), and the loss is the part's mean L1 distance between
    k_P(I_i) and eta(k_P(I_c)), summed over parts with ``weights``, averaged over instances.
    ``scale_invariant``: each part's distance divided by the part's image-plane spread in I_i (``scale_free``).
    """
    N, K, _ = kp3d.shape
    G = masks.shape[0]
    if N < 2:
        return kp3d.sum() * 0.0
    with _fp32(kp3d):
        kp3d = kp3d.float()
        with torch.no_grad():
            x = kp3d.detach()
            i = torch.arange(N, device=x.device)[:, None]
            if random_pairing:
                partner = (i + torch.randint(1, N, (N, G), device=x.device)) % N          # [N, G], never i
                src = x[partner]                                                           # [N, G, K, 3]
                scale, R, t = umeyama(src, x[:, None].expand_as(src), masks.expand(N, G, K))
            else:
                dst = x[:, None, None].expand(N, N, G, K, 3)        # [i, c, g, K, 3]: instance i
                src = x[None, :, None].expand(N, N, G, K, 3)        # instance c
                scale, R, t = umeyama(src, dst, masks.expand(N, N, G, K))
                err = (apply_similarity(src, scale, R, t) - dst).norm(dim=-1)         # [N, N, G, K]
                err = (err * masks).sum(-1) / masks.sum(-1)
                err = err + torch.diag(torch.full((N,), float("inf"), device=x.device))[..., None]
                partner = err.argmin(dim=1)                                             # [N, G]
                g = torch.arange(G, device=x.device)[None, :]
                scale, R, t = scale[i, partner, g], R[i, partner, g], t[i, partner, g]  # [N, G], ...
        aligned = apply_similarity(kp3d[partner], scale, R, t)                      # [N, G, K, 3]
        l1 = (kp3d[:, None] - aligned).abs().sum(-1)                                # [N, G, K]
        per_part = (l1 * masks).sum(-1) / masks.sum(-1)                             # (1/|P|) sum
        if scale_invariant:
            # the image-plane spread: a spread with depth would pay the detector to inflate the free depth
            per_part = scale_free(per_part, shape_spread(kp3d[:, None, :, :2], masks.expand(N, G, K)))
        return (per_part * weights).sum(-1).mean()


# ---- landmark smoothing (Supplement A) -----------------------------------------------------------------
def smoothing_triples(groups: tuple[tuple[int, ...], ...], device=None) -> torch.Tensor:
    """[T, 3] consecutive (a, b, c) along each chain."""
    triples = [chain[j:j + 3] for chain in groups for j in range(len(chain) - 2)]
    return torch.tensor(triples, dtype=torch.long, device=device).reshape(-1, 3)


def smoothing_loss(keypoints: torch.Tensor, triples: torch.Tensor) -> torch.Tensor:
    """Supplement A's landmark smoothing, mean over chains' consecutive triples of 1 - cos(b - a, c - b).

    The supplement says it "encourage[s] the cosine of the angle of the two neighboring landmarks to be 0";
    we read the angle as the turn between the two neighbouring segments (a->b, b->c), driven to 0, which
    is what smooths a chain (a cosine of 0 would force right angles).  keypoints [N, K, 2]; triples [T, 3].
    """
    if triples.numel() == 0:
        return keypoints.sum() * 0.0
    with _fp32(keypoints):
        k = keypoints.float()
        a, b, c = k[:, triples[:, 0]], k[:, triples[:, 1]], k[:, triples[:, 2]]
        return (1.0 - F.cosine_similarity(b - a, c - b, dim=-1, eps=1e-6)).mean()


# ---- 2D transformations and the equivariance loss (Eq. 3) -------------------------------------------------
class Transform2D(NamedTuple):
    """Per image: keypoint map k' = A k + b (flip included in A), the flip flag, colour factors."""
    A: torch.Tensor        # [N, 2, 2]
    b: torch.Tensor        # [N, 2]
    flip: torch.Tensor     # [N] bool
    colour: torch.Tensor   # [N, 4] brightness, contrast, saturation factors; hue shift in turns


def sample_transforms(n: int, strength: float, cfg, device=None) -> Transform2D:
    """Random transformations with every range multiplied by ``strength`` in [0, 1] (Supplement A: the
    ranges grow linearly from 0 at the first iteration to full at the last).  ``cfg`` is a LossConfig:
    rotation +-rotation_deg, translation +-translation of the side, scale in [scale_min, scale_max], flip with
    probability flip_p, brightness/contrast/saturation factor 1 +- colour, hue +- colour turns (torchvision's
    ColorJitter(0.5, 0.5, 0.5, 0.5) at full strength).  The flip probability is scaled like the ranges."""
    u = lambda *shape: torch.rand(*shape, device=device) * 2.0 - 1.0  # noqa: E731  uniform in [-1, 1]
    angle = u(n) * math.radians(cfg.rotation_deg) * strength
    low, high = 1.0 - (1.0 - cfg.scale_min) * strength, 1.0 + (cfg.scale_max - 1.0) * strength
    scale = high - torch.rand(n, device=device) * (high - low)
    shift = u(n, 2) * (2.0 * cfg.translation) * strength        # fraction of the side -> units of [-1, 1]
    flip = torch.rand(n, device=device) < cfg.flip_p * strength
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)    # [n, 2, 2]
    mirror = torch.ones(n, 2, device=device)
    mirror[:, 0] = torch.where(flip, -1.0, 1.0)
    A = scale[:, None, None] * rot * mirror[:, None, :]          # rot @ diag(mirror)
    colour = torch.cat([1.0 + u(n, 3) * cfg.colour * strength, u(n, 1) * cfg.colour * strength], dim=1)
    return Transform2D(A, shift, flip, colour)


def permute_flipped(x: torch.Tensor, flip: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x [N, K, ...]: rows of flipped images take their flip partner's entry (x[:, perm])."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    return torch.where(flip.view(shape), x[:, perm], x)


def transform_keypoints(keypoints: torch.Tensor, T: Transform2D, perm: torch.Tensor) -> torch.Tensor:
    """T(k): [N, K, 2] -> [N, K, 2], flip partners swapped on flipped images."""
    with _fp32(keypoints):
        moved = keypoints.float() @ T.A.transpose(1, 2) + T.b[:, None, :]
        return permute_flipped(moved, T.flip, perm)


def transform_depth(depth: torch.Tensor, T: Transform2D, perm: torch.Tensor) -> torch.Tensor:
    """The depths [N, K] of keypoints moved by T: times T's scale (a 2D similarity scales the whole 3D shape;
    a rotation in the image plane and a flip leave depth alone), flip partners swapped on flipped images."""
    with _fp32(depth):
        return permute_flipped(depth.float() * T.A.float().det().abs().sqrt()[:, None], T.flip, perm)


def inside(keypoints: torch.Tensor) -> torch.Tensor:
    """[N, K] bool: the keypoint lies in the image ([-1, 1]^2)."""
    return (keypoints.abs() <= 1.0).all(dim=-1)


_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)


def colour_jitter(images: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (torchvision's order and blends, clamped to [0, 1] after each).
    Hue is a rotation of the chroma plane in YIQ space (linear, batched) rather than an HSV round trip."""
    b, c, s, h = colour.unbind(-1)
    view = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    lum = _YIQ[0].to(images.device).view(1, 3, 1, 1)
    x = (images * view(b)).clamp(0, 1)
    mean = (x * lum).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = ((x - mean) * view(c) + mean).clamp(0, 1)
    gray = (x * lum).sum(1, keepdim=True)
    x = ((x - gray) * view(s) + gray).clamp(0, 1)
    cos, sin = torch.cos(2 * math.pi * h), torch.sin(2 * math.pi * h)
    rot = torch.zeros(h.shape[0], 3, 3, device=images.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    M = _YIQ_INV.to(images.device) @ rot @ _YIQ.to(images.device)                 # [N, 3, 3]
    return torch.einsum("nij,njhw->nihw", M, x).clamp(0, 1)


def warp_images(images: torch.Tensor, T: Transform2D) -> torch.Tensor:
    """T(I): the geometric part by ``grid_sample`` (output pixel p' samples the input at A^-1 (p' - b)),
    zeros outside, then the colour jitter.  images [N, 3, H, W] in [0, 1]."""
    with _fp32(images):
        images = images.float()
        a, b, c, d = T.A[:, 0, 0], T.A[:, 0, 1], T.A[:, 1, 0], T.A[:, 1, 1]
        A_inv = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2) / (a * d - b * c)[:, None, None]
        theta = torch.cat([A_inv, -(A_inv @ T.b.unsqueeze(-1))], dim=2)          # [N, 2, 3]
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return colour_jitter(warped, T.colour)


def equivariance_loss(kp_on_transformed: torch.Tensor, keypoints: torch.Tensor, T: Transform2D,
                      perm: torch.Tensor, scale_invariant: bool = False) -> torch.Tensor:
    """Eq. 3: mean over keypoints of |k(T(I)) - T(k(I))|_1, ignoring keypoints T moves out of the image.

    kp_on_transformed, keypoints [N, K, 2]; gradients flow into both detections.  ``scale_invariant``: each
    instance's distance divided by the spread of T(k(I)) (``scale_free``)."""
    with _fp32(keypoints):
        target = transform_keypoints(keypoints, T, perm)
        valid = inside(target.detach()).float()
        l1 = (kp_on_transformed.float() - target).abs().sum(-1)
        if not scale_invariant:
            return (l1 * valid).sum() / valid.sum().clamp_min(1.0)
        per_instance = (l1 * valid).sum(-1) / valid.sum(-1).clamp_min(1.0)
        return scale_free(per_instance, shape_spread(target, torch.ones_like(valid))).mean()
