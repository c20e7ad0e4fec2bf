"""Folder dataset, paired augmentation and collation on tiny fixture folders built in tmp_path."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from polydistill.data.collate import collate, move_batch
from polydistill.data.dataset import FolderDataset
from polydistill.data.transforms import Compose, RandomHorizontalFlip, RandomScaleCrop, Resize
from polydistill.errors import DataError

H, W = 24, 32
NAMES = ["floor", "wall", "chair"]
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)


def write_classes(root, names=NAMES, **extra):
    root.joinpath("classes.yaml").write_text(json.dumps({"names": names, **extra}))  # JSON is valid YAML


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def block_labels(seed=0):
    """Random 4x4 blocks of class ids, with one ignore block, so crops cross many class edges."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 3, (H // 4, W // 4)), np.ones((4, 4), dtype=np.int64)).astype(np.uint8)
    labels[:4, :4] = 255
    return labels


@pytest.fixture
def folder(tmp_path):
    """a: depth PNG, semseg, boxes, meta; b: depth .npy; c: semseg only (greyscale); d: none (RGBA)."""
    root = tmp_path / "ds"
    root.mkdir()
    write_classes(root)
    labels = block_labels()
    write_png(root / "images/a.png", PALETTE[np.where(labels == 255, 0, labels)])
    write_png(root / "images/b.jpg", np.full((H, W, 3), 128, np.uint8))
    write_png(root / "images/c.png", np.full((H, W), 200, np.uint8))
    write_png(root / "images/d.png", np.full((H, W, 4), 90, np.uint8))
    depth_mm = np.tile(np.arange(W, dtype=np.uint16) * 100 + 500, (H, 1))
    depth_mm[0, 0] = 0
    write_png(root / "depth/a.png", depth_mm)
    depth_m = np.full((H, W), 2.5, np.float32)
    depth_m[0, :4] = [np.nan, np.inf, -1.0, 0.0]
    np.save(root / "depth/b.npy", depth_m)
    write_png(root / "semseg/a.png", labels)
    write_png(root / "semseg/c.png", np.ones((H, W), np.uint8))
    (root / "boxes").mkdir()
    (root / "boxes/a.json").write_text(
        json.dumps({"boxes": [[0, 0, 8, 10], [20, 4, 32, 24]], "labels": [1, 2]})
    )
    (root / "meta").mkdir()
    intrinsics = [[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]]
    (root / "meta/a.json").write_text(json.dumps({"intrinsics": intrinsics, "domain": "indoor", "extra": 1}))
    return root


# --------------------------------------------------------------------------- loading


def test_valid_flags_placeholders_and_counts(folder):
    ds = FolderDataset(folder)
    assert ds.ids == ("a", "b", "c", "d")
    assert ds.class_names == tuple(NAMES) and ds.num_classes == 3 and ds.ignore_index == 255
    assert ds.label_counts() == {"depth": 2, "semseg": 2}
    expected = {"a": (True, True), "b": (True, False), "c": (False, True), "d": (False, False)}
    for index, sample_id in enumerate(ds.ids):
        sample = ds[index]
        assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32
        assert 0.0 <= sample["image"].min() and sample["image"].max() <= 1.0
        assert sample["targets"]["depth"].shape == (1, H, W)
        assert (
            sample["targets"]["semseg"].shape == (H, W) and sample["targets"]["semseg"].dtype == torch.int64
        )
        assert (sample["valid"]["depth"], sample["valid"]["semseg"]) == expected[sample_id]
        assert sample["meta"]["id"] == sample_id and sample["meta"]["index"] == index
        assert "teacher" not in sample
        if not sample["valid"]["depth"]:
            assert torch.equal(sample["targets"]["depth"], torch.zeros(1, H, W))
        if not sample["valid"]["semseg"]:
            assert (sample["targets"]["semseg"] == 255).all()


def test_tasks_subset_and_meta(folder):
    ds = FolderDataset(folder, tasks=("depth",))
    sample = ds[0]
    assert set(sample["targets"]) == set(sample["valid"]) == {"depth"}
    assert ds.label_counts() == {"depth": 2}
    assert sample["meta"]["domain"] == "indoor"
    assert sample["meta"]["intrinsics"].shape == (3, 3)
    assert torch.equal(sample["meta"]["box_labels"], torch.tensor([1, 2]))
    empty = ds[3]["meta"]
    assert empty["domain"] is None and empty["intrinsics"] is None
    assert empty["boxes"].shape == (0, 4) and empty["box_labels"].shape == (0,)


