"""The ids of a run of frames, without a string per frame.

A frame's id is an image's path or ``<video>#<frame number>`` (pipeline/pool.py names the rows of its stream so).
``FrameIds`` is that list of ids, in order, held as one entry per file and, for a video, an array of its frames'
numbers (8 bytes a frame): an hour of video at 30 frames/s costs 0.9 MB, where a list of its ids took about
200 bytes a frame (20 MB) on the driver.  Ids are built when asked for, one at a time.
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Iterator, Sequence

import numpy as np

_BLOCK = 4096           # frame numbers turned into ids at once while iterating


class FrameIds(Sequence[str]):
    """A sequence of frame ids (str), indexable by row; ``add_image`` / ``add_video`` append a file's rows.

    ``ids[row] = "<video>#<n>"`` renames a video row to another frame number of the same video (a chunk that
    failed to decode is named by its first frame, which need not be a multiple of the frame step)."""

    def __init__(self) -> None:
        self._paths: list[str] = []
        self._numbers: list[np.ndarray | None] = []   # a video's frame numbers, in row order; None: an image
        self._starts: list[int] = []                   # the first row of each file
        self._len = 0

    def add_image(self, path: str) -> int:
        """Append one image's row; returns it."""
        return self._append(str(path), None)

    def add_video(self, path: str, frames: int, step: int = 1) -> int:
        """Append the rows of frames 0, step, 2 step, ... < frames of a video; returns its first row."""
        return self._append(str(path), np.arange(0, frames, step, dtype=np.int64))

    def add_video_frames(self, path: str, numbers: Sequence[int] | np.ndarray) -> int:
        """Append the rows of a video's frames ``numbers`` (ascending, as ``frame_numbers`` gave them); returns
        its first row."""
        return self._append(str(path), np.array(numbers, np.int64))

    def _append(self, path: str, numbers: np.ndarray | None) -> int:
        first = self._len
        self._paths.append(path)
        self._numbers.append(numbers)
        self._starts.append(first)
        self._len += 1 if numbers is None else len(numbers)
        return first

    def __len__(self) -> int:
        return self._len

    def _locate(self, row: int) -> tuple[int, int]:
        """(file, row within it) of a row (negative rows count from the end)."""
        if row < 0:
            row += self._len
        if not 0 <= row < self._len:
            raise IndexError(f"frame row {row} out of range (0-{self._len - 1})")
        f = bisect_right(self._starts, row) - 1       # a video of no frames shares its start with the next file
        return f, row - self._starts[f]

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(self._len))]
        f, i = self._locate(int(row))
        numbers = self._numbers[f]
        return self._paths[f] if numbers is None else f"{self._paths[f]}#{numbers[i]}"

    def __setitem__(self, row: int, frame_id: str) -> None:
        f, i = self._locate(int(row))
        numbers = self._numbers[f]
        video, _, number = str(frame_id).rpartition("#")
        if numbers is None or video != self._paths[f] or not number.isdigit():
            raise ValueError(f"row {row} is {self[row]}: it cannot be renamed {frame_id}")
        numbers[i] = int(number)

    def __iter__(self) -> Iterator[str]:
        for path, numbers in zip(self._paths, self._numbers):
            if numbers is None:
                yield path
            else:                                      # a block of Python ints at a time, not the video's
                for start in range(0, len(numbers), _BLOCK):
                    yield from (f"{path}#{n}" for n in numbers[start:start + _BLOCK].tolist())

    def __eq__(self, other) -> bool:
        """Equal to any sequence of the same ids in the same order (a list, another FrameIds)."""
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(other) == self._len and all(a == b for a, b in zip(self, other))

    __hash__ = None     # mutable (``__setitem__``), as a list

    def __repr__(self) -> str:
        head = ", ".join(map(repr, self[:3]))
        return f"FrameIds([{head}{', ...' if self._len > 3 else ''}], {self._len} frames)"

    def spans(self) -> list[tuple[str, slice]]:
        """Each file's path and its rows, in row order."""
        ends = [*self._starts[1:], self._len]
        return [(path, slice(start, end)) for path, start, end in zip(self._paths, self._starts, ends)]

    def frame_numbers(self) -> np.ndarray:
        """[N] each row's frame number, -1 for an image's row."""
        return np.concatenate([np.full(1, -1, np.int64) if numbers is None else numbers
                               for numbers in self._numbers]) if self._numbers else np.zeros(0, np.int64)

    def take(self, rows: Sequence[int] | np.ndarray) -> "FrameIds":
        """The ids of ``rows`` (ascending row numbers), as a new FrameIds."""
        rows = np.asarray(rows, np.int64)
        if len(rows) > 1 and np.any(np.diff(rows) <= 0):
            raise ValueError("take: rows must be ascending and distinct")
        if len(rows) and (rows[0] < 0 or rows[-1] >= self._len):
            raise IndexError(f"take: frame rows {rows[0]}-{rows[-1]} out of range (0-{self._len - 1})")
        files = np.searchsorted(self._starts, rows, side="right") - 1      # as ``_locate``, every row at once
        out = FrameIds()
        for part in np.split(np.arange(len(rows)), np.flatnonzero(np.diff(files)) + 1) if len(rows) else []:
            f = int(files[part[0]])
            numbers = self._numbers[f]
            out._append(self._paths[f], None if numbers is None else numbers[rows[part] - self._starts[f]])
        return out

    def __add__(self, other: Sequence[str]) -> "FrameIds | list[str]":
        """This one's ids then ``other``'s: a FrameIds when ``other`` is one, else a list."""
        if not isinstance(other, FrameIds):
            return list(self) + list(other)
        out = FrameIds()
        for part in (self, other):
            for path, numbers in zip(part._paths, part._numbers):
                out._append(path, None if numbers is None else numbers.copy())
        return out

    def __radd__(self, other: Sequence[str]) -> list[str]:
        return list(other) + list(self)

    def unique(self) -> bool:
        """No id twice: no file twice, and each video's frame numbers strictly increasing."""
        return len(set(self._paths)) == len(self._paths) and all(
            numbers is None or bool(np.all(np.diff(numbers) > 0)) for numbers in self._numbers)


def select_ids(ids: Sequence[str], rows: Sequence[int] | np.ndarray) -> Sequence[str]:
    """The ids of ``rows`` (ascending) of a FrameIds (a FrameIds) or of any sequence (a list)."""
    return ids.take(rows) if isinstance(ids, FrameIds) else [ids[int(i)] for i in rows]
