"""Umeyama and Eq. 5, the 2D transformations and Eq. 3, landmark smoothing."""
import math

import numpy as np
import pytest
import torch

from models.config import LossConfig
from models.detector import pixel_centres
from models.geometry import (Transform2D, apply_similarity, colour_jitter, equivariance_loss, inside, part_masks,
                             part_weights, sample_transforms, similarity_loss_3d, smoothing_loss, smoothing_triples,
                             transform_keypoints, umeyama, warp_images)


def rotation(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * K @ K


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(2, 10, 3))
    R = np.stack([rotation([1, 2, 3], 0.7), rotation([0, 0, 1], -2.5)])
    s, t = np.array([1.7, 0.4]), np.array([[0.1, -2.0, 3.0], [1.0, 1.0, 1.0]])
    dst = s[:, None, None] * src @ R.transpose(0, 2, 1) + t[:, None]
    scale, R_hat, t_hat = umeyama(torch.tensor(src), torch.tensor(dst))
    assert np.allclose(scale.numpy(), s) and np.allclose(R_hat.numpy(), R) and np.allclose(t_hat.numpy(), t)


def test_umeyama_never_returns_a_reflection():
    """Mirrored points: the naive U V^T is a reflection (det -1); Umeyama's S turns it into the best rotation."""
    rng = np.random.default_rng(1)
    src = rng.normal(size=(12, 3))
    dst = src * np.array([-1.0, 1.0, 1.0]) * 2.0 + 0.5
    cov = (dst - dst.mean(0)).T @ (src - src.mean(0)) / len(src)
    U, D, Vt = np.linalg.svd(cov)
    assert np.linalg.det(U @ Vt) < 0                                   # this is the reflection case
    scale, R, t = umeyama(torch.tensor(src), torch.tensor(dst))
    assert torch.linalg.det(R).item() == pytest.approx(1.0)
    S = np.diag([1.0, 1.0, -1.0])                                      # Umeyama (1991), Eq. 39-42
    R_ref = U @ S @ Vt
    s_ref = np.trace(np.diag(D) @ S) / ((src - src.mean(0)) ** 2).sum(1).mean()
    assert np.allclose(R.numpy(), R_ref) and scale.item() == pytest.approx(s_ref)
    aligned = apply_similarity(torch.tensor(src), scale, R, t).numpy()
    assert ((aligned - dst) ** 2).sum() < ((src * 2.0 + 0.5 - dst) ** 2).sum()   # better than doing nothing


def test_umeyama_weights_select_the_points():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(8, 3))
    dst = src @ rotation([1, 0, 1], 1.1).T * 0.5 + 1.0
    dst[5:] = rng.normal(size=(3, 3)) * 10                             # outliers with weight 0
    w = torch.tensor([1.0] * 5 + [0.0] * 3)
    scale, R, t = umeyama(torch.tensor(src), torch.tensor(dst), w.double())
    assert scale.item() == pytest.approx(0.5) and np.allclose(R.numpy(), rotation([1, 0, 1], 1.1))


