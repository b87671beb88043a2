"""The model, the losses per variant, train_step, predict, checkpoints, configs."""
import json

import pytest
import torch

from models.config import LossConfig, ModelConfig, OptimConfig
from models.model import KeypointModel
from models.reconstruction import VitPerceptual, random_patch_mask
from models.losses import LOSS_NAMES, compute_losses
from models.train_step import make_optimizer, predict, prepare_for_training, train_step
from models.variants import VARIANTS
from pipeline.card import load_card

K = 5


def tiny_config(**kw) -> ModelConfig:
    base = dict(num_keypoints=K, links=((0, 1), (1, 2), (2, 3), (3, 4)), parts=((0, 1, 2), (2, 3, 4)),
                flip_permutation=(4, 3, 2, 1, 0), smoothing_groups=((0, 1, 2, 3),), backbone="resnet18",
                backbone_weights="none", image_size=32, head_channels=16, unet_width=4, unet_levels=3,
                perceptual_vit="vit_tiny_patch16_224", perceptual_weights="none")
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return KeypointModel(tiny_config())


def make_batch(n_unlabeled=3, n_labeled=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"unlabeled": torch.rand(n_unlabeled, 3, size, size, generator=g),
            "labeled": torch.rand(n_labeled, 3, size, size, generator=g),
            "keypoints": torch.rand(n_labeled, K, 2, generator=g) * 1.2 - 0.6,
            "visible": torch.tensor([[True, True, False, True, True]] * n_labeled),
            "depth": torch.rand(n_labeled, K, generator=g) * 0.4 - 0.2}       # Table 2's baseline's 3D labels


def grad_norms(model):
    det = model.detector
    rows = det.out.weight.grad                 # the last layer's rows: heatmaps, uncertainty maps, depth maps
    heads = (None, None, None) if rows is None else (rows[:K], rows[K:2 * K], rows[2 * K:])
    out = {"backbone": next(det.backbone.parameters()).grad, "theta": model.edges.theta.grad,
           "gamma": model.edges.gamma.grad, "unet": model.unet.out.weight.grad,
           "heatmap_head": heads[0], "certainty_head": heads[1], "depth_head": heads[2]}
    return {k: 0.0 if g is None else g.abs().sum().item() for k, g in out.items()}


