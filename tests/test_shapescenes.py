"""Tests for the ShapeScenes procedural dataset: exact geometry, determinism, folder layout, statistics."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from polydistill.data import shapescenes as ss
from polydistill.data.shapescenes.write import RUNNING_MARKER
from polydistill.errors import DataError

FOCAL = 100.0


def axis_camera(height: int, width: int, position=(0.0, 0.0, 0.0)) -> ss.Camera:
    """Camera whose frame equals the world frame: looking along +z, y down, principal point centred."""
    return ss.Camera(np.eye(3), position, FOCAL, FOCAL, width / 2, height / 2)


def level_camera(height: int, width: int, eye_height: float) -> ss.Camera:
    """Camera at (0, 0, eye_height) looking horizontally along +y (the scene convention)."""
    return ss.Camera.looking((0, 0, eye_height), yaw=0, pitch=0, fx=FOCAL, cx=width / 2, cy=height / 2)


# ------------------------------------------------------------------------------------------ geometry


def test_rays_have_unit_forward_component():
    camera = ss.Camera.looking((1, 2, 1.5), yaw=0.4, pitch=0.2, roll=0.05, fx=80, cx=33, cy=20)
    origins, dirs, axis = camera.rays(40, 64)
    assert dirs.shape == origins.shape == (40, 64, 3) and dirs.dtype == np.float32
    np.testing.assert_allclose(dirs @ axis, 1.0, atol=1e-5)
    np.testing.assert_allclose(origins[7, 9], camera.position)
    np.testing.assert_allclose(camera.rotation.T @ camera.rotation, np.eye(3), atol=1e-6)


def test_fronto_parallel_plane_has_constant_z_depth():
    wall = ss.Plane(normal=(0, 0, 1), offset=5.0, class_id=ss.WALL)
    out = ss.render([wall], axis_camera(30, 40), 30, 40)
    np.testing.assert_allclose(out["depth"], 5.0, atol=1e-4)
    assert (out["semseg"] == ss.WALL).all()
    assert out["boxes"].shape == (0, 4) and out["box_classes"].shape == (0,)


def test_tilted_floor_depth_matches_analytic_rows():
    height, width, eye, pitch = 48, 64, 1.6, 0.25
    camera = ss.Camera.looking((0, 0, eye), yaw=0.7, pitch=pitch, fx=FOCAL, cx=width / 2, cy=height / 2)
    floor = ss.Plane(normal=(0, 0, 1), offset=0, class_id=ss.FLOOR)
    out = ss.render([floor], camera, height, width)
    y = (np.arange(height) + 0.5 - height / 2) / FOCAL
    descent = y * math.cos(pitch) + math.sin(pitch)  # downward world component of each row's ray
    seen = descent > 0
    expected = eye / descent[seen]
    np.testing.assert_allclose(out["depth"][seen], np.repeat(expected[:, None], width, 1), rtol=1e-5)
    assert (out["semseg"][~seen] == ss.IGNORE_INDEX).all() and (out["depth"][~seen] == 0).all()


def test_sphere_depth_label_and_silhouette_radius():
    height, width, d, r = 101, 121, 6.0, 1.0  # odd sizes: a pixel centre lies on the optical axis
    ball = ss.Sphere(center=(0, 0, d), radius=r, class_id=ss.BALL)
    out = ss.render([ball], axis_camera(height, width), height, width)
    centre = (height // 2, width // 2)
    assert abs(out["depth"][centre] - (d - r)) < 1e-3
    mask = out["semseg"] == ss.BALL
    assert mask[centre] and (out["semseg"][~mask] == ss.IGNORE_INDEX).all()
    expected_radius = FOCAL * r / math.sqrt(d * d - r * r)
    assert abs(mask[height // 2].sum() / 2 - expected_radius) <= 1.0
    assert abs(mask[:, width // 2].sum() / 2 - expected_radius) <= 1.0
    ((x0, y0, x1, y1),) = out["boxes"]
    assert out["box_classes"].tolist() == [ss.BALL]
    rows, cols = np.nonzero(mask)
    assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


@pytest.mark.parametrize(
    ("prim", "nearest"),
    [
        (ss.Box(center=(0, 5, 0.5), size=(1, 1, 1), yaw=0.0, class_id=ss.CRATE), 4.5),
        (ss.Box(center=(0, 5, 0.5), size=(1, 1, 1), yaw=math.pi / 4, class_id=ss.CRATE), 5 - math.sqrt(0.5)),
        (ss.Cylinder(base=(0, 5, 0), radius=0.4, height=1, class_id=ss.BARREL), 4.6),
        (ss.Cone(base=(0, 5, 0), radius=0.4, height=1, class_id=ss.CONE), 5 - 0.4 * 0.5),
        (ss.Capsule(base=(0, 5, 0), radius=0.3, height=1.8, class_id=ss.PERSON), 4.7),
        (ss.Sphere(center=(0, 5, 0.5), radius=0.5, class_id=ss.BALL), 4.5),
    ],
)
def test_solids_nearest_point_and_unit_normals(prim, nearest):
    """A level camera at mid-height of each solid sees its nearest point on the optical axis."""
    height, width = 41, 41
    camera = level_camera(height, width, eye_height=0.5)
    out = ss.render([prim], camera, height, width)
    assert abs(out["depth"][20, 20] - nearest) < 1e-3
    assert out["semseg"][20, 20] == prim.class_id
    _, dirs, _ = camera.rays(height, width)
    t, normals = prim.intersect(camera.position, dirs)
    hit = np.isfinite(t)
    np.testing.assert_allclose(t[hit], out["depth"][hit], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normals[hit], axis=-1), 1.0, atol=1e-3)
    assert (np.einsum("...i,...i", normals[hit], dirs[hit]) < 1e-4).all()  # normals face the camera


def test_nearer_object_occludes_farther_in_any_order():
    height, width = 61, 81
    near = ss.Sphere(center=(0, 0, 4), radius=0.8, class_id=ss.BALL)
    far = ss.Box(center=(0, 0, 8), size=(6, 3, 1), class_id=ss.CRATE)
    camera = axis_camera(height, width)
    first = ss.render([near, far], camera, height, width)
    second = ss.render([far, near], camera, height, width)
    for key in ("depth", "semseg", "image"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first["semseg"][30, 40] == ss.BALL and abs(first["depth"][30, 40] - 3.2) < 1e-3
    assert first["semseg"][30, 8] == ss.CRATE and abs(first["depth"][30, 8] - 7.5) < 1e-4
    assert sorted(first["box_classes"].tolist()) == [ss.CRATE, ss.BALL]


def test_object_behind_camera_is_invisible():
    ball = ss.Sphere(center=(0, 0, -4), radius=1, class_id=ss.BALL)
    out = ss.render([ball], axis_camera(20, 20), 20, 20)
    assert (out["semseg"] == ss.IGNORE_INDEX).all() and len(out["boxes"]) == 0


# ------------------------------------------------------------------------------------- determinism


def test_render_scene_is_deterministic_and_varies_with_index():
    a, b = ss.render_scene(7, 3, 48, 64), ss.render_scene(7, 3, 48, 64)
    for key in ("image", "depth", "semseg", "boxes", "box_classes", "intrinsics"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["domain"] == b["domain"] in ss.DOMAINS
    c = ss.render_scene(7, 4, 48, 64)
    assert not np.array_equal(a["depth"], c["depth"])
    assert a["image"].dtype == np.uint8 and a["image"].shape == (48, 64, 3)
    assert a["depth"].dtype == np.float32 and a["semseg"].dtype == np.uint8
    assert a["boxes"].dtype == np.float32 and a["box_classes"].dtype == np.int64
    assert a["intrinsics"].shape == (3, 3) and a["intrinsics"].dtype == np.float32


def test_domains_restyle_the_same_layout():
    looks = {domain: ss.render_scene(11, 0, 48, 64, domain) for domain in ss.DOMAINS}
    reference = looks["warehouse"]
    for sample in looks.values():
        np.testing.assert_array_equal(sample["semseg"], reference["semseg"])
        np.testing.assert_array_equal(sample["depth"], reference["depth"])
    assert not np.array_equal(looks["studio"]["image"], reference["image"])


def read_tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_split_is_byte_identical_across_worker_counts(tmp_path):
    kwargs = {"seed": 3, "height": 32, "width": 40, "id_prefix": "s"}
    one = ss.generate_split(tmp_path / "one", 10, workers=1, **kwargs)
    two = ss.generate_split(tmp_path / "two", 10, workers=2, **kwargs)
    assert read_tree(one) == read_tree(two)


# ------------------------------------------------------------------------------------------- layout

LABELS = [("depth", "semseg", "boxes"), ("semseg",), ("depth",), (), ("boxes",), ("depth", "semseg")]


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    out = tmp_path_factory.mktemp("split") / "train"
    return ss.generate_split(out, len(LABELS), seed=5, height=48, width=64, labels=LABELS, workers=2)


def test_layout_has_exactly_the_expected_files(split):
    expected = {"classes.yaml", ss.COMPLETE_MARKER}
    for index, labels in enumerate(LABELS):
        name = f"{index:06d}"
        expected |= {f"images/{name}.png", f"meta/{name}.json"}
        expected |= {f"{kind}/{name}.{'json' if kind == 'boxes' else 'png'}" for kind in labels}
    assert set(read_tree(split)) == expected
    assert yaml.safe_load((split / "classes.yaml").read_text()) == {
        "names": list(ss.CLASS_NAMES),
        "ignore_index": 255,
    }


def test_written_labels_match_the_renderer(split):
    for index, labels in enumerate(LABELS):
        name = f"{index:06d}"
        meta = json.loads((split / "meta" / f"{name}.json").read_text())
        assert meta["seed"] == 5 and meta["index"] == index and meta["domain"] in ss.DOMAINS
        sample = ss.render_scene(5, index, 48, 64, meta["domain"])
        np.testing.assert_allclose(meta["intrinsics"], sample["intrinsics"], rtol=1e-6)
        image = Image.open(split / "images" / f"{name}.png")
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), sample["image"])
        if "depth" in labels:
            mm = np.asarray(Image.open(split / "depth" / f"{name}.png"))
            assert mm.dtype == np.uint16
            hit = sample["depth"] > 0
            assert (mm[~hit] == 0).all()
            assert np.abs(mm[hit] / 1000.0 - sample["depth"][hit]).max() <= 1e-3
        if "semseg" in labels:
            seg = Image.open(split / "semseg" / f"{name}.png")
            assert seg.mode == "L"
            seg = np.asarray(seg)
            assert ((seg < len(ss.CLASS_NAMES)) | (seg == ss.IGNORE_INDEX)).all()
            np.testing.assert_array_equal(seg, sample["semseg"])
        if "boxes" in labels:
            boxes = json.loads((split / "boxes" / f"{name}.json").read_text())
            assert boxes["boxes"] == sample["boxes"].astype(int).tolist()
            assert boxes["labels"] == sample["box_classes"].tolist()


def test_boxes_are_tight_around_visible_pixels_of_their_class():
    for index in range(8):
        sample = ss.render_scene(2, index, 48, 64)
        boxes, classes, seg = sample["boxes"].astype(int), sample["box_classes"], sample["semseg"]
        assert len(boxes) > 0
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= 64).all() and (boxes[:, 3] <= 48).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        for class_id in ss.OBJECT_CLASSES:
            rows, cols = np.nonzero(seg == class_id)
            own = boxes[classes == class_id]
            if rows.size == 0:
                assert len(own) == 0
                continue
            union = (own[:, 0].min(), own[:, 1].min(), own[:, 2].max(), own[:, 3].max())
            assert union == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            for x0, y0, x1, y1 in own:  # every edge of a box touches a pixel of its class
                inside = seg[y0:y1, x0:x1] == class_id
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_finished_split_is_not_regenerated(split):
    marker = split / ss.COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    start = time.perf_counter()
    ss.generate_split(split, len(LABELS), seed=5, height=48, width=64, labels=LABELS, workers=2)
    assert time.perf_counter() - start < 0.5
    assert marker.stat().st_mtime_ns == stamp
    assert json.loads(marker.read_text())["num_images"] == len(LABELS)


def test_interrupted_or_changed_split_is_regenerated(tmp_path):
    out = tmp_path / "val"
    (out / "images").mkdir(parents=True)
    (out / "images" / "000099.png").write_bytes(b"partial")  # an interrupted run of 100 images left its marker
    interrupted = {"num_images": 100, "labels": [["semseg"]], "id_prefix": ""}
    (out / RUNNING_MARKER).write_text(json.dumps(interrupted))
    (out / "notes.txt").write_text("user file")
    ss.generate_split(out, 3, seed=1, height=24, width=32, labels=["semseg"], workers=1)
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert not (out / "depth").exists() and (out / "notes.txt").exists()
    ss.generate_split(out, 2, seed=1, height=24, width=32, labels=["depth"], workers=1, id_prefix="v")
    assert sorted(p.name for p in (out / "images").iterdir()) == ["v000000.png", "v000001.png"]
    assert not (out / "semseg").exists() and (out / "depth" / "v000001.png").exists()


def test_bad_arguments_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match="did you mean 'studio'"):
        ss.render_scene(0, 0, 16, 16, "studi")
    with pytest.raises(DataError, match="per-image"):
        ss.generate_split(tmp_path / "a", 3, seed=0, height=8, width=8, labels=[("depth",), ("semseg",)])
    with pytest.raises(DataError, match="label kind"):
        ss.generate_split(tmp_path / "b", 1, seed=0, height=8, width=8, labels=("depht",))
    with pytest.raises(DataError, match="domain"):
        ss.generate_split(tmp_path / "c", 1, seed=0, height=8, width=8, domains=["moon"])


def test_domains_argument_restricts_the_draw(tmp_path):
    out = ss.generate_split(tmp_path / "d", 6, seed=0, height=16, width=20, domains=["dusk"], workers=1)
    domains = {json.loads(p.read_text())["domain"] for p in (out / "meta").iterdir()}
    assert domains == {"dusk"}


# --------------------------------------------------------------------------------------- statistics


def test_scene_statistics_are_sane():
    samples = [ss.render_scene(0, index, 64, 80) for index in range(40)]
    present = np.array([[(s["semseg"] == c).any() for c in range(len(ss.CLASS_NAMES))] for s in samples])
    assert present[:, ss.FLOOR].mean() > 0.9 and present[:, ss.WALL].mean() > 0.9
    for class_id in ss.OBJECT_CLASSES:
        assert present[:, class_id].mean() >= 0.2, ss.CLASS_NAMES[class_id]
    pixels = np.bincount(np.concatenate([s["semseg"].ravel() for s in samples]), minlength=256)
    for class_id in ss.OBJECT_CLASSES:  # not tiny: on average at least ~0.5 % of all pixels
        assert pixels[class_id] / pixels.sum() > 0.005, ss.CLASS_NAMES[class_id]
    assert pixels[ss.IGNORE_INDEX] / pixels.sum() < 0.05
    depths = np.concatenate([s["depth"][s["depth"] > 0] for s in samples])
    assert depths.min() > 0.1 and depths.max() < 30
    means = {}
    for s in samples:
        means.setdefault(s["domain"], []).append(s["image"].reshape(-1, 3).mean(axis=0))
    assert len(means) >= 2
    centres = [np.mean(v, axis=0) for v in means.values()]
    assert max(np.abs(a - b).max() for a in centres for b in centres) > 20


# ------------------------------------------------------------------------------------------ normals


def test_wall_facing_the_camera_has_normal_minus_z():
    out = ss.render([ss.Plane(normal=(0, 0, 1), offset=5.0, class_id=ss.WALL)], axis_camera(30, 40), 30, 40)
    assert out["normals"].shape == (30, 40, 3) and out["normals"].dtype == np.float32
    np.testing.assert_allclose(out["normals"], np.broadcast_to([0, 0, -1], (30, 40, 3)), atol=1e-6)


def test_floor_normal_points_up_which_is_minus_y_in_the_camera_frame():
    height, width = 40, 48
    floor = ss.Plane(normal=(0, 0, 1), offset=0, class_id=ss.FLOOR)
    out = ss.render([floor], level_camera(height, width, eye_height=1.5), height, width)
    seen = out["semseg"] == ss.FLOOR
    assert seen[-1].all() and not seen[0].any()  # a level camera sees the floor below the horizon only
    np.testing.assert_allclose(out["normals"][seen], np.broadcast_to([0, -1, 0], (seen.sum(), 3)), atol=1e-6)
    assert (out["normals"][~seen] == 0).all()  # no surface: (0, 0, 0)


def test_normals_rotate_with_the_camera():
    """A tilted, rolled camera sees the floor's up vector as R^T (0, 0, 1), the same at every floor pixel."""
    camera = ss.Camera.looking((0, 0, 1.5), yaw=0.6, pitch=0.3, roll=0.1, fx=FOCAL, cx=24, cy=20)
    out = ss.render([ss.Plane(normal=(0, 0, 1), offset=0, class_id=ss.FLOOR)], camera, 40, 48)
    seen = out["semseg"] == ss.FLOOR
    expected = camera.rotation.T @ np.array([0, 0, 1], np.float32)
    np.testing.assert_allclose(out["normals"][seen], np.broadcast_to(expected, (seen.sum(), 3)), atol=1e-6)