def random_similar_instances(n=5, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(k, 3, generator=g)
    out = []
    for i in range(n):
        R = torch.tensor(rotation(torch.randn(3, generator=g).numpy(), float(torch.rand(1, generator=g)) * 3),
                         dtype=torch.float32)
        out.append(base @ R.T * (0.5 + float(torch.rand(1, generator=g))) + torch.randn(3, generator=g))
    return torch.stack(out)


@pytest.mark.parametrize("random_pairing", [True, False])
def test_3d_loss_is_zero_for_similar_instances_and_positive_otherwise(random_pairing):
    kp = random_similar_instances()
    masks = part_masks(((0, 1, 2), (3, 4, 5)), 6)
    weights = part_weights(2, 0.5)
    assert similarity_loss_3d(kp, masks, weights, random_pairing).item() < 1e-4
    noisy = kp + 0.2 * torch.randn(kp.shape, generator=torch.Generator().manual_seed(3))
    assert similarity_loss_3d(noisy, masks, weights, random_pairing).item() > 0.05


def test_3d_loss_pairs_each_part_with_its_best_match():
    kp = random_similar_instances(n=4)
    kp[3] = torch.randn(6, 3) * 3                                      # an odd one out
    masks, weights = part_masks((), 6), part_weights(0, 1.0)
    loss = similarity_loss_3d(kp, masks, weights, random_pairing=False)
    # instances 0-2 find exact partners (zero), instance 3 the best of the others: the mean is its share / 4
    aligned = []
    for c in range(3):
        s, R, t = umeyama(kp[c], kp[3])
        aligned.append((kp[3] - apply_similarity(kp[c], s, R, t)).abs().sum(-1).mean())
    assert loss.item() == pytest.approx(min(a.item() for a in aligned) / 4, rel=1e-3)


def test_3d_loss_gradient_does_not_flow_through_the_transform():
    """The gradient equals the one obtained with the estimated similarity held as a constant."""
    kp = (random_similar_instances(n=2) + 0.3 * torch.randn(2, 6, 3)).requires_grad_()
    masks, weights = part_masks((), 6), part_weights(0, 1.0)
    loss = similarity_loss_3d(kp, masks, weights, random_pairing=False)
    (grad,) = torch.autograd.grad(loss, kp)
    x = kp.detach()
    manual = 0
    for i, c in ((0, 1), (1, 0)):
        s, R, t = umeyama(x[c], x[i])                                  # constants
        manual = manual + (kp[i] - apply_similarity(kp[c], s, R, t)).abs().sum(-1).mean()
    (expected,) = torch.autograd.grad(manual / 2, kp)
    assert torch.allclose(grad, expected, atol=1e-5)
    # ... and differs from the gradient through a differentiable estimate of the transform
    through = 0
    for i, c in ((0, 1), (1, 0)):
        s, R, t = umeyama(kp[c], kp[i])
        through = through + (kp[i] - apply_similarity(kp[c], s, R, t)).abs().sum(-1).mean()
    (other,) = torch.autograd.grad(through / 2, kp)
    assert not torch.allclose(grad, other, atol=1e-3)


def test_smoothing_is_zero_on_a_straight_chain_and_positive_on_a_zigzag():
    triples = smoothing_triples(((0, 1, 2, 3),))
    assert triples.tolist() == [[0, 1, 2], [1, 2, 3]]
    line = torch.tensor([[[0.0, 0.0], [0.1, 0.1], [0.2, 0.2], [0.35, 0.35]]])
    zigzag = torch.tensor([[[0.0, 0.0], [0.1, 0.1], [0.2, 0.0], [0.3, 0.1]]])
    assert smoothing_loss(line, triples).item() == pytest.approx(0.0, abs=1e-6)
    assert smoothing_loss(zigzag, triples).item() == pytest.approx(1.0, abs=1e-5)   # right-angle turns


# ---- 2D ------------------------------------------------------------------------------------------
def fixed_transform(angle_deg=0.0, scale=1.0, shift=(0.0, 0.0), flip=False, n=1):
    a = math.radians(angle_deg)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    A = scale * rot @ torch.diag(torch.tensor([-1.0 if flip else 1.0, 1.0]))
    return Transform2D(A.expand(n, 2, 2), torch.tensor(shift).expand(n, 2), torch.tensor([flip] * n),
                       torch.tensor([[1.0, 1.0, 1.0, 0.0]] * n))


def test_flip_warp_is_a_mirror_and_swaps_flip_partners():
    img = torch.rand(1, 3, 16, 16)
    T = fixed_transform(flip=True)
    assert torch.allclose(warp_images(img, T), img.flip(-1), atol=1e-6)
    kp = torch.tensor([[[-0.5, 0.2], [0.5, 0.2], [0.1, -0.3]]])
    perm = torch.tensor([1, 0, 2])
    moved = transform_keypoints(kp, T, perm)
    assert torch.allclose(moved, torch.tensor([[[-0.5, 0.2], [0.5, 0.2], [-0.1, -0.3]]]))


def blob_images(kp, size=64, sigma=1.5):
    """One channel-coded sharp blob per keypoint (K <= 3), at kp [N, K, 2] in [-1, 1]."""
    N, K, _ = kp.shape
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    px = (kp + 1) * size / 2
    d2 = (xs - px[..., 0, None, None]) ** 2 + (ys - px[..., 1, None, None]) ** 2
    img = torch.zeros(N, 3, size, size)
    img[:, :K] = torch.exp(-d2 / (2 * sigma ** 2))
    return img


def oracle(images):
    """An exactly equivariant 'detector': the intensity centroid of each colour channel."""
    N, C, H, W = images.shape
    w = images.reshape(N, C, H * W)
    return (w / w.sum(-1, keepdim=True).clamp_min(1e-12)) @ pixel_centres(H, W)


def test_equivariant_oracle_gives_zero_loss_and_a_shifted_one_does_not():
    torch.manual_seed(0)
    kp = torch.rand(4, 3, 2) * 0.8 - 0.4
    images = blob_images(kp)
    cfg = LossConfig(flip_p=0.0, colour=0.0)                  # colour-coded blobs: no flip, no colour change
    T = sample_transforms(4, 1.0, cfg)
    perm = torch.arange(3)
    on_transformed = oracle(warp_images(images, T))
    detected = oracle(images)
    assert torch.allclose(detected, kp, atol=2e-3)
    assert equivariance_loss(on_transformed, detected, T, perm).item() < 5e-3
    shifted = on_transformed + torch.tensor([0.1, 0.0])
    assert equivariance_loss(shifted, detected, T, perm).item() == pytest.approx(0.1, abs=6e-3)


def test_equivariance_loss_is_exactly_zero_for_exact_keypoints_with_flips():
    torch.manual_seed(1)
    kp = torch.rand(6, 5, 2) * 1.2 - 0.6
    perm = torch.tensor([4, 3, 2, 1, 0])
    T = sample_transforms(6, 1.0, LossConfig(flip_p=1.0))
    assert T.flip.all()
    target = transform_keypoints(kp, T, perm)
    assert equivariance_loss(target, kp, T, perm).item() == 0.0
    assert equivariance_loss(target + 0.05, kp, T, perm).item() > 0.05


def test_keypoints_leaving_the_image_are_ignored():
    kp = torch.tensor([[[0.0, 0.0], [0.9, 0.0]]])
    T = fixed_transform(shift=(0.2, 0.0))                        # the second keypoint leaves the image
    target = transform_keypoints(kp, T, torch.arange(2))
    assert inside(target).tolist() == [[True, False]]
    wrong_outside = target.clone()
    wrong_outside[0, 1] += 5.0
    assert equivariance_loss(wrong_outside, kp, T, torch.arange(2)).item() == 0.0


def test_ranges_grow_with_strength():
    cfg = LossConfig()
    T0 = sample_transforms(64, 0.0, cfg)
    assert torch.allclose(T0.A, torch.eye(2).expand(64, 2, 2)) and (T0.b == 0).all() and not T0.flip.any()
    assert torch.allclose(T0.colour, torch.tensor([1.0, 1.0, 1.0, 0.0]).expand(64, 4))
    T1 = sample_transforms(4096, 1.0, cfg)
    scale = torch.linalg.det(T1.A).abs().sqrt()
    assert scale.min() >= 0.9 - 1e-6 and scale.max() <= 1.0 + 1e-6
    assert T1.b.abs().max() <= 0.2 + 1e-6 and T1.b.abs().max() > 0.19          # +-10% of the side
    assert 0.45 < T1.flip.float().mean() < 0.55
    angle = torch.atan2(T1.A[:, 1, 0], T1.A[:, 1, 1]).abs().max()           # rotation angle, flip aside
    assert math.degrees(angle) <= 60 + 1e-3 and math.degrees(angle) > 58
    img = torch.rand(4096, 3, 4, 4)
    assert torch.isfinite(warp_images(img, T1)).all()


def test_colour_jitter_identity_brightness_and_hue():
    img = torch.rand(3, 3, 8, 8)
    same = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, -1.0]])   # hue: whole turns
    assert torch.allclose(colour_jitter(img, same), img, atol=1e-5)
    dark = colour_jitter(img, torch.tensor([[0.5, 1.0, 1.0, 0.0]] * 3))
    assert torch.allclose(dark, img * 0.5, atol=1e-6)
    gray = colour_jitter(img, torch.tensor([[1.0, 1.0, 0.0, 0.0]] * 3))
    assert torch.allclose(gray[:, 0], gray[:, 1], atol=1e-5) and torch.allclose(gray[:, 1], gray[:, 2], atol=1e-5)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 0.8
    shifted = colour_jitter(red, torch.tensor([[1.0, 1.0, 1.0, 1 / 3]]))                       # a third of a turn
    assert shifted[0, 1].mean() > shifted[0, 0].mean()                                          # red -> greenish