def test_depth_units_and_invalid_values(folder):
    ds = FolderDataset(folder, tasks=("depth",))
    depth_png = ds[0]["targets"]["depth"][0]
    assert depth_png[0, 0] == 0.0
    assert torch.allclose(depth_png[1], torch.arange(W) * 0.1 + 0.5)
    depth_npy = ds[1]["targets"]["depth"][0]
    assert torch.equal(depth_npy[0, :4], torch.zeros(4))
    assert (depth_npy[1:] == 2.5).all() and torch.isfinite(depth_npy).all()


def test_semseg_values_and_colour_conversion(folder):
    ds = FolderDataset(folder)
    assert torch.equal(ds[0]["targets"]["semseg"], torch.from_numpy(block_labels().astype(np.int64)))
    assert torch.allclose(ds[2]["image"], torch.full((3, H, W), 200 / 255))  # greyscale -> RGB
    assert torch.allclose(ds[3]["image"], torch.full((3, H, W), 90 / 255))  # RGBA -> RGB


def test_subset_keeps_dataset_index(folder):
    subset = torch.utils.data.Subset(FolderDataset(folder), [2, 3])
    assert subset[0]["meta"]["index"] == 2 and subset[1]["meta"]["id"] == "d"


def test_orphan_label_files_warn(folder):
    write_png(folder / "semseg/zzz.png", np.zeros((H, W), np.uint8))
    (folder / "depth/a.tiff").write_bytes(b"x")
    with pytest.warns(UserWarning, match=r"ignoring 2 file"):
        ds = FolderDataset(folder)
    assert ds.label_counts() == {"depth": 2, "semseg": 2}


# --------------------------------------------------------------------------- errors


def test_out_of_range_class_names_file_and_value(folder):
    labels = np.zeros((H, W), np.uint8)
    labels[0, 0] = 7
    write_png(folder / "semseg/a.png", labels)
    with pytest.raises(DataError, match=r"semseg/a\.png.*class ids 7 outside 0\.\.2"):
        FolderDataset(folder)[0]


def test_corrupt_image_names_file(folder):
    (folder / "images/b.jpg").write_bytes(b"this is not a jpeg at all")
    ds = FolderDataset(folder)
    with pytest.raises(DataError, match=r"cannot read .*images/b\.jpg"):
        ds[1]


def test_size_mismatch(folder):
    write_png(folder / "depth/a.png", np.ones((H, W - 2), np.uint16))
    with pytest.raises(DataError, match=r"depth/a\.png is 24x30 but .*images/a\.png is 24x32"):
        FolderDataset(folder)[0]


def test_colour_semseg_and_8bit_depth_rejected(folder):
    write_png(folder / "semseg/c.png", np.zeros((H, W, 3), np.uint8))
    write_png(folder / "depth/a.png", np.zeros((H, W), np.uint8))
    ds = FolderDataset(folder)
    with pytest.raises(DataError, match=r"depth/a\.png is a mode-L PNG; depth PNGs must be 16-bit"):
        ds[0]
    with pytest.raises(DataError, match=r"semseg/c\.png is a mode-RGB PNG"):
        ds[2]


def test_folder_level_errors(folder, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FolderDataset(tmp_path / "nowhere")
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="has no images/ folder"):
        FolderDataset(tmp_path / "bare")
    (tmp_path / "bare/images").mkdir()
    with pytest.raises(DataError, match="holds no .png/.jpg/.jpeg images"):
        FolderDataset(tmp_path / "bare")
    (folder / "classes.yaml").unlink()
    with pytest.raises(DataError, match=r"classes\.yaml is missing"):
        FolderDataset(folder)
    assert FolderDataset(folder, tasks=("depth",)).num_classes is None  # not needed without semseg
    (folder / "classes.yaml").write_text("names: [floor, wall\n")
    with pytest.raises(DataError, match=r"cannot parse .*classes\.yaml"):
        FolderDataset(folder)
    (folder / "classes.yaml").write_text("classes: [floor]\n")
    with pytest.raises(DataError, match="no valid 'names' list"):
        FolderDataset(folder)
    write_classes(folder, ignore_index=1)
    with pytest.raises(DataError, match="ignore_index 1 is a class id"):
        FolderDataset(folder)
    write_classes(folder)
    with pytest.raises(DataError, match="lists 3 classes but num_classes=4"):
        FolderDataset(folder, num_classes=4)
    with pytest.raises(DataError, match="cannot read task"):
        FolderDataset(folder, tasks=("edges",))


