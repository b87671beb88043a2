"""Long videos: predictions go to their rows of file-backed arrays (jobs/inference.py ``FramePlan``,
``spill_array``) and the outputs are written from them a chunk of frames at a time (pipeline/exports.py
``prediction_chunks``), so the driver's heap does not grow with the video.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_lab_outputs import PARTS, card, predictions, write_video


def test_frame_plan_knows_every_row_before_the_stream_starts(tmp_path):
    from jobs.inference import FramePlan

    (tmp_path / "frames" / "sub").mkdir(parents=True)
    for name in ("frames/b.png", "frames/a.png", "frames/sub/c.png"):
        (tmp_path / name).write_bytes(b"")                      # only names count here
    video = write_video(tmp_path / "frames" / "a.mp4", 7)
    plan = FramePlan([tmp_path / "frames", video], frame_step=3)        # the video named twice: once
    root = str(tmp_path / "frames")
    assert plan.ids == [f"{root}/a.mp4#0", f"{root}/a.mp4#3", f"{root}/a.mp4#6", f"{root}/a.png", f"{root}/b.png",
                        f"{root}/sub/c.png"]
    assert [plan.row(i) for i in reversed(plan.ids)] == list(reversed(range(6)))
    assert plan.lengths == {f"{root}/a.mp4": 7}
    # a chunk that failed to decode comes as one row named by its first frame (4, not a multiple of the step)
    np.testing.assert_array_equal(plan.place([f"{root}/b.png", f"{root}/a.mp4#4"]), [4, 1])
    assert plan.ids[1] == f"{root}/a.mp4#4" and len(plan) == 6
    with pytest.raises(KeyError, match="no source given"):
        plan.row(f"{root}/other.mp4#3")


def test_frame_ids_are_built_when_asked_and_behave_as_a_list():
    from pipeline.frame_ids import FrameIds, select_ids

    ids = FrameIds()
    assert ids.add_image("x/a.png") == 0 and ids.add_video("v.mp4", 7, step=3) == 1
    assert ids.add_video("empty.mp4", 0) == 4 and ids.add_image("x/b.png") == 4      # a video of no frames: no row
    expected = ["x/a.png", "v.mp4#0", "v.mp4#3", "v.mp4#6", "x/b.png"]
    assert ids == expected and list(ids) == expected and len(ids) == 5
    assert ids[-1] == "x/b.png" and ids[1:4] == expected[1:4] and ids.unique()
    ids[2] = "v.mp4#4"                                     # a failed chunk's row takes its first frame's name
    assert ids[2] == "v.mp4#4" and ids.unique()
    for row, name in ((0, "x/a.png#1"), (2, "w.mp4#4"), (2, "v.mp4#x")):
        with pytest.raises(ValueError, match="cannot be renamed"):
            ids[row] = name
    with pytest.raises(IndexError):
        ids[5]
    assert ids.take([0, 3, 4]) == ["x/a.png", "v.mp4#6", "x/b.png"] and select_ids(expected, [1]) == ["v.mp4#0"]
    both = ids + ids.take([1])
    assert isinstance(both, FrameIds) and both[-1] == "v.mp4#0" and not both.unique()
    assert ["y.png"] + ids.take([0]) == ["y.png", "x/a.png"]


def test_a_frame_plan_holds_bytes_not_strings_per_frame(tmp_path, monkeypatch):
    """An hour of video (108,000 frames) costs the plan its frame numbers, 8 bytes a frame: a list of ids took
    about 200 (README, "Video speed")."""
    import tracemalloc

    import pipeline.pool
    from jobs.inference import FramePlan

    video = tmp_path / "hour.mp4"
    video.write_bytes(b"")                                     # its length is all the plan reads
    monkeypatch.setattr(pipeline.pool, "video_length", lambda path: 108_000)
    tracemalloc.start()
    try:
        plan = FramePlan([video])
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(plan) == 108_000 and plan.ids[-1] == f"{video}#107999" and plan.row(f"{video}#500") == 500
    assert held < 12 * 108_000, f"{held / 108_000:.1f} bytes a frame"


def test_spilled_arrays_are_file_backed_and_compact_by_chunks():
    from jobs.inference import _compact, spill_array

    a = spill_array((20_000, 3, 2), np.float64)
    assert isinstance(a, np.memmap) and not a.any()
    a[:] = np.arange(20_000)[:, None, None]
    keep = np.arange(1, 20_000, 7)
    np.testing.assert_array_equal(_compact(a, keep), a[keep])


def test_video_h5_appended_by_chunks_is_the_table_written_at_once(tmp_path):
    import pandas as pd
    import tables

    from pipeline.exports import write_dlc_video_h5

    kp, lk = predictions(10, seed=3)
    kp[4, 2] = np.nan
    frames = list(range(0, 20, 2))
    whole = write_dlc_video_h5(tmp_path / "whole", "s.mp4", "fskp", PARTS, frames, kp, lk)
    chunked = write_dlc_video_h5(tmp_path / "chunked", "s.mp4", "fskp", PARTS, frames, kp, lk, rows=3)
    pd.testing.assert_frame_equal(pd.read_hdf(chunked, "df_with_missing"), pd.read_hdf(whole, "df_with_missing"))
    assert pd.read_hdf(chunked, "df_with_missing", where="index >= 14").index.tolist() == [14, 16, 18]
    with tables.open_file(str(chunked)) as f:
        group = f.get_node("/df_with_missing")
        assert group._v_attrs.pandas_type == "frame_table" and group._v_attrs.pandas_version == "0.15.2"
        assert group.table.nrows == 10


def test_nwb_written_by_chunks_validates_and_holds_every_frame(tmp_path):
    from pynwb import NWBHDF5IO, validate

    from pipeline.exports import write_nwb

    kp, lk = predictions(11, seed=4)
    kp[9, 1] = np.nan
    path = write_nwb(tmp_path / "s.nwb", card(), kp, lk, rate=30.0, rows=4)
    assert validate(path=str(path)) == []
    with NWBHDF5IO(str(path), "r") as io:
        pose = io.read().processing["behavior"]["PoseEstimation"]
        for k, name in enumerate(PARTS):
            series = pose.pose_estimation_series[name]
            np.testing.assert_array_equal(series.data[:], kp[:, k] - 0.5)
            np.testing.assert_array_equal(series.confidence[:], lk[:, k])
            assert series.data.chunks == (4, 2) and series.rate == 30.0


def test_writing_a_long_videos_outputs_does_not_copy_its_arrays(tmp_path, monkeypatch):
    """Every output of write_outputs (CSV, DeepLabCut HDF5, NWB, SLEAP, COCO, suggestions) from file-backed
    predictions and the ids predict_views gives (a FrameIds): the heap's peak grows by well under the 240 bytes a
    frame's keypoints alone take (float64 [K, 2], 15 keypoints): measured flat within +-1 MB from 20,000 to 50,000
    frames (pynwb's garbage comes and goes); with 5 suggestions and FrameIds, 30 bytes a frame (2026-12-07)."""
    import gc
    import importlib.util
    import tracemalloc

    import jobs.labeling.outputs as outputs
    from jobs.inference import Predictions, spill_array
    from pipeline.converters.coco import card_from_keypoints
    from pipeline.frame_ids import FrameIds

    k = 15
    parts = [f"p{i}" for i in range(k)]
    body = card_from_keypoints("animal", "", parts, [(i, i + 1) for i in range(k - 1)], origin="test")
    monkeypatch.setattr(outputs, "_video_timing", lambda video: (30.0, 10**6))
    monkeypatch.setattr(outputs, "_frame_size", lambda source, is_video: {"width": 640, "height": 480})
    monkeypatch.setattr(outputs, "_thumbnails", lambda ids, size=160: [np.zeros((size, size, 3), np.uint8)] * len(ids))
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "session.mp4", 3)            # opened for its name and size only

    def peak(n: int) -> float:
        ids = FrameIds()
        ids.add_video(str(video), n)
        keypoints, uncertainty = spill_array((n, k, 2), np.float64), spill_array((n, k), np.float32)
        embedding = spill_array((n, 128), np.float16)
        for rows in range(0, n, 4096):
            keypoints[rows:rows + 4096] = rng.uniform(0, 480, (len(keypoints[rows:rows + 4096]), k, 2))
            uncertainty[rows:rows + 4096] = rng.uniform(0, 1, (len(uncertainty[rows:rows + 4096]), k))
        preds = Predictions(ids=ids, keypoints=keypoints, uncertainty=uncertainty, embedding=embedding,
                            ok=np.ones(n, bool))
        out = tmp_path / f"out{n}"
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            written = outputs.write_outputs(body, preds, out, overlay=False, n_suggestions=5)
            grown = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        assert {"dlc_csv:session", "coco_json", "suggestions_csv"} <= set(written)
        if outputs._lab_packages():
            assert {"dlc_h5:session", "nwb:session"} <= set(written)
        if importlib.util.find_spec("sleap_io"):
            assert "slp:session" in written
        return grown

    peak(1_000)                          # the writers' first call imports their libraries (megabytes)
    per_frame = (peak(30_000) - peak(10_000)) / 20_000       # both above CHUNK_ROWS: the same chunks in flight
    assert per_frame < 150, f"{per_frame:.0f} bytes per frame"
    print(f"heap peak while writing: {per_frame:.0f} bytes per frame")