def _shrink_rate(loss_fn, *points):
    """d loss / d a of loss(a * points) at a = 1: positive when shrinking every shape lowers the loss."""
    points = [p.detach().clone().requires_grad_() for p in points]
    grads = torch.autograd.grad(loss_fn(*points), points)
    return sum((g * p).sum() for g, p in zip(grads, points)).item()


def test_scale_free_losses_do_not_reward_shrinking_while_the_plain_ones_do():
    torch.manual_seed(0)
    kp, kp_t = torch.rand(8, 6, 2) - 0.5, torch.rand(8, 6, 2) - 0.5
    T = sample_transforms(8, 0.5, LossConfig(), None)
    perm = torch.arange(6)
    plain = _shrink_rate(lambda a, b: equivariance_loss(a, b, T, perm), kp_t, kp)
    free = _shrink_rate(lambda a, b: equivariance_loss(a, b, T, perm, scale_invariant=True), kp_t, kp)
    assert plain > 0.3 and abs(free) < 0.1 * plain
    kp3 = torch.rand(8, 6, 3) - 0.5
    kp3[..., 2] *= 0.1
    kp3 = kp3 - kp3.mean(1, keepdim=True)     # shapes about the origin: shrinking them is a similarity
    masks, weights = part_masks(((0, 1, 2), (3, 4, 5)), 6), part_weights(2, 1.0)
    plain = _shrink_rate(lambda x: similarity_loss_3d(x, masks, weights, False), kp3)
    free = _shrink_rate(lambda x: similarity_loss_3d(x, masks, weights, False, scale_invariant=True), kp3)
    # not exactly 0: each part's similarity is estimated without gradient, and its translation does not shrink
    assert plain > 0.1 and abs(free) < 0.25 * plain
    # the depth is not in the normaliser: inflating it alone must not lower the loss
    deep = kp3.clone()
    deep[..., 2] *= 10
    assert similarity_loss_3d(deep, masks, weights, False, scale_invariant=True) > \
        similarity_loss_3d(kp3, masks, weights, False, scale_invariant=True)


