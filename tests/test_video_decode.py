"""Video pool chunks seek to their start: each frame is decoded about once, and named by its time.

A 2,000-frame 64 x 64 video whose frame i shows i in base 16 as the brightness of three quadrants (the
fourth stays mid-grey), encoded with a keyframe every 50 frames, is cut into the pool's 256-frame chunks.
Decoding every chunk must cost at most the video plus one group of pictures per chunk (decoding each
chunk from frame 0, as before, costs 4.6 times the video), and every frame must come back exactly once,
under its own index, with its own picture.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

N_FRAMES, SIDE, GOP, CHUNK = 2000, 64, 50, 256
QUADRANTS = ((slice(0, 32), slice(0, 32)), (slice(0, 32), slice(32, 64)), (slice(32, 64), slice(0, 32)))


def digits(i: int) -> list[int]:
    return [(i >> 8) & 15, (i >> 4) & 15, i & 15]


def numbered_frame(i: int) -> np.ndarray:
    image = np.full((SIDE, SIDE, 3), 128, np.uint8)
    for (rows, cols), d in zip(QUADRANTS, digits(i)):
        image[rows, cols] = 16 * d + 8
    return image


def read_number(image: np.ndarray) -> int:
    """The index a decoded frame shows (quadrant centres, robust to compression noise of a few levels)."""
    ds = [int(np.clip(np.median(image[rows, cols][8:24, 8:24]) // 16, 0, 15)) for rows, cols in QUADRANTS]
    return (ds[0] << 8) | (ds[1] << 4) | ds[2]


def write_numbered_video(path: Path, codec: str) -> Path:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        stream.gop_size = GOP
        if codec == "libx264":      # B-frames: decode order differs from presentation order
            stream.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "bf": "2", "crf": "10"}
        else:
            stream.bit_rate = 2_000_000
        for i in range(N_FRAMES):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(numbered_frame(i), format="rgb24")))
        out.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module", params=["mpeg4", "libx264"])
def numbered_video(request, tmp_path_factory) -> Path:
    import av

    if request.param not in av.codecs_available:
        pytest.skip(f"PyAV has no {request.param} encoder")
    return write_numbered_video(tmp_path_factory.mktemp("video") / f"numbers-{request.param}.mp4", request.param)


@pytest.fixture
def count_decoded(monkeypatch):
    """Counts every frame the pool decodes (pipeline.pool._decoded is its one decode loop)."""
    from pipeline import pool

    counter = {"frames": 0}
    original = pool._decoded

    def counting(container, stream):
        for frame in original(container, stream):
            counter["frames"] += 1
            yield frame
    monkeypatch.setattr(pool, "_decoded", counting)
    return counter


def chunks(path: Path, n: int, step: int = 1) -> list[dict]:
    return [{"video": str(path), "start": s, "count": min(CHUNK, n - s), "step": step} for s in range(0, n, CHUNK)]


def test_every_frame_once_with_its_picture(numbered_video, count_decoded):
    from pipeline.pool import video_frames, video_length

    n = video_length(numbered_video)
    assert n == N_FRAMES
    rows = [r for c in chunks(numbered_video, n) for r in video_frames(c, SIDE, (0, 0, SIDE, SIDE))]
    assert all(r["ok"] for r in rows)
    ids = [int(r["id"].rsplit("#", 1)[1]) for r in rows]
    assert ids == list(range(N_FRAMES))                              # each index exactly once, in order
    shown = [read_number(r["image"]) for r in rows]
    wrong = [(i, s) for i, s in zip(ids, shown) if i != s]
    assert not wrong, f"frames named by the wrong index (index, picture): {wrong[:5]}"
    budget = N_FRAMES + len(chunks(numbered_video, n)) * GOP
    assert count_decoded["frames"] <= budget, f"{count_decoded['frames']} frames decoded, budget {budget}"


def test_chunk_in_the_middle_decodes_one_group_of_pictures_at_most(numbered_video, count_decoded):
    from pipeline.pool import video_frames

    rows = video_frames({"video": str(numbered_video), "start": 1040, "count": 100}, SIDE, (0, 0, SIDE, SIDE))
    assert [int(r["id"].rsplit("#", 1)[1]) for r in rows] == list(range(1040, 1140))
    assert [read_number(r["image"]) for r in rows] == list(range(1040, 1140))
    assert count_decoded["frames"] <= 100 + GOP + 2      # + up to 2 frames read past the end (B-frame delay)


def test_step_keeps_multiples_of_step_whatever_the_chunking(numbered_video):
    from pipeline.pool import video_frames

    rows = [r for c in chunks(numbered_video, N_FRAMES, step=3) for r in video_frames(c, SIDE, (0, 0, SIDE, SIDE))]
    ids = [int(r["id"].rsplit("#", 1)[1]) for r in rows]
    assert ids == list(range(0, N_FRAMES, 3))
    assert [read_number(r["image"]) for r in rows] == ids


def test_test_time_crops_cut_every_view_from_one_decode(numbered_video, count_decoded, tmp_path):
    """Rows of V views (test-time crops): each frame decoded once, whatever V; a failed chunk's row has V views."""
    from pipeline.pool import video_frames

    boxes = [(0, 0, SIDE, SIDE), (4, 0, SIDE + 4, SIDE), (0, 0, SIDE * 1.1, SIDE * 1.1)]
    rows = video_frames({"video": str(numbered_video), "start": 1040, "count": 100}, SIDE, crop_boxes=boxes)
    assert [int(r["id"].rsplit("#", 1)[1]) for r in rows] == list(range(1040, 1140))
    assert all(r["image"].shape == (3, SIDE, SIDE, 3) and r["crop"].shape == (3, 4) for r in rows)
    assert [read_number(r["image"][0]) for r in rows] == list(range(1040, 1140))   # the crop itself: the picture
    np.testing.assert_array_equal(rows[0]["crop"], np.asarray(boxes, float))
    assert count_decoded["frames"] <= 100 + GOP + 2          # as with one crop: each frame once
    failed = video_frames({"video": str(tmp_path / "missing.mp4"), "start": 0, "count": 10}, SIDE, crop_boxes=boxes)
    assert not failed[0]["ok"] and failed[0]["image"].shape == (3, SIDE, SIDE, 3)