def test_overlay_lookup_finds_each_frames_row_in_any_order():
    from jobs.labeling.outputs import FrameLookup

    keypoints, likelihood = np.arange(4 * 2 * 2.0).reshape(4, 2, 2), np.arange(8.0).reshape(4, 2)
    for numbers in ([0, 3, 6, 9], [9, 0, 6, 3]):
        lookup = FrameLookup(np.array(numbers), keypoints, likelihood)
        for row, number in enumerate(numbers):
            assert number in lookup
            np.testing.assert_array_equal(lookup[number][0], keypoints[row])
            np.testing.assert_array_equal(lookup[number][1], likelihood[row])
        assert 4 not in lookup and 10 not in lookup
        with pytest.raises(KeyError):
            lookup[5]


def test_a_local_ray_started_to_predict_gets_a_store_sized_to_its_model_actors(monkeypatch):
    """`fskp predict`'s local Ray: ``LOCAL_STORE_BYTES_PER_ACTOR`` per model actor this machine gets, not Ray's
    30 % of RAM, whose pages a long video keeps resident one by one."""
    import jobs.inference as inference

    per_actor = inference.LOCAL_STORE_BYTES_PER_ACTOR
    assert per_actor == 2 * inference.STREAM_BYTES_PER_ACTOR
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: set(range(2)))
    assert inference.local_store_bytes(gpu=False) == per_actor                  # 2 cores: one actor
    assert inference.local_store_bytes(gpu=False, actors=3) == 3 * per_actor
    monkeypatch.setattr(inference.os, "sched_getaffinity", lambda pid: set(range(18)))
    assert inference.local_store_bytes(gpu=False) == 4 * per_actor              # 17.5 usable cores / 4 each
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    assert inference.local_store_bytes(gpu=True) == per_actor                   # refused later, once Ray is up
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert inference.local_store_bytes(gpu=True) == 2 * per_actor


def test_predict_asks_for_that_store_when_it_starts_ray(tmp_path, monkeypatch):
    import torch

    import jobs.inference as inference
    import jobs.raystart as raystart

    asked = {}

    def start_ray(**kwargs):
        asked.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(raystart, "start_ray", start_ray)
    monkeypatch.setattr(inference, "local_store_bytes", lambda gpu, actors=None: 1000 * (actors or 1) + gpu)
    torch.save({"config": {"image_size": 64}}, tmp_path / "model.pt")
    with pytest.raises(RuntimeError, match="stop here"):
        inference.predict_views(tmp_path / "model.pt", [tmp_path], None, actors=3, gpu=True)
    assert asked["object_store_memory"] == 3001


def test_the_store_size_is_for_a_local_start_only(monkeypatch):
    ray = pytest.importorskip("ray")
    from jobs.raystart import start_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    start_ray(num_cpus=2, object_store_memory=1 << 29)
    monkeypatch.delenv("RAY_ADDRESS")
    start_ray(num_cpus=2, object_store_memory=1 << 29)
    assert calls[0] == {"address": "10.0.0.1:6379"}                   # a cluster's store is its own
    assert calls[1]["object_store_memory"] == 1 << 29 and calls[1]["num_cpus"] == 2
