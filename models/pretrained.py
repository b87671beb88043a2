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

import functools
import logging
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import timm
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
            with hub_offline(not hub_reachable()):
                return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure to fetch weights falls back to random init
            _say_once(name, f"pretrained weights unavailable ({type(e).__name__}, hub offline or not cached): "
                            "random initialisation")
    else:
        _say_once(name, "pretrained=False: random initialisation", logging.DEBUG)
    return timm.create_model(name, pretrained=False, **kwargs)