EXPECTED_GRADS = {  # which parts get gradients under each variant
    "full": {"backbone", "theta", "gamma", "unet", "heatmap_head", "certainty_head", "depth_head"},
    "no-recon": {"backbone", "heatmap_head", "depth_head"},
    "no-2d": {"backbone", "theta", "gamma", "unet", "heatmap_head", "certainty_head", "depth_head"},
    "no-3d": {"backbone", "theta", "gamma", "unet", "heatmap_head", "certainty_head"},
    "no-uncertainty": {"backbone", "theta", "gamma", "unet", "heatmap_head", "depth_head"},
    "no-label-aug": {"backbone", "theta", "gamma", "unet", "heatmap_head", "certainty_head", "depth_head"},
    "scale-free": {"backbone", "theta", "gamma", "unet", "heatmap_head", "certainty_head", "depth_head"},
    "only-recon": {"backbone", "theta", "gamma", "unet", "heatmap_head", "certainty_head"},
    "only-2d": {"backbone", "heatmap_head"},
    "only-3d": {"backbone", "heatmap_head", "depth_head"},
    "shared-batch": {"backbone", "heatmap_head"},
    "supervised": {"backbone", "heatmap_head"},
    "xiao": {"backbone", "heatmap_head"},                   # heatmap regression: only the heatmaps are trained
    "xiao-depth": {"backbone", "heatmap_head", "depth_head"},   # and depth from the 3D labels
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_loss_is_finite_with_gradients_where_it_should(model, variant):
    torch.manual_seed(1)
    cfg = LossConfig(variant=variant)
    batch = make_batch(n_unlabeled=0 if variant == "supervised" else 3)
    model.zero_grad(set_to_none=True)
    losses = compute_losses(model, batch, step=500, total_steps=1000, cfg=cfg)
    assert list(losses) == list(LOSS_NAMES)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    v = VARIANTS[variant]
    for name, on in (("recon", v.recon), ("geo2d", v.geo2d), ("geo3d", v.geo3d), ("smooth", v.smoothing),
                     ("depth", v.depth_supervised)):
        assert (losses[name].item() > 0) == on, name
    assert losses["few_shot"].item() > 0
    losses["loss"].backward()
    norms = grad_norms(model)
    assert {k for k, g in norms.items() if g > 0} == EXPECTED_GRADS[variant], norms
    assert all(p.grad is None for p in model.perceptual.parameters())      # the ViT stays frozen


def test_labeled_images_apart_keep_their_own_batch_norm_statistics(model):
    """``labeled_apart``: the labeled images are detected in a pass of their own, so Eq. 2 sees exactly what the
    supervised baseline sees (same augmentation draws), while in the shared batch the unlabeled images' BatchNorm
    statistics change it; every loss of the full method stays finite and reaches the detector either way."""
    model.train()
    batch = make_batch(n_unlabeled=4, n_labeled=3)

    def few_shot(variant, apart):
        torch.manual_seed(5)
        return compute_losses(model, batch, 500, 1000, LossConfig(variant=variant, labeled_apart=apart))["few_shot"]

    alone = few_shot("supervised", False)
    assert torch.equal(few_shot("shared-batch", True), alone)
    assert not torch.equal(few_shot("shared-batch", False), alone)
    torch.manual_seed(6)
    losses = compute_losses(model, batch, 500, 1000, LossConfig(variant="full", labeled_apart=True))
    assert all(torch.isfinite(v) for v in losses.values()) and losses["geo2d"] > 0 and losses["recon"] > 0
    model.zero_grad(set_to_none=True)
    losses["loss"].backward()
    assert grad_norms(model)["backbone"] > 0


@pytest.mark.parametrize("mode", ["frozen-backbone", "frozen"])
def test_frozen_batch_norm_keeps_its_statistics_and_each_image_its_own_detection(mode):
    """``batch_norm``: the frozen BatchNorm layers normalise by their stored statistics while training (so a labeled
    image's detection does not depend on the unlabeled images beside it) and leave them as they were; their scale
    and shift still learn, and the others keep normalising by the batch."""
    torch.manual_seed(0)
    model = KeypointModel(tiny_config(batch_norm=mode))
    batch_norms = {name: m for name, m in model.detector.named_modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    frozen = {name for name in batch_norms if mode == "frozen" or name.startswith("backbone.")}
    stored = {name: batch_norms[name].running_mean.clone() for name in batch_norms}
    optimizer = make_optimizer(model, OptimConfig(lr=1e-2))
    train_step(model, optimizer, make_batch(), 0, 10, LossConfig(variant="full"), precision="fp32")
    assert {name for name, m in batch_norms.items() if not m.training} == frozen
    assert frozen and all(torch.equal(batch_norms[n].running_mean, stored[n]) for n in frozen)
    assert all(not torch.equal(batch_norms[n].running_mean, stored[n]) for n in set(batch_norms) - frozen)
    assert any(batch_norms[n].weight.grad.abs().sum() > 0 for n in frozen)
    images = make_batch(n_unlabeled=4, n_labeled=2)
    with torch.no_grad():
        alone = model.detector.maps(images["labeled"])
        beside = model.detector.maps(torch.cat([images["unlabeled"], images["labeled"]]))[4:]
    assert model.training
    if mode == "frozen":
        torch.testing.assert_close(beside, alone, rtol=1e-4, atol=1e-5)
    else:          # the head's BatchNorm still normalises by the batch
        assert not torch.allclose(beside, alone, rtol=1e-4, atol=1e-5)


def test_each_loss_reaches_its_own_parameters(model):
    torch.manual_seed(2)
    losses = compute_losses(model, make_batch(), step=500, total_steps=1000, cfg=LossConfig())
    params = {"detector": list(model.detector.parameters()), "edges": [model.edges.theta, model.edges.gamma],
              "unet": list(model.unet.parameters())}
    reach = {"few_shot": {"detector"}, "recon": {"detector", "edges", "unet"}, "geo2d": {"detector"},
             "geo3d": {"detector"}, "smooth": {"detector"}}
    for name, expected in reach.items():
        got = set()
        for group, ps in params.items():
            grads = torch.autograd.grad(losses[name], ps, retain_graph=True, allow_unused=True)
            if any(g is not None and g.abs().sum() > 0 for g in grads):
                got.add(group)
        assert got == expected, name


def test_supervised_ignores_unlabeled_images(model):
    batch = make_batch()
    other = dict(batch, unlabeled=torch.rand(5, 3, 32, 32))
    absent = {k: v for k, v in batch.items() if k != "unlabeled"}
    results = []
    for b in (batch, other, absent):
        torch.manual_seed(3)
        results.append(compute_losses(model, b, 0, 1000, LossConfig(variant="supervised"))["loss"])
    assert torch.isfinite(results[0]) and torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_train_step_returns_detached_losses_and_moves_the_weights(model):
    torch.manual_seed(4)
    opt = make_optimizer(model, OptimConfig(lr=1e-3))
    before = model.detector.out.weight.detach().clone()
    out = train_step(model, opt, make_batch(), step=0, total_steps=10, cfg=LossConfig())
    assert set(out) == set(LOSS_NAMES) and all(not v.requires_grad for v in out.values())
    assert not torch.equal(before, model.detector.out.weight)
    out_bf16 = train_step(model, opt, make_batch(), step=1, total_steps=10, cfg=LossConfig(), precision="bf16")
    assert all(torch.isfinite(v) for v in out_bf16.values())
    seen = []
    def halve_gradients(m):                      # e.g. averaging across workers, between backward and step
        seen.append(m.detector.out.weight.grad.clone())
        for p in m.parameters():
            if p.grad is not None:
                p.grad /= 2
    train_step(model, opt, make_batch(), step=2, total_steps=10, cfg=LossConfig(), after_backward=halve_gradients)
    assert len(seen) == 1 and seen[0].abs().sum() > 0


def test_predict_shapes_ranges_and_eval_mode(model):
    model.train()
    out = predict(model, torch.rand(5, 3, 32, 32), batch_size=2)
    assert out["keypoints"].shape == (5, K, 2) and out["uncertainty"].shape == (5, K) and out["depth"].shape == (5, K)
    assert (out["keypoints"].abs() <= 1).all()
    assert ((out["uncertainty"] > 0) & (out["uncertainty"] < 1)).all()
    assert model.training                                                     # restored
    again = predict(model, torch.rand(5, 3, 32, 32))
    assert not again["keypoints"].requires_grad


def test_checkpoint_rebuilds_the_same_network(model, tmp_path):
    ckpt = model.checkpoint()
    path = tmp_path / "ckpt.pt"
    torch.save({"config": json.loads(json.dumps(ckpt["config"])), "state_dict": ckpt["state_dict"]}, path)
    rebuilt = KeypointModel.from_checkpoint(torch.load(path, weights_only=True))
    assert rebuilt.config == model.config
    images = torch.rand(3, 3, 32, 32)
    a, b = predict(model, images), predict(rebuilt, images)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_patch_mask_hides_ninety_percent_of_patches():
    m = random_patch_mask(4, 128, 16, 0.9)
    assert m.shape == (4, 1, 128, 128)
    kept = m[:, 0, ::16, ::16]
    assert (kept.sum((1, 2)) == 6).all()                                      # 64 - round(57.6) = 6 kept
    assert torch.equal(m, kept.repeat_interleave(16, 1).repeat_interleave(16, 2).unsqueeze(1))
    assert not torch.equal(m[0], m[1])                                        # a fresh mask per image


def test_reconstruction_with_a_given_mask_sees_only_its_kept_pixels(model):
    """Eq. 9 with ``mask=``: the same mask gives the same loss (the UNet in eval mode), and pixels it hides do not
    reach the UNet, whatever they hold; without one, a fresh random mask is drawn."""
    from models.reconstruction import reconstruction_loss

    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    edges = torch.rand(2, 1, 32, 32)
    mask = random_patch_mask(2, 32, 8, 0.75)
    model.unet.eval()
    try:
        rebuilt = [reconstruction_loss(model.unet, model.perceptual, x, edges, 0.75, 8, mask=mask)[1]
                   for x in (images, torch.where(mask.bool(), images, torch.rand_like(images)))]
        assert torch.equal(rebuilt[0], rebuilt[1])                  # hidden pixels changed, output did not
        fresh = [reconstruction_loss(model.unet, model.perceptual, images, edges, 0.75, 8)[1] for _ in range(2)]
        assert not torch.equal(fresh[0], fresh[1])
    finally:
        model.unet.train()


def test_vit_features_are_the_last_keys_and_the_cls_token():
    torch.manual_seed(0)
    vit = VitPerceptual("vit_tiny_patch16_224", 32, "none")
    x = torch.rand(2, 3, 32, 32)
    keys, cls = vit(x)
    ref = vit.vit.forward_features((x - vit.mean) / vit.std)
    assert torch.allclose(cls, ref[:, 0], atol=1e-5)
    assert keys.shape == (2, 1 + 4, 192)
    assert vit.loss(x, x).item() == 0.0 and vit.loss(x.flip(-1), x).item() > 0


def test_vit_weights_file_is_resampled_to_the_working_size(tmp_path):
    import timm
    full = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "vit.pth")
    vit = VitPerceptual("vit_tiny_patch16_224", 64, str(tmp_path / "vit.pth"))
    assert torch.equal(vit.vit.blocks[3].attn.qkv.weight, full.blocks[3].attn.qkv.weight)
    assert vit.vit.pos_embed.shape[1] == 1 + 16


def test_configs_round_trip_and_come_from_cards():
    card = load_card("wflw")
    cfg = ModelConfig.from_card(card, backbone="resnet18")
    assert cfg.num_keypoints == 98 and len(cfg.links) == len(card.links) and cfg.flip_perm == card.flip_permutation
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert LossConfig.from_dict(LossConfig(variant="no-3d").to_dict()) == LossConfig(variant="no-3d")
    assert OptimConfig().labeled_batch(10) == 10 and OptimConfig().labeled_batch(50) == 16
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        LossConfig(variant="nope")
    with pytest.raises(ValueError, match="unknown settings"):
        ModelConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="links: index out of range"):
        tiny_config(links=((0, 9),))