def test_scene_normals_are_unit_and_face_the_camera():
    for index in range(4):
        sample = ss.render_scene(9, index, 48, 64)
        normals = sample["normals"]
        hit = sample["depth"] > 0
        np.testing.assert_allclose(np.linalg.norm(normals[hit], axis=-1), 1.0, atol=1e-5)
        assert (normals[~hit] == 0).all()
        # Viewing ray through each pixel in the camera frame: ((u - cx) / fx, (v - cy) / fy, 1).
        k = sample["intrinsics"]
        u = (np.arange(64) + 0.5 - k[0, 2]) / k[0, 0]
        v = (np.arange(48) + 0.5 - k[1, 2]) / k[1, 1]
        rays = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((48, 64))), axis=-1)
        assert (np.einsum("...i,...i", normals, rays)[hit] < 1e-4).all()


def test_sphere_normals_are_exact():
    height, width, d, r = 61, 61, 6.0, 1.0
    out = ss.render([ss.Sphere(center=(0, 0, d), radius=r, class_id=ss.BALL)], axis_camera(height, width), height,
                    width)
    hit = out["semseg"] == ss.BALL
    rows, cols = np.nonzero(hit)
    z = out["depth"][hit]
    points = np.stack([(cols + 0.5 - width / 2) / FOCAL * z, (rows + 0.5 - height / 2) / FOCAL * z, z], axis=1)
    expected = (points - [0, 0, d]) / r
    np.testing.assert_allclose(out["normals"][hit], expected, atol=2e-3)
    np.testing.assert_allclose(out["normals"][height // 2, width // 2], [0, 0, -1], atol=1e-3)


def test_normals_png_round_trips_within_one_step(tmp_path):
    sample = ss.render_scene(4, 2, 40, 56)
    normals = sample["normals"]
    path = tmp_path / "n.png"
    Image.fromarray(ss.encode_normals(normals)).save(path)
    stored = Image.open(path)
    assert stored.mode == "RGB"
    decoded, valid = ss.decode_normals(np.asarray(stored))
    np.testing.assert_array_equal(valid, sample["depth"] > 0)
    assert np.abs(decoded - normals).max() <= 1 / 127
    encoded = ss.encode_normals(np.array([[[0, 0, -1], [0, -1, 0], [0, 0, 0]]], np.float32))
    assert encoded.tolist() == [[[128, 128, 0], [128, 0, 128], [0, 0, 0]]]  # round((n + 1) / 2 * 255)


def test_split_with_normals_keeps_other_outputs_byte_identical(tmp_path):
    kwargs = {"seed": 6, "height": 32, "width": 40, "workers": 1}
    plain = read_tree(ss.generate_split(tmp_path / "plain", 4, labels=ss.DEFAULT_LABELS, **kwargs))
    more = ss.generate_split(tmp_path / "more", 4, labels=(*ss.DEFAULT_LABELS, "normals"), **kwargs)
    with_normals = read_tree(more)
    assert sorted(k for k in with_normals if k.startswith("normals/")) == [f"normals/{i:06d}.png" for i in range(4)]
    for name, data in plain.items():
        if name != ss.COMPLETE_MARKER:
            assert with_normals[name] == data, name
    for index in range(4):
        stored = np.asarray(Image.open(more / "normals" / f"{index:06d}.png"))
        domain = json.loads((more / "meta" / f"{index:06d}.json").read_text())["domain"]
        sample = ss.render_scene(6, index, 32, 40, domain)
        np.testing.assert_array_equal(stored, ss.encode_normals(sample["normals"]))


def test_default_labels_do_not_include_normals(tmp_path):
    out = ss.generate_split(tmp_path / "d", 1, seed=0, height=8, width=8, workers=1)
    assert not (out / "normals").exists() and "normals" in ss.LABEL_KINDS