# --------------------------------------------------------------------------- augmentation


def make_sample(labels=None):
    """A sample whose image colour, depth, teacher map and boxes all encode position/class."""
    labels = block_labels() if labels is None else labels
    classes = np.where(labels == 255, 0, labels)
    image = torch.from_numpy(PALETTE[classes]).permute(2, 0, 1).float() / 255
    depth = torch.arange(W, dtype=torch.float32).add(1).expand(1, H, W).clone()
    teacher = torch.stack([depth[0], -depth[0]])
    return {
        "image": image,
        "targets": {"depth": depth, "semseg": torch.from_numpy(labels.astype(np.int64))},
        "valid": {"depth": True, "semseg": True},
        "teacher": {"big": {"depth": teacher}},
        "meta": {
            "id": "x",
            "index": 0,
            "domain": None,
            "intrinsics": torch.tensor([[30.0, 0.0, 15.5], [0.0, 30.0, 11.5], [0.0, 0.0, 1.0]]),
            "boxes": torch.tensor([[0.0, 0.0, 8.0, 10.0], [20.0, 4.0, 32.0, 24.0]]),
            "box_labels": torch.tensor([1, 2]),
        },
    }


def test_flip_moves_everything_together():
    labels = np.ones((H, W), np.uint8)
    labels[:, W // 2 :] = 2
    out = RandomHorizontalFlip(p=1.0)(make_sample(labels), np.random.default_rng(0))
    semseg, image = out["targets"]["semseg"], out["image"]
    assert (semseg[:, : W // 2] == 2).all() and (semseg[:, W // 2 :] == 1).all()
    assert torch.equal(image[:, :, 0], torch.tensor([0.0, 0.0, 1.0])[:, None].expand(3, H))  # class 2 = blue
    assert torch.equal(out["targets"]["depth"][0, 0], torch.arange(W, 0, -1, dtype=torch.float32))
    assert torch.equal(out["teacher"]["big"]["depth"][0], out["targets"]["depth"][0])
    assert torch.equal(out["meta"]["boxes"], torch.tensor([[24.0, 0.0, 32.0, 10.0], [0.0, 4.0, 12.0, 24.0]]))
    assert out["meta"]["intrinsics"][0, 2] == W - 1 - 15.5
    unflipped = RandomHorizontalFlip(p=0.0)(make_sample(labels), np.random.default_rng(0))
    assert torch.equal(unflipped["targets"]["semseg"], torch.from_numpy(labels.astype(np.int64)))


def test_flip_through_dataset_with_teacher(folder):
    ds = FolderDataset(folder, transform=RandomHorizontalFlip(p=1.0))
    ds.attach_teacher_outputs({"t": {"depth": torch.arange(4 * W, dtype=torch.float32).reshape(4, 1, 1, W)}})
    sample = ds[0]
    assert torch.allclose(sample["targets"]["depth"][0, 1], torch.arange(W - 1, -1, -1) * 0.1 + 0.5)
    assert torch.equal(
        sample["targets"]["semseg"], torch.from_numpy(block_labels()[:, ::-1].astype(np.int64))
    )
    teacher = sample["teacher"]["t"]["depth"]
    assert teacher.shape == (1, H, W)  # resized from (1, 1, W) to the image grid before the flip
    assert torch.allclose(teacher[0, 5], torch.arange(W - 1, -1, -1, dtype=torch.float32))


def test_scale_crop_keeps_alignment_and_values():
    crop = RandomScaleCrop(scale=(1.0, 2.0))
    source = make_sample()
    for seed in range(20):
        out = crop(make_sample(), np.random.default_rng(seed))
        semseg, image = out["targets"]["semseg"], out["image"]
        assert image.shape == (3, H, W) and semseg.shape == (H, W)
        assert set(semseg.unique().tolist()) <= {0, 1, 2, 255}
        assert set(out["targets"]["depth"].unique().tolist()) <= set(
            source["targets"]["depth"].unique().tolist()
        )
        # Away from class edges (3x3 neighbourhood of one class, not on the crop border, where the
        # neighbour that bilinear blends in is outside the crop) the colour must be the class colour.
        padded = torch.nn.functional.pad(semseg.float(), (1, 1, 1, 1), value=-1)
        windows = padded.unfold(0, 3, 1).unfold(1, 3, 1)
        interior = (windows == semseg[..., None, None]).all(-1).all(-1) & (semseg != 255)
        colour = torch.from_numpy(PALETTE).float()[semseg.clamp(max=2)].permute(2, 0, 1) / 255
        assert interior.sum() > H * W // 4
        assert torch.allclose(image[:, interior], colour[:, interior], atol=1e-4)
        assert out["teacher"]["big"]["depth"].shape == (2, H, W)
        assert torch.allclose(out["teacher"]["big"]["depth"][0], out["targets"]["depth"][0], atol=0.5)


def test_scale_crop_boxes_and_intrinsics():
    out = RandomScaleCrop(scale=(2.0, 2.0))(make_sample(), np.random.default_rng(3))
    boxes, k = out["meta"]["boxes"], out["meta"]["intrinsics"]
    assert k[0, 0] == 60.0 and k[1, 1] == 60.0
    left, top = 31.5 - k[0, 2].item(), 23.5 - k[1, 2].item()  # the zoomed principal point is (31.5, 23.5)
    expected = torch.tensor([[0.0, 0.0, 16.0, 20.0], [40.0, 8.0, 64.0, 48.0]]) - torch.tensor([left, top] * 2)
    expected = torch.minimum(expected.clamp(min=0), torch.tensor([W, H, W, H], dtype=torch.float32))
    keep = (expected[:, 2] > expected[:, 0]) & (expected[:, 3] > expected[:, 1])
    assert torch.allclose(boxes, expected[keep])
    assert torch.equal(out["meta"]["box_labels"], torch.tensor([1, 2])[keep])
    # A crop far from a box drops it.
    sample = make_sample()
    sample["meta"]["boxes"] = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    sample["meta"]["box_labels"] = torch.tensor([0])
    kept = []
    for seed in range(10):
        out = RandomScaleCrop(scale=(3.0, 3.0))(sample, np.random.default_rng(seed))
        assert len(out["meta"]["boxes"]) == len(out["meta"]["box_labels"])
        kept.append(len(out["meta"]["boxes"]))
    assert 0 in kept and set(kept) <= {0, 1}


def test_resize_convention_and_fixed_size(folder):
    out = Resize((2 * H, 2 * W))(make_sample(), np.random.default_rng(0))
    assert out["image"].shape == (3, 2 * H, 2 * W) and out["targets"]["semseg"].shape == (2 * H, 2 * W)
    assert torch.allclose(out["meta"]["intrinsics"][:2, 2], torch.tensor([31.5, 23.5]))  # centre stays centre
    assert torch.allclose(out["meta"]["boxes"][0], torch.tensor([0.0, 0.0, 16.0, 20.0]))
    ds = FolderDataset(folder, image_size=(12, 16), transform=RandomScaleCrop(size=8))
    ds.attach_teacher_outputs(lambda index: {"t": {"semseg": torch.zeros(3, 6, 8)}})
    sample = ds[0]
    assert sample["image"].shape == (3, 8, 8) and sample["teacher"]["t"]["semseg"].shape == (3, 8, 8)


def test_augmentation_is_deterministic_per_seed_epoch_index(folder):
    transform = Compose([RandomHorizontalFlip(), RandomScaleCrop(scale=(1.0, 2.0))])
    ds = FolderDataset(folder, transform=transform, seed=7)
    again = FolderDataset(folder, transform=transform, seed=7)
    first = [ds[i] for i in range(len(ds))]
    for i, sample in enumerate(first):
        other = again[i]
        assert torch.equal(sample["image"], other["image"])
        assert torch.equal(sample["targets"]["depth"], other["targets"]["depth"])
    ds.set_epoch(1)
    assert any(not torch.equal(a["image"], ds[i]["image"]) for i, a in enumerate(first))


# --------------------------------------------------------------------------- collation


def test_collate_shapes_valid_and_teacher(folder):
    ds = FolderDataset(folder)
    ds.attach_teacher_outputs({"t": {"semseg": torch.randn(4, 3, H, W), "depth": torch.rand(4, 1, H, W)}})
    batch = collate([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, H, W)
    assert batch["targets"]["depth"].shape == (4, 1, H, W) and batch["targets"]["semseg"].shape == (4, H, W)
    assert torch.equal(batch["valid"]["depth"], torch.tensor([True, True, False, False]))
    assert torch.equal(batch["valid"]["semseg"], torch.tensor([True, False, True, False]))
    assert batch["teacher"]["t"]["semseg"].shape == (4, 3, H, W)
    assert torch.equal(batch["meta"]["index"], torch.arange(4))
    assert batch["meta"]["id"] == ["a", "b", "c", "d"] and batch["meta"]["domain"] == [
        "indoor",
        None,
        None,
        None,
    ]
    assert len(batch["meta"]["boxes"]) == 4 and batch["meta"]["intrinsics"][1] is None
    moved = move_batch(batch, "meta")
    assert moved["teacher"]["t"]["depth"].device.type == "meta" and moved["meta"]["boxes"][0].is_meta
    assert moved["meta"]["id"] == batch["meta"]["id"]
    assert collate([FolderDataset(folder)[0]])["teacher"] == {}
    pickle.dumps(ds)  # picklable for DataLoader workers


def test_collate_rejects_mixed_samples(folder):
    with_teacher = FolderDataset(folder)
    with_teacher.attach_teacher_outputs(lambda index: {"t": {"depth": torch.zeros(1, H, W)}})
    plain = FolderDataset(folder)
    with pytest.raises(DataError, match="different teacher maps"):
        collate([with_teacher[0], plain[1]])
    with pytest.raises(DataError, match="different tasks"):
        collate([plain[0], FolderDataset(folder, tasks=("depth",))[1]])
    small = FolderDataset(folder, image_size=8)
    with pytest.raises(DataError, match="cannot batch images"):
        collate([plain[0], small[1]])
    with pytest.raises(DataError, match="teacher outputs 't/depth' hold 2 maps"):
        plain.attach_teacher_outputs({"t": {"depth": torch.zeros(2, 1, H, W)}})


# --------------------------------------------------------------------------- a task the data code has never seen


@pytest.fixture
def heat_task():
    """A task type registered for one test: labels in ``heat/<id>.npy`` (a signed field ``(1, H, W)``), a flip that
    negates the values as a normals task would its x, teacher maps in units of input pixels. The data code knows
    nothing of it: everything goes through the hooks of :class:`~polydistill.tasks.Task`."""
    from polydistill.tasks import TASKS, Task

    class HeatTask(Task):
        name = "heat"
        target_is_label = False
        label_folder = "heat"
        label_extensions = (".npy",)

        @classmethod
        def read_label_file(cls, path, num_classes, ignore_index):
            return torch.from_numpy(np.load(path))[None]

        @classmethod
        def placeholder_target(cls, size, ignore_index):
            return torch.full((1, *size), float("nan"))

        @classmethod
        def flip_target(cls, target):
            return -target.flip(-1)

        @classmethod
        def flip_teacher_map(cls, value):
            return -value.flip(-1)

        @classmethod
        def rescale_teacher_map(cls, value, sx, sy):
            return value * sx

        @classmethod
        def cache_encoding(cls, default, semseg_topk):
            return "fp32"

        @classmethod
        def label_statistics(cls, label, file, num_classes):
            return {"files": 1, "sum": float(label.sum())}

        @classmethod
        def summarise_label_statistics(cls, total, class_names, box_class_names):
            return None, {"files": total.get("files", 0), "sum": total.get("sum", 0.0)}

    TASKS.register()(HeatTask)
    yield HeatTask
    TASKS._items.pop("heat")  # the registry has no public removal: tasks are registered once, at import


def test_a_registered_task_is_read_flipped_resized_cached_and_checked_through_its_hooks(folder, heat_task):
    from polydistill.cache.build import encodings_for
    from polydistill.data.check import check_dataset
    from polydistill.data.layouts import layout_class
    from polydistill.teachers import Teacher

    field = np.tile(np.arange(W, dtype=np.float32) - 10, (H, 1))
    (folder / "heat").mkdir()
    np.save(folder / "heat/a.npy", field)
    ds = FolderDataset(folder, ("heat", "semseg"), transform=RandomHorizontalFlip(p=1.0))
    assert ds.label_counts() == {"heat": 1, "semseg": 2}
    ds.attach_teacher_outputs({"t": {"heat": torch.arange(4 * W, dtype=torch.float32).reshape(4, 1, 1, W)}})
    sample = ds[0]
    assert sample["valid"]["heat"]
    assert torch.equal(sample["targets"]["heat"][0], -torch.from_numpy(field[:, ::-1].copy()))
    assert torch.allclose(sample["teacher"]["t"]["heat"][0, 5], -torch.arange(W - 1, -1, -1, dtype=torch.float32))
    missing = ds[1]
    assert not missing["valid"]["heat"] and missing["targets"]["heat"].shape == (1, H, W)
    assert missing["targets"]["heat"].isnan().all()  # its own placeholder, not depth's zeros or semseg's ids
    batch = collate([ds[0], ds[1]])
    assert batch["targets"]["heat"].shape == (2, 1, H, W) and batch["valid"]["heat"].tolist() == [True, False]

    resized = FolderDataset(folder, ("heat",), transform=Resize((H // 2, W // 2)))  # after the maps are attached
    resized.attach_teacher_outputs({"t": {"heat": torch.ones(4, 1, H, W)}})
    small = resized[0]
    assert small["targets"]["heat"].shape == (1, H // 2, W // 2)
    assert torch.allclose(small["teacher"]["t"]["heat"], torch.full((1, H // 2, W // 2), 0.5))  # rescaled by sx

    class HeatTeacher(Teacher):
        def _predict(self, images):
            return {"heat": images.mean(1)[:, ::2, ::2], "depth": images[:, :1] + 1}

    teacher = HeatTeacher("t", ("heat", "depth"))
    assert encodings_for([teacher], "int8") == {("t", "heat"): "fp32", ("t", "depth"): "fp16"}
    assert teacher.predict(torch.rand(2, 3, 8, 10))["heat"].shape == (2, 1, 8, 10)  # resized to the input

    (report,) = check_dataset(folder)
    assert report.labels["heat"] == 1 and report.to_dict()["heat"] == {"files": 1, "sum": float(field.sum())}
    only_labels = folder.parent / "only-heat"
    (only_labels / "heat").mkdir(parents=True)
    assert layout_class(only_labels).name == "folder"  # auto-detected by the task's label folder


def test_hooks_of_the_built_in_tasks():
    from torchvision.transforms import InterpolationMode

    from polydistill.tasks import TASKS

    depth, semseg, detection = TASKS.get("depth"), TASKS.get("semseg"), TASKS.get("detection")
    assert (depth.label_folder, semseg.label_folder, detection.label_folder) == ("depth", "semseg", "boxes")
    assert TASKS.get("features").label_folder is None
    assert depth.label_interpolation == semseg.label_interpolation == InterpolationMode.NEAREST_EXACT
    assert detection.label_interpolation == InterpolationMode.BILINEAR
    assert semseg.needs_class_names and detection.needs_class_names and not depth.needs_class_names
    assert torch.equal(depth.placeholder_target((2, 3), 255), torch.zeros(1, 2, 3))
    assert torch.equal(semseg.placeholder_target((2, 3), 7), torch.full((2, 3), 7))
    assert depth.cache_encoding("int8", 5) == "fp16" and semseg.cache_encoding("int8", 5) == ("topk", 5)
    assert semseg.cache_encoding("int8", None) == "int8" and detection.cache_encoding("int8", 5) == "int8"
    boxes = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(6, 2, 3)  # 2 classes + (l, t, r, b)
    flipped = detection.flip_teacher_map(boxes)
    assert torch.equal(flipped[:2], boxes[:2].flip(-1))
    assert torch.equal(flipped[2:], boxes[[4, 3, 2, 5]].flip(-1))  # left and right swap
    scaled = detection.rescale_teacher_map(boxes, 2.0, 0.5)
    assert torch.equal(scaled[:2], boxes[:2]) and torch.equal(scaled[2:], boxes[2:] * torch.tensor(
        [2.0, 0.5, 2.0, 0.5])[:, None, None])
    grid = torch.rand(2, 6, 4, 5)
    assert detection.resize_output(grid, (16, 20)) is grid
    assert depth.resize_output(torch.rand(2, 4, 5), (16, 20)).shape == (2, 1, 16, 20)
