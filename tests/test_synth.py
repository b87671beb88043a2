"""The embedded synthetic benchmark: geometry of keypoints and visibility, determinism, the command."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.synth import CATEGORIES, load_category

SIZE = 64


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Direct SDF evaluations here run many small operations, which multiple threads only slow down."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=CATEGORIES)
def rendered(request):
    """A handful of instances of each category, rendered small, with their scenes."""
    from pipeline.synth.render import render
    from pipeline.synth.scene import Camera, sample_scene

    category, camera = load_category(request.param), Camera(SIZE)
    scenes = [sample_scene(category, 3, i, camera) for i in range(12)]
    return category, camera, scenes, render(category, scenes, camera)


def _pixel_depth(depth: np.ndarray, xy: np.ndarray) -> tuple[float, float]:
    """The rendered depth at the pixel holding point xy, and how much the depth at xy itself may differ
    from it to first order (the depth's change to the neighbouring pixels times the offset from the centre)."""
    h, w = depth.shape
    x, y = min(int(xy[0]), w - 1), min(int(xy[1]), h - 1)
    d, slack = depth[y, x], 0.0
    for (dx, dy), offset in (((1, 0), xy[0] - x - 0.5), ((0, 1), xy[1] - y - 0.5)):
        diffs = [abs(depth[y + s * dy, x + s * dx] - d) for s in (-1, 1)
                 if 0 <= x + s * dx < w and 0 <= y + s * dy < h and np.isfinite(depth[y + s * dy, x + s * dx])]
        slack += abs(offset) * max(diffs, default=0.0)
    return d, slack


def test_keypoints_are_the_projections_of_the_3d_keypoints(rendered):
    _, camera, _, r = rendered
    k3 = r.keypoints_3d
    assert (k3[..., 2] > 0).all()
    projected = k3[..., :2] / k3[..., 2:] * camera.focal + camera.centre
    np.testing.assert_allclose(r.keypoints, projected, atol=1e-3)


def test_visibility_agrees_with_the_first_surface_through_each_keypoint(rendered):
    """Trace a fresh ray through each keypoint's exact image position to the first surface: a visible
    keypoint is that surface (to within the visibility tolerance), a hidden one lies behind it."""
    from pipeline.synth.render import VISIBILITY_TOL, first_surface_depth

    category, camera, scenes, r = rendered
    depth = first_surface_depth(category, scenes, camera, r.keypoints)
    z = r.keypoints_3d[..., 2]
    dist = np.linalg.norm(r.keypoints_3d, axis=-1)
    first = depth * dist / z                                   # distance along the ray to the first surface
    tol = VISIBILITY_TOL * np.array([s.scale for s in scenes])[:, None] + np.zeros_like(dist)
    slack = 1e-3
    self_hidden, occluded = r.self_occluded & ~r.occluded, r.occluded & r.in_image
    assert r.visible.sum() > 40 and self_hidden.sum() > 10
    assert (first[r.visible] >= dist[r.visible] - tol[r.visible] - slack).all()
    assert (first[self_hidden] < dist[self_hidden] - tol[self_hidden] + slack).all()
    assert (first[occluded] < dist[occluded]).all()
    assert (r.visible == (r.in_image & ~r.self_occluded & ~r.occluded)).all()


def test_rendered_depth_agrees_with_the_keypoints(rendered):
    """In the rendered depth map, visible keypoints sit on the surface and hidden ones behind it (pixels
    are coarse near silhouettes, hence 'the large majority')."""
    _, _, _, r = rendered
    on_surface, behind = [], []
    for b, k in zip(*np.nonzero(r.visible)):
        d, slack = _pixel_depth(r.depth[b], r.keypoints[b, k])
        z = r.keypoints_3d[b, k, 2]
        on_surface.append(abs(d - z) <= 0.01 * z + 1.5 * slack)
    for b, k in zip(*np.nonzero(r.in_image & ~r.visible)):
        d, _ = _pixel_depth(np.minimum(r.depth[b], r.occluder_depth[b]), r.keypoints[b, k])
        behind.append(d < r.keypoints_3d[b, k, 2])
    assert np.mean(on_surface) >= 0.9, f"only {np.mean(on_surface):.0%} of visible keypoints on the rendered surface"
    assert np.mean(behind) >= 0.9, f"only {np.mean(behind):.0%} of hidden keypoints behind a rendered surface"


def test_keypoints_stay_inside_the_image_in_most_instances(rendered):
    _, _, _, r = rendered
    assert r.in_image.all(axis=1).mean() >= 0.75
    assert r.in_image.mean() >= 0.95
    assert (r.visible.sum(1) >= 2).all()          # every instance shows some of its keypoints


def test_images_show_the_object_over_a_background(rendered):
    _, _, _, r = rendered
    covered = np.isfinite(r.depth).mean(axis=(1, 2))
    assert (covered > 0.03).all() and (covered < 0.9).all()
    assert (r.images.reshape(len(r.images), -1, 3).std(axis=1).mean(axis=1) > 5).all()


def test_search_for_keypoints_starts_outside_and_bounds_hold_the_object():
    """Keypoint guesses and bounding boxes are valid over many random shapes (no rendering needed)."""
    import torch

    from pipeline.synth.category import BatchParams
    from pipeline.synth.scene import instance_rng
    from pipeline.synth.sdf import Vec3
    from pipeline.synth.trace import SNAP_REACH

    def as_vec(a: np.ndarray) -> Vec3:
        return Vec3(*(torch.as_tensor(np.ascontiguousarray(a[..., j], np.float32)) for j in range(3)))

    rng = np.random.default_rng(0)
    for name in CATEGORIES:
        category = load_category(name)
        params = [category.sample(instance_rng(11, category.name, i)) for i in range(400)]
        s = BatchParams.stack(params)
        guesses = np.stack([category.keypoint_guesses(p) for p in params])
        direction = guesses[:, :, 1] / np.linalg.norm(guesses[:, :, 1], axis=-1, keepdims=True)
        start = category.sdf(as_vec(guesses[:, :, 0] + SNAP_REACH * direction), s).numpy()
        assert (start > 0).all(), f"{name}: a keypoint search starts inside the object"
        lo, hi = (np.stack(b) for b in zip(*(category.bound(p) for p in params)))
        for axis in range(3):
            for corner in (lo, hi):
                pts = lo[:, None] + rng.random((len(params), 200, 3)) * (hi - lo)[:, None]
                pts[:, :, axis] = corner[:, None, axis]
                assert (category.sdf(as_vec(pts), s).numpy() > 0).all(), f"{name}: object crosses its bound"


@pytest.mark.parametrize("name", CATEGORIES)
def test_an_instance_does_not_depend_on_its_batch(name):
    """So a larger pool from one seed contains a smaller one, whatever the batching or worker count."""
    from pipeline.synth.dataset import render_batch

    together = render_batch(name, 5, list(range(8)), SIZE)
    alone = render_batch(name, 5, [6], SIZE)
    for field in ("images", "keypoints", "keypoints_3d", "visible", "boxes"):
        np.testing.assert_array_equal(together[field][6], alone[field][0])


def test_same_seed_gives_byte_identical_datasets(tmp_path):
    from pipeline.prepared import PreparedDataset
    from pipeline.synth.dataset import generate

    a = PreparedDataset(generate("face", tmp_path / "a", 6, seed=4, size=SIZE, workers=1, device="cpu", progress=False))
    b = PreparedDataset(generate("face", tmp_path / "b", 6, seed=4, size=SIZE, workers=1, device="cpu", progress=False))
    c = PreparedDataset(generate("face", tmp_path / "c", 6, seed=5, size=SIZE, workers=1, device="cpu", progress=False))
    assert a.fingerprint == b.fingerprint != c.fingerprint
    for split in ("train", "test"):
        for fa, fb in zip(a.files(split), b.files(split), strict=True):
            assert open(fa, "rb").read() == open(fb, "rb").read()
    assert (tmp_path / "a" / "meta.json").read_text() == (tmp_path / "b" / "meta.json").read_text()


def test_fskp_synth_writes_a_prepared_dataset_and_a_preview(tmp_path, capsys):
    from PIL import Image

    from jobs.cli import main
    from pipeline.prepared import PreparedDataset

    out, preview = tmp_path / "cars", tmp_path / "cars.png"
    assert main(["synth", "car", "--n", "5", "--out", str(out), "--size", str(SIZE), "--workers", "1",
                 "--device", "cpu", "--preview", str(preview)]) == 0
    assert "wrote" in capsys.readouterr().out
    ds = PreparedDataset(out)
    assert ds.card.name == "synth_car" and ds.meta["counts"] == {"train": 4, "test": 1}
    test = ds.arrays("test")
    assert list(test["id"]) == ["0000004"]
    assert test["images"].shape == (1, SIZE, SIZE, 3)
    assert np.isfinite(test["keypoints_3d"]).all()
    np.testing.assert_array_equal(test["crop_box"][0], [0, 0, SIZE, SIZE])
    cam = ds.meta["camera"]
    k3 = test["keypoints_3d"][0]
    np.testing.assert_allclose(test["keypoints"][0], k3[:, :2] / k3[:, 2:] * cam["fx"] + cam["cx"], atol=1e-3)
    with Image.open(preview) as im:
        assert im.size == (4 * SIZE + 3 * 2, 2 * SIZE + 2)       # 5 instances, 4 per row


def test_fskp_synth_rejects_bad_arguments(tmp_path, capsys):
    from jobs.cli import main

    assert main(["synth", "face", "--n", "3", "--out", str(tmp_path / "x")]) == 2
    assert "at least 5" in capsys.readouterr().err
    assert main(["synth", "face"]) == 2
    assert "--out" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_draw_keypoints_fills_visible_and_rings_hidden():
    from pipeline.draw import draw_keypoints, keypoint_colours

    image = np.zeros((40, 40, 3), np.uint8)
    out = draw_keypoints(image, np.array([[10.5, 10.5], [30.5, 30.5]]), np.array([True, False]), [(0, 1)],
                         radius=3)
    colours = keypoint_colours(2)
    assert tuple(out[10, 10]) == colours[0]                       # filled disc
    assert tuple(out[30, 30]) != colours[1]                       # hollow ring: centre not painted
    assert (out[27:34, 27:34] == colours[1]).all(axis=-1).any()  # ... but the ring is
    assert (image == 0).all()                                     # the input is left alone


@pytest.mark.parametrize("category", ["face", "car", "animal"])
def test_renderer_keypoint_order_matches_its_card(category):
    """The renderer places keypoints by position; its names must be the card's, in the card's order."""
    from pipeline.card import load_card
    from pipeline.synth import load_category

    cat = load_category(category)
    assert tuple(cat.keypoints) == load_card(f"synth_{category}").keypoints
