"""The fskp command line: every subcommand documented, --help light, errors clean."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from jobs.cli import build_parser, command_names, main


@pytest.mark.parametrize("name", command_names())
def test_every_command_is_documented(name):
    module = importlib.import_module(f"jobs.commands.{name.replace('-', '_')}")
    assert module.__doc__ and module.__doc__.strip(), f"jobs/commands/{name}.py has no docstring"
    assert getattr(module, "HELP", "").strip(), f"jobs/commands/{name}.py has no HELP line"


def test_help_lists_every_command_without_heavy_imports():
    code = ("import sys; from jobs.cli import build_parser; build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'ray', 'mlflow', 'timm') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    text = build_parser().format_help()
    for name in command_names():
        assert name in text


def test_errors_are_reported_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nkeypoints: [a, b]\nlinks: [[a, c]]\nmetric: {kind: pck}\n")
    assert main(["cards", "--check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown keypoint 'c'" in err


@pytest.mark.parametrize("command", [["train", "--data", "d"], ["reproduce", "--datasets", "d"],
                                     ["label", "--project", "p", "--out", "o"]])
def test_batch_norm_option_reaches_the_training_job(command):
    from jobs.commands.train import job_kwargs

    parser = build_parser()
    assert job_kwargs(parser.parse_args(command))["batch_norm"] == "batch"
    assert job_kwargs(parser.parse_args(command + ["--batch-norm", "frozen-backbone"]))["batch_norm"] == "frozen-backbone"
    with pytest.raises(SystemExit):
        parser.parse_args(command + ["--batch-norm", "fixed"])


@pytest.mark.parametrize("command", [["train", "--data", "d"], ["reproduce", "--datasets", "d"],
                                     ["label", "--project", "p", "--out", "o"]])
def test_heatmap_target_option_reaches_the_training_job_and_the_loss(command):
    from jobs.commands.label import LABEL_DEFAULTS
    from jobs.commands.train import job_kwargs
    from jobs.training import TrainJob, build_model
    from pipeline.card import load_card

    parser = build_parser()
    default = LABEL_DEFAULTS["heatmap_target"] if command[0] == "label" else 0.0     # off where the paper is run
    assert job_kwargs(parser.parse_args(command))["heatmap_target"] == default
    kwargs = job_kwargs(parser.parse_args(command + ["--heatmap-target", "0.05"]))
    assert kwargs["heatmap_target"] == 0.05
    job = TrainJob(data="d", **{**kwargs, "backbone_weights": "none", "perceptual_weights": "none",
                                "perceptual_vit": "vit_tiny_patch16_224", "backbone": "resnet18"})
    _, loss_cfg, _ = build_model(load_card("synth_face"), job)
    assert loss_cfg.heatmap_target == 0.05
