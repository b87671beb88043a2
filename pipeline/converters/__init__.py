"""Converters from native dataset layouts to the prepared format (pipeline/prepared.py).

Each converter is a module here with::

    CARD = "wflw"          # the card it uses unless the user passes another
    HELP = "..."           # one line: what the source folder must contain
    def instances(src: Path, card: Card, skipped: Counter) -> Iterator[Instance]

``instances`` yields one ``Instance`` per object, with keypoints in source-image pixels, and raises
``DataError(file, row, message)`` on bad input.  Unlabeled pool entries it had to skip are counted in
``skipped[reason]``.  ``convert`` runs one and writes the prepared dataset atomically.  The optional
keyword parameters ``margin``, ``labels`` and ``images`` are passed only to converters whose ``instances``
takes them.  A converter may also define ``card_for(src)`` (the card when none is given) and
``pool_videos(src)`` (videos recorded in meta.json as the unlabeled pool).
"""
from __future__ import annotations

import importlib
import inspect
from collections import Counter
from pathlib import Path

from pipeline.card import Card, load_card
from pipeline.prepared import write_prepared

#: format name -> module under pipeline/converters
FORMATS = {
    "wflw": "wflw",
    "300w": "w300",
    "cub": "cub",
    "atrw": "atrw",
    "carfusion": "carfusion",
    "lsp": "lsp",
    "syntheseyes": "syntheseyes",
    "h36m": "h36m",
    "coco": "coco",
    "dlc": "dlc",
    "pts": "pts",
    "slp": "slp",
}


def converter(fmt: str):
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    return importlib.import_module(f"pipeline.converters.{FORMATS[fmt]}")


def convert(fmt: str, src: str | Path, out: str | Path, *, card: str | Card | None = None, size: int = 128,
            margin: float = 0.25, overwrite: bool = False, labels: str | Path | None = None,
            images: str | Path | None = None) -> Path:
    """Convert the native dataset at ``src`` (a folder, or a file for formats that read one) into a
    prepared dataset at ``out``.

    labels: a label file to read instead of the dataset's own (e.g. DeepLabCut machine labels); only
    for formats whose ``instances`` takes a ``labels`` argument (a ValueError for the others).
    images: the folder holding the images of an annotation file given as ``src`` (COCO JSON); only for
    formats whose ``instances`` takes an ``images`` argument.
    """
    mod = converter(fmt)
    params = inspect.signature(mod.instances).parameters
    if labels is not None and "labels" not in params:
        raise ValueError(f"format {fmt!r} does not read a separate label file (--labels)")
    if images is not None and "images" not in params:
        raise ValueError(f"format {fmt!r} does not take a separate image folder (--images)")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: source not found")
    if card is None:
        card = mod.card_for(src) if hasattr(mod, "card_for") else load_card(mod.CARD)
    elif not isinstance(card, Card):
        card = load_card(card)
    skipped: Counter = Counter()
    kwargs = {"margin": margin} if "margin" in params else {}
    meta = {"format": fmt, "source": str(src.resolve())}
    if labels is not None:
        kwargs["labels"] = Path(labels)
        meta["labels"] = str(Path(labels).resolve())
    if images is not None:
        kwargs["images"] = Path(images)
        meta["images"] = str(Path(images).resolve())
    if hasattr(mod, "pool_videos"):               # e.g. a DeepLabCut or SLEAP project's videos: the pool
        meta["pool_videos"] = [str(p) for p in mod.pool_videos(src)]
    return write_prepared(out, card, mod.instances(src, card, skipped, **kwargs), size=size, margin=margin,
                          overwrite=overwrite, skipped=skipped, extra_meta=meta)
