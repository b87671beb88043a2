"""Uncertainty-aware edge maps (§3.5 Eq. 6-8, Supplement A Eq. 10-12).

For a user link (i, j) and a pixel p with t = clamp((p - k_i).(k_j - k_i) / |k_j - k_i|^2, 0, 1):

    d_ij(p)   = |p - ((1 - t) k_i + t k_j)|                     (Eq. 10: clamping t gives its three cases)
    v_ij(p)   = sigmoid((1 - t) v_i + t v_j)                     (Eq. 7: likewise)
    S_ij(p)   = v_ij(p) * exp(-d_ij(p)^2 / sigma^2)              (Eq. 6, as we read it, see below)
    S(p)      = alpha * max_ij S_ij(p)                           (Eq. 8)
    sigma^2   = exp(theta) / 1000, theta initialised to 1        (Eq. 11)
    alpha     = softplus(gamma), gamma initialised to -4         (Eq. 12)

Our reading of Eq. 6.  As printed, S_ij = exp(v_ij d^2 / sigma^2) grows with the distance (a minus sign is
missing) and leaves open how the uncertainty enters.  The text says the values "decrease exponentially
based on the distance to the line, and are smaller for the uncertain keypoints", and §5 that uncertainty
works "by making the uncertain edges lighter".  Putting v_ij in the exponent (exp(-v d^2 / sigma^2), v in
(0, 1)) would only make edges *wider* (brighter off the line) as v falls, never lighter, so we read v_ij as
the edge's intensity: a Gaussian of the distance, scaled by sigmoid of the interpolated v.  A keypoint with
large v is certain and its edges are drawn at full strength; with v -> -inf they fade out.  With every
keypoint certain (v_ij = 1, the ``no-uncertainty`` variant) this is AutoLink's edge map [20].

How it is computed (exactly, at full resolution).  Evaluating every link at every pixel with autograd
keeps N x links x pixels tensors for the backward pass (about 0.2 GB per intermediate for 26 images, WFLW's 109
links, 128x128).  The maximum of Eq. 8 only passes gradients to the link that attains it, so we (1) find
that link per pixel without autograd, scoring links by log v_ij - d^2 / sigma^2 (the log of S_ij, same
order) in chunks of links, then (2) evaluate S_ij with autograd for the chosen link only.  The value and
the gradient are those of ``torch.max`` over all links (``edge_map_dense`` is the direct form, for tests).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.detector import pixel_centres


def _segment(px, py, kax, kay, kbx, kby) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, d^2) of Eq. 7/10; every argument a broadcastable tensor of x or y coordinates (no trailing
    size-2 axis: plain elementwise work is several times faster on a CPU than size-2 reductions)."""
    abx, aby = kbx - kax, kby - kay
    apx, apy = px - kax, py - kay
    t = ((apx * abx + apy * aby) / (abx * abx + aby * aby).clamp_min(1e-12)).clamp(0.0, 1.0)
    dx, dy = apx - t * abx, apy - t * aby
    return t, dx * dx + dy * dy


def link_strength(p, ka, kb, va, vb, sigma2):
    """S_ij(p) of Eq. 6 as we read it.  p, ka, kb [..., 2] broadcastable; va, vb: certainty logits v_i, v_j
    (None: every keypoint certain)."""
    t, d2 = _segment(p[..., 0], p[..., 1], ka[..., 0], ka[..., 1], kb[..., 0], kb[..., 1])
    s = torch.exp(-d2 / sigma2)
    if va is not None:
        s = s * torch.sigmoid(torch.lerp(va, vb, t))
    return s