def test_depth_targets_are_the_labels_third_axis_whatever_the_camera():
    """Table 2's depth labels: (2D keypoint, depth) is a similarity of the 3D points, never a mirror image --
    exact for a scaled-orthographic camera (either handedness of its axes), close for the renderer's
    perspective one."""
    from models.geometry import depth_targets
    from pipeline.synth.dataset import render_batch

    def residual(kp, depth, points):       # [L]: distance of (kp, depth) to its best similarity of the points
        mine = torch.cat([kp, depth.unsqueeze(-1)], -1).double()
        aligned = apply_similarity(points.double(), *umeyama(points.double(), mine))
        return (aligned - mine).norm(dim=-1).mean(1) / (mine - mine.mean(1, keepdim=True)).norm(dim=-1).mean(1)

    torch.manual_seed(0)
    points = torch.randn(4, 7, 3)
    R, _ = torch.linalg.qr(torch.randn(4, 3, 3))
    R = R * torch.linalg.det(R).sign()[:, None, None]                     # proper rotations
    camera = (0.2 + 0.5 * torch.rand(4))[:, None, None] * points @ R.transpose(1, 2)
    for kp in (camera[..., :2] + 0.1, camera[..., :2] * torch.tensor([1.0, -1.0])):    # y down, y up
        depth = depth_targets(kp, points)
        assert residual(kp, depth, points).max() < 1e-5
        assert residual(kp, -depth, points).min() > 0.1                   # the mirrored depth is not a similarity
    np.testing.assert_allclose(depth_targets(camera[..., :2], points), camera[..., 2] - camera[..., 2].mean(1, keepdim=True),
                               atol=1e-5)
    unknown = points.clone()
    unknown[1, 2, 0] = float("nan")
    assert depth_targets(camera[..., :2], unknown)[1].isnan().all() and depth_targets(camera[..., :2], unknown)[0].isfinite().all()

    for name in ("face", "car", "animal"):                               # the benchmark's own renders
        r = render_batch(name, 3, list(range(6)), 64)
        kp, points = torch.from_numpy(r["keypoints"]) / 64 * 2 - 1, torch.from_numpy(r["keypoints_3d"])
        depth = depth_targets(kp, points)
        right, mirrored = residual(kp, depth, points), residual(kp, -depth, points)
        assert right.max() < 0.15 and (right < 0.5 * mirrored).all(), (name, right, mirrored)   # measured <= 0.10 vs >= 0.31


def test_augmenting_a_labeled_image_keeps_its_3d_labels_a_similarity_of_the_object():
    """What compute_losses does to xiao-depth's depth labels with its 2D augmentation (rotation, scale,
    translation, flip): the moved keypoints with the moved depths are still the object's 3D shape, mirrored
    where the image was flipped."""
    from models.geometry import depth_targets, transform_depth

    torch.manual_seed(3)
    perm = torch.tensor([1, 0, 2, 4, 3])                          # two flip pairs and a keypoint on the axis
    points = torch.randn(6, 5, 3)                                 # not symmetric: a swap of partners shows
    kp = 0.3 * points[..., :2]
    depth = depth_targets(kp, points)
    flipped, kept = sample_transforms(3, 1.0, LossConfig(flip_p=1.0)), sample_transforms(3, 1.0, LossConfig(flip_p=0.0))
    T = Transform2D(*(torch.cat([a, b]) for a, b in zip(flipped, kept)))
    assert T.flip.tolist() == [True] * 3 + [False] * 3
    moved = torch.cat([transform_keypoints(kp, T, perm), transform_depth(depth, T, perm).unsqueeze(-1)], -1)
    mirrored = torch.where(T.flip[:, None, None], points[:, perm] * torch.tensor([-1.0, 1.0, 1.0]), points)
    aligned = apply_similarity(mirrored.double(), *umeyama(mirrored.double(), moved.double()))
    assert (aligned - moved).abs().max() < 1e-4
