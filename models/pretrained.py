"""Build a timm model with pretrained weights when they can be had, random initialisation otherwise.

Three sources, in order:

1. ``weights_file``: a local state dict (``.pth``/``.pt``/``.bin``/``.safetensors``; a checkpoint holding
   it under ``state_dict`` or ``model`` works too).  It goes through timm's own loader, so model-specific
   filters apply (a ViT's position embedding is resampled to the working image size, a classifier that
   ``features_only`` drops is ignored).  A file that does not fit raises ``ValueError`` naming the file.
2. ``pretrained=True``: timm's hub download (or the local hub cache).  Where the hub cannot be reached
   the download is not attempted at all (a failed attempt retries for ~45 s per file): the hub library is
   put in offline mode for the call, so a cached copy still loads.
3. Otherwise, or when 2 fails: random initialisation, said once per model name in the log.
"""
from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch.nn as nn

log = logging.getLogger(__name__)
_reported: set[str] = set()


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the hub's endpoint accepts a TCP connection within ``timeout_s``."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


@contextmanager
def _hub_offline(offline: bool):
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


def create_timm_model(name: str, pretrained: bool = True, weights_file: str | Path | None = None,
                      **kwargs) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with weights from ``weights_file``, the hub, or random init."""
    if weights_file is not None:
        path = Path(weights_file)
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
        return model
    if pretrained:
        try:
            with _hub_offline(not _hub_reachable()):
                return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to fetch weights falls back to random init
            _say_once(name, f"pretrained weights unavailable ({type(e).__name__}, hub offline or not cached): "
                            "random initialisation")
    else:
        _say_once(name, "pretrained=False: random initialisation", logging.DEBUG)
    return timm.create_model(name, pretrained=False, **kwargs)
