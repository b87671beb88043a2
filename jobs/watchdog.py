"""A stream that cannot hang: items pulled in a background thread, an error when none arrives in time.

``watched(it, timeout_s=..., what=..., explain=...)`` yields the items of ``it`` as they come (up to
``depth`` prefetched, so loading overlaps the consumer's work) and raises ``StallError`` when no item has
arrived for ``timeout_s`` seconds: the training loop waiting for unlabeled batches and batch inference
waiting for predictions become a clear error instead of a silent hang.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


class StallError(RuntimeError):
    """No progress for longer than the configured time."""


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


def watched(items: Iterable[T], *, timeout_s: float, what: str, explain: Callable[[], str] = lambda: "",
            depth: int = 2) -> Iterator[T]:
    """Yield ``items``; raise StallError("no <what> for <timeout_s> s: <explain()>") when one is overdue."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def pump():
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as e:                          # handed to the consumer, raised there
            put(_Raised(e))

    threading.Thread(target=pump, name=f"watched-{what}", daemon=True).start()
    try:
        while True:
            try:
                item = q.get(timeout=timeout_s)
            except queue.Empty:
                detail = explain()
                raise StallError(f"no {what} for {timeout_s:g} s" + (f": {detail}" if detail else "")) from None
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()


def time_left(remaining: float, rate: float, of: str = "") -> str:
    """What a progress line says of the work still to do: ``remaining`` units at ``rate`` units/s, e.g.
    "about 1 h 32 min left", "about 4 min of training left" (``of="training"``), "under a minute left"; "" when
    nothing is left or no rate is known."""
    if remaining <= 0 or rate <= 0:
        return ""
    minutes, of = round(remaining / rate / 60), f" of {of}" if of else ""
    if minutes < 1:
        return f"under a minute{of} left"
    return f"about {minutes // 60} h {minutes % 60} min{of} left" if minutes >= 60 else f"about {minutes} min{of} left"