def test_read_frames_seeks_to_each_wanted_frame(numbered_video, count_decoded):
    """Thumbnails of suggestions and labeled frames extracted from a video: a few frames anywhere in it cost a
    group of pictures each (two close together, one), not a decode from frame 0; numbers past the end are left
    out."""
    from pipeline.pool import read_frames

    wanted = [1990, 7, 1200, 1210, N_FRAMES + 5]
    frames = list(read_frames(numbered_video, wanted))
    assert [i for i, _ in frames] == [7, 1200, 1210, 1990]
    assert [read_number(rgb) for _, rgb in frames] == [7, 1200, 1210, 1990]
    assert count_decoded["frames"] <= 3 * (GOP + 2) + 10 + 2 * GOP + 2    # 3 seeks, + 10 on, + the end's seek
    assert list(read_frames(numbered_video, [N_FRAMES + 500])) == []        # far past the end: nothing, no hang


def test_chunk_past_the_end_is_empty_and_a_missing_file_is_a_failed_row(numbered_video, tmp_path):
    from pipeline.pool import video_frames

    assert video_frames({"video": str(numbered_video), "start": N_FRAMES + 500, "count": 10}, SIDE) == []
    rows = video_frames({"video": str(tmp_path / "missing.mp4"), "start": 0, "count": 10}, SIDE)
    assert len(rows) == 1 and not rows[0]["ok"] and rows[0]["id"].endswith("missing.mp4#0")


def test_length_without_frame_count_in_the_container(tmp_path):
    """Matroska stores no frame count: the length comes from counting packets, not from decoding."""
    import av

    from pipeline.pool import video_length

    path = tmp_path / "numbers.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        for i in range(120):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(numbered_frame(i), format="rgb24")))
        out.mux(stream.encode(None))
    with av.open(str(path)) as c:
        assert not c.streams.video[0].frames
    assert video_length(path) == 120