def test_prepare_for_training_freezes_what_the_variant_does_not_use():
    torch.manual_seed(5)
    m = prepare_for_training(KeypointModel(tiny_config()), LossConfig(variant="no-recon"), OptimConfig(), "cpu")
    assert not any(p.requires_grad for p in m.unet.parameters()) and not m.edges.theta.requires_grad
    opt = make_optimizer(m, OptimConfig())
    n_trainable = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_trainable == sum(p.numel() for p in m.detector.parameters())
    out = train_step(m, opt, make_batch(), 0, 10, LossConfig(variant="no-recon"))
    assert torch.isfinite(out["loss"]) and out["recon"].item() == 0.0


def test_the_losses_run_through_the_model_forward(model):
    torch.manual_seed(6)
    via_forward = model(make_batch(), step=3, total_steps=10, cfg=LossConfig(variant="no-2d"))
    torch.manual_seed(6)
    direct = compute_losses(model, make_batch(), 3, 10, LossConfig(variant="no-2d"))
    assert all(torch.equal(via_forward[k], direct[k]) for k in LOSS_NAMES)


def test_cosine_learning_rate_decays_from_lr_to_a_hundredth():
    from models.config import OptimConfig

    cfg = OptimConfig(lr=1e-3, iterations=101, lr_schedule="cosine")
    rates = [cfg.lr_at(s) for s in range(101)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[50] == pytest.approx(0.505e-3)
    assert OptimConfig(lr=1e-3).lr_at(77) == 1e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        OptimConfig(lr_schedule="step")


def test_eq3_transformations_grow_over_the_configured_share_of_the_run(model, monkeypatch):
    import models.losses

    strengths = []
    real = models.losses.sample_transforms
    monkeypatch.setattr(models.losses, "sample_transforms",
                        lambda n, strength, *a, **k: strengths.append(strength) or real(n, strength, *a, **k))
    # (share of the run, step of 1200) -> Eq. 3's strength; the labeled images' augmentation is always 1.0
    for ramp, step, wanted in ((1.0, 300, 0.25), (0.25, 150, 0.5), (0.25, 900, 1.0), (0.0, 0, 1.0)):
        strengths.clear()
        compute_losses(model, make_batch(), step, 1200, LossConfig(transform_ramp=ramp))
        assert strengths == [1.0, wanted]
    with pytest.raises(ValueError, match="transform_ramp"):
        LossConfig(transform_ramp=1.5)


def test_the_edge_weight_learns_at_its_own_rate():
    """Eq. 12's gamma moves ~lr per Adam step: at the paper's 1e-4 alpha stays ~0.018 for thousands of steps, so
    ``edge_weight_lr_scale`` gives it its own rate (AutoLink's code); the other parameters keep lr."""
    from models.config import OptimConfig

    def gamma_after(scale: float, steps: int = 5) -> float:
        torch.manual_seed(0)
        net = KeypointModel(tiny_config())
        optim_cfg = OptimConfig(edge_weight_lr_scale=scale)
        net = prepare_for_training(net, LossConfig(), optim_cfg, "cpu")
        optimizer = make_optimizer(net, optim_cfg)
        # the paper's rate: one group, as an optimiser state saved before this option has (resumes load it)
        assert sorted(g["lr"] for g in optimizer.param_groups) == ([1e-4] if scale == 1.0 else [1e-4, 1e-4 * scale])
        for step in range(steps):
            train_step(net, optimizer, make_batch(seed=step), step, 100, LossConfig(), precision="fp32")
        return net.edges.gamma.item()

    moved_plain, moved_scaled = abs(gamma_after(1.0) + 4.0), abs(gamma_after(100.0) + 4.0)
    assert moved_plain <= 5 * 1e-4 * 1.01                       # Adam: at most ~lr per step
    assert moved_scaled > 20 * moved_plain
    supervised = make_optimizer(prepare_for_training(KeypointModel(tiny_config()), LossConfig(variant="supervised"),
                                                     OptimConfig(edge_weight_lr_scale=512.0), "cpu"),
                                OptimConfig(edge_weight_lr_scale=512.0))
    assert [g["lr"] for g in supervised.param_groups] == [1e-4]     # no reconstruction: no edge weight to learn


def test_heatmap_target_is_zero_at_the_gaussian_and_pulls_a_flat_heatmap_to_the_label():
    """``heatmap_target_loss``: 0 where Eq. 1's weights are the Gaussian at the label, positive for a flat map, and
    gradient steps on it leave the weights' mean (Eq. 1) at the label with less spread; invisible keypoints
    count for nothing."""
    from models.detector import gaussian_heatmaps, pixel_centres, soft_argmax
    from models.losses import heatmap_target_loss

    h = w = 32
    label = torch.tensor([[[0.3, -0.4], [-0.5, 0.2]]])
    visible = torch.tensor([[True, False]])
    exact = gaussian_heatmaps(label, h, w, sigma=1.0).clamp_min(1e-30).log()
    assert heatmap_target_loss(exact, label, visible).item() == pytest.approx(0.0, abs=1e-4)
    flat = torch.zeros(1, 2, h, w, requires_grad=True)
    assert heatmap_target_loss(flat, label, visible).item() > 3.0
    optimiser = torch.optim.Adam([flat], lr=0.5)
    for _ in range(100):
        optimiser.zero_grad()
        heatmap_target_loss(flat, label, visible).backward()
        optimiser.step()
    keypoints, = soft_argmax(flat.detach())
    assert torch.allclose(keypoints[0, 0], label[0, 0], atol=0.005)
    assert torch.equal(flat.detach()[0, 1], torch.zeros(h, w))                 # the invisible one untouched
    weights = flat.detach().reshape(1, 2, h * w).softmax(-1)[0, 0]
    spread = (weights * ((pixel_centres(h, w) - label[0, 0]) ** 2).sum(-1)).sum().sqrt()
    assert spread < 0.1      # the Gaussian's own: sqrt(2) sigma = 0.088 in [-1, 1]; a flat map's about 0.9


def test_heatmap_target_reaches_the_loss_only_when_asked(model):
    torch.manual_seed(1)
    batch = make_batch(n_unlabeled=0)
    off = compute_losses(model, batch, 500, 1000, LossConfig(variant="supervised"))
    torch.manual_seed(1)
    on = compute_losses(model, batch, 500, 1000, LossConfig(variant="supervised", heatmap_target=0.1))
    assert off["heatmap_target"].item() == 0.0 and on["heatmap_target"].item() > 0.0
    assert on["loss"].item() == pytest.approx(off["loss"].item() + 0.1 * on["heatmap_target"].item(), rel=1e-4)