@torch.no_grad()
def _best_link(grid, ka, kb, va, vb, sigma2, chunk: int) -> torch.Tensor:
    """Index [N, P] of the link with the largest S_ij at each pixel (ties: the first)."""
    E = ka.shape[1]
    best_score = best = None
    px, py = grid[:, 0], grid[:, 1]                                            # [P]
    for start in range(0, E, chunk):
        sl = slice(start, start + chunk)
        a, b = ka[:, sl, None], kb[:, sl, None]                                # [N, e, 1, 2]
        t, d2 = _segment(px, py, a[..., 0], a[..., 1], b[..., 0], b[..., 1])   # [N, e, P]
        score = d2.mul_(-1.0 / sigma2)
        if va is not None:
            score += F.logsigmoid(torch.lerp(va[:, sl, None], vb[:, sl, None], t))
        value, index = score.max(dim=1)
        if best is None:
            best_score, best = value, index
        else:
            better = value > best_score
            best_score = torch.where(better, value, best_score)
            best = torch.where(better, index + start, best)
    return best


def edge_map(keypoints: torch.Tensor, certainty: torch.Tensor | None, links: torch.Tensor, sigma2: torch.Tensor,
             alpha: torch.Tensor, resolution: int, chunk: int = 8) -> torch.Tensor:
    """Eq. 8.  keypoints [N, K, 2] in [-1, 1]; certainty [N, K] logits v (None: all certain);
    links [E, 2] long; sigma2, alpha scalar tensors -> edge map [N, 1, resolution, resolution]."""
    N = keypoints.shape[0]
    with torch.autocast(keypoints.device.type, enabled=False):
        keypoints = keypoints.float()
        grid = pixel_centres(resolution, resolution, keypoints.device)           # [P, 2]
        ka, kb = keypoints[:, links[:, 0]], keypoints[:, links[:, 1]]             # [N, E, 2]
        va = vb = None
        if certainty is not None:
            certainty = certainty.float()
            va, vb = certainty[:, links[:, 0]], certainty[:, links[:, 1]]         # [N, E]
        best = _best_link(grid, ka, kb, va, vb, sigma2.detach(), chunk)         # [N, P]
        pick = lambda x: x.gather(1, best.unsqueeze(-1).expand(-1, -1, 2))      # noqa: E731  [N, P, 2]
        s = link_strength(grid[None], pick(ka), pick(kb),
                          None if va is None else va.gather(1, best), None if vb is None else vb.gather(1, best),
                          sigma2)
        return (alpha * s).reshape(N, 1, resolution, resolution)


def edge_map_dense(keypoints, certainty, links, sigma2, alpha, resolution):
    """The direct form of Eq. 8 (every link at every pixel, then max); memory-hungry, for tests."""
    N = keypoints.shape[0]
    grid = pixel_centres(resolution, resolution, keypoints.device)[None, None]
    ka, kb = keypoints[:, links[:, 0], None], keypoints[:, links[:, 1], None]
    va = vb = None
    if certainty is not None:
        va, vb = certainty[:, links[:, 0], None], certainty[:, links[:, 1], None]
    s = link_strength(grid, ka, kb, va, vb, sigma2)                             # [N, E, P]
    return (alpha * s.max(dim=1).values).reshape(N, 1, resolution, resolution)


class EdgeMap(nn.Module):
    """The learnable thickness (theta, Eq. 11) and weight (gamma, Eq. 12) and the links; renders Eq. 8."""

    def __init__(self, links: tuple[tuple[int, int], ...], resolution: int):
        super().__init__()
        if not links:
            raise ValueError("the edge map needs at least one link")
        self.resolution = resolution
        self.theta = nn.Parameter(torch.tensor(1.0))
        self.gamma = nn.Parameter(torch.tensor(-4.0))
        self.register_buffer("links", torch.tensor(links, dtype=torch.long), persistent=False)

    @property
    def sigma2(self) -> torch.Tensor:
        return torch.exp(self.theta) / 1000.0

    @property
    def alpha(self) -> torch.Tensor:
        return F.softplus(self.gamma)

    def forward(self, keypoints: torch.Tensor, certainty: torch.Tensor | None) -> torch.Tensor:
        """[N, K, 2], [N, K] or None -> [N, 1, R, R] with R = the configured edge resolution."""
        chunk = 8 if keypoints.device.type == "cpu" else 32    # links scored at once (CPU: cache-sized)
        return edge_map(keypoints, certainty, self.links, self.sigma2, self.alpha, self.resolution, chunk)

