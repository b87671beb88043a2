"""Detector (§3.1 Eq. 1, §3.4 Eq. 4) and weight loading."""
import logging

import pytest
import torch

from models.config import ModelConfig
from models.detector import Detector, local_soft_argmax, pixel_centres, soft_argmax
from models import pretrained


def tiny_config(**kw) -> ModelConfig:
    base = dict(num_keypoints=3, links=((0, 1), (1, 2)), backbone="resnet18", backbone_weights="none", image_size=64,
                head_channels=32, perceptual_vit="vit_tiny_patch16_224", perceptual_weights="none", unet_width=8)
    base.update(kw)
    return ModelConfig(**base)


def test_pixel_centres_follow_align_corners_false():
    g = pixel_centres(4, 8)
    assert g.shape == (32, 2)
    assert torch.allclose(g[0], torch.tensor([-1 + 1 / 8, -1 + 1 / 4]))       # first pixel's centre
    assert torch.allclose(g[-1], torch.tensor([1 - 1 / 8, 1 - 1 / 4]))        # last pixel's centre
    assert torch.allclose(g[1] - g[0], torch.tensor([2 / 8, 0.0]))            # x runs along a row


def test_soft_argmax_of_a_sharp_peak_returns_the_peak_and_its_values():
    h = w = 16
    heat = torch.full((2, 3, h, w), -50.0)
    peaks = [(3, 5), (10, 0), (15, 15)]                                       # (row, col)
    for k, (r, c) in enumerate(peaks):
        heat[:, k, r, c] = 50.0
    values = torch.randn(2, 3, h, w)
    kp, v = soft_argmax(heat, values)
    for k, (r, c) in enumerate(peaks):
        expected = torch.tensor([2 * (c + 0.5) / w - 1, 2 * (r + 0.5) / h - 1])
        assert torch.allclose(kp[:, k], expected.expand(2, 2), atol=1e-5)
        assert torch.allclose(v[:, k], values[:, k, r, c], atol=1e-5)


def test_soft_argmax_of_a_flat_heatmap_is_the_centre():
    kp, = soft_argmax(torch.zeros(1, 2, 8, 8))
    assert torch.allclose(kp, torch.zeros(1, 2, 2), atol=1e-6)


def test_local_soft_argmax_ignores_mass_away_from_the_peak_and_is_eq1_over_a_window_that_covers_the_map():
    torch.manual_seed(0)
    heat = torch.randn(2, 3, 12, 16) * 3
    assert torch.allclose(local_soft_argmax(heat, 16), soft_argmax(heat)[0], atol=1e-5)
    heat = torch.full((1, 1, 16, 16), -4.0)                   # a low floor over many pixels pulls Eq. 1 inward
    heat[0, 0, 2, 1], heat[0, 0, 2, 2] = 6.0, 6.0             # the peak: between columns 1 and 2 of row 2
    heat[0, 0, 13, 13] = 5.0                                  # a second, weaker mode far away
    kp = local_soft_argmax(heat, 1)[0, 0]
    assert torch.allclose(kp, torch.tensor([2 * 2.0 / 16 - 1, 2 * 2.5 / 16 - 1]), atol=1e-3)
    whole, = soft_argmax(heat)
    assert (whole[0, 0] - kp).norm() > 0.2                    # Eq. 1 over the map is pulled toward (13, 13)
    corner = torch.full((1, 1, 8, 8), -9.0)
    corner[0, 0, 0, 0] = 5.0                                  # window clipped at the border, no wrap-around
    assert torch.allclose(local_soft_argmax(corner, 2)[0, 0], torch.tensor([-7 / 8, -7 / 8]), atol=1e-3)


def test_detector_shapes_and_small_start():
    torch.manual_seed(0)
    det = Detector(tiny_config())(torch.rand(2, 3, 64, 64))
    assert det.keypoints.shape == (2, 3, 2) and det.certainty.shape == (2, 3) and det.depth.shape == (2, 3)
    assert det.heatmaps.shape == (2, 3, 16, 16)                                # stride 4
    assert det.keypoints.abs().max() < 0.05          # near-flat heatmaps: keypoints start near the centre
    assert det.depth.abs().max() < 0.05 and det.certainty.abs().max() < 0.05  # depth and v start near 0


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_inference_copy_folds_every_batch_norm_and_detects_the_same(backbone):
    torch.manual_seed(0)
    detector = Detector(tiny_config(backbone=backbone))
    for m in detector.modules():                       # statistics and affine terms far from identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    for m in [*detector.upsample, detector.out]:                         # heatmaps with peaks, not flat
        if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
            torch.nn.init.normal_(m.weight, std=0.05 if m is not detector.out else 1.0)
    detector.train()
    fused = detector.inference_copy()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert detector.training and not fused.training                      # the original is left as it was
    images = torch.rand(4, 3, 64, 64)
    detector.eval()
    with torch.inference_mode():
        (expected, embedding), (got, fused_embedding) = detector.detect_and_embed(images), fused.detect_and_embed(images)
    assert (expected.keypoints - got.keypoints).abs().max() * 32 < 1e-3          # pixels of a 64-px image
    assert expected.keypoints.std() > 0.01                                        # the comparison is not of centres
    for a, b in [(expected.certainty, got.certainty), (expected.depth, got.depth), (embedding, fused_embedding)]:
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_weights_file_loads_and_a_mismatch_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    source = Detector(tiny_config())
    path = tmp_path / "backbone.pth"
    torch.save(source.backbone.state_dict(), path)
    loaded = Detector(tiny_config(backbone_weights=str(path)))
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[k], v), k
    with pytest.raises(ValueError, match="backbone.pth: weights do not fit resnet34"):
        Detector(tiny_config(backbone="resnet34", backbone_weights=str(path)))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Detector(tiny_config(backbone_weights=str(tmp_path / "missing.pth")))


def test_unavailable_pretrained_weights_fall_back_to_random_init_logged_once(monkeypatch, tmp_path, caplog):
    import huggingface_hub.constants as hub
    offline_before = hub.HF_HUB_OFFLINE
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))      # an empty cache
    monkeypatch.setattr(pretrained, "hub_reachable", lambda: False)
    monkeypatch.setattr(pretrained, "_reported", set())
    with caplog.at_level(logging.WARNING, logger="models.pretrained"):
        Detector(tiny_config(backbone_weights="auto"))
        Detector(tiny_config(backbone_weights="auto"))
    lines = [r.getMessage() for r in caplog.records if r.name == "models.pretrained"]
    assert len(lines) == 1 and "resnet18" in lines[0] and "RANDOM initialisation" in lines[0]
    assert "To get them" in lines[0]                       # and says how to get real weights
    assert hub.HF_HUB_OFFLINE == offline_before            # offline mode was only for the attempt
