"""The upstream dataset layouts (NYUv2 .mat and .npy, Cityscapes, COCO) read in place, on tiny fixtures written
in the exact upstream formats (tests/dataset_fixtures.py)."""

from __future__ import annotations

import importlib.util
import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from polydistill.cache.build import cache_slot
from polydistill.config import DataConfig, load_config
from polydistill.data import FORMATS, FolderDataset, build_train_transform, collate
from polydistill.data.layouts import layout_class
from polydistill.data.layouts.cityscapes import CLASSES as CS_CLASSES
from polydistill.data.layouts.nyuv2 import NYU13_NAMES, nyu13_from_40, nyu_classes
from polydistill.errors import ConfigError, DataError
from polydistill.pipeline.train import build_datasets, resolve_task_options, train_run
from tests.dataset_fixtures import (
    CAMERA,
    COCO_H,
    COCO_W,
    CS_H,
    CS_IDS,
    CS_W,
    NPY_H,
    NPY_W,
    NYU_H,
    NYU_N,
    NYU_W,
    cityscapes_file,
    write_cityscapes,
    write_coco,
    write_nyuv2_mat,
    write_nyuv2_npy,
    write_split_json,
)

#: the NYUv2 .mat is HDF5: its tests need h5py (the other layouts' tests do not)
needs_h5py = pytest.mark.skipif(importlib.util.find_spec("h5py") is None, reason="h5py is not installed")


def batch_of_two(dataset: FolderDataset) -> dict:
    """Training-style access: a DataLoader batch of two samples through the project's collate."""
    return next(iter(DataLoader(dataset, batch_size=2, shuffle=False, collate_fn=collate)))


# ------------------------------------------------------------------------------------------------ formats


def test_config_formats_match_the_layouts():
    assert set(DataConfig.model_fields["format"].annotation.__args__) == set(FORMATS)


def test_unrecognised_folder_lists_the_layouts(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError) as err:
        FolderDataset(tmp_path, ("depth",), format="auto")
    message = str(err.value)
    assert str(tmp_path) in message
    for name, hint in (("cityscapes", "leftImg8bit"), ("coco", "instances_"), ("nyuv2_npy", "image/*.npy"),
                       ("nyuv2", ".mat"), ("folder", "images/")):
        assert f"{name}:" in message and hint in message


def test_unknown_format_and_option_are_errors(tmp_path):
    root = write_cityscapes(tmp_path / "cs", splits=("train",))
    with pytest.raises(DataError, match="unknown data.format 'citiscapes'.*did you mean 'cityscapes'"):
        FolderDataset(root, ("semseg",), format="citiscapes")
    with pytest.raises(DataError, match="unknown option 'clases' for format 'nyuv2'.*did you mean 'classes'"):
        FolderDataset(tmp_path, ("semseg",), format="nyuv2", options={"clases": 40})
    with pytest.raises(DataError, match="unknown option 'crowd' for format 'cityscapes'.*has no options"):
        FolderDataset(root, ("semseg",), format="cityscapes", options={"crowd": "keep"})


# ------------------------------------------------------------------------------------------------ NYUv2 .mat


def test_class_maps_are_the_published_tables():
    names40, to40 = nyu_classes(40)
    assert names40[:4] == ("wall", "floor", "cabinet", "bed") and len(names40) == 40 and len(to40) == 895
    # NYU object class -> Gupta's 40 (1-based in the paper, 0-based here): wall, floor, ceiling, bed, television
    for nyu, gupta in ((21, 1), (11, 2), (4, 22), (157, 4), (172, 25), (1, 40), (85, 23)):
        assert to40[nyu] == gupta - 1
    names13, to13 = nyu13_from_40()
    assert names13 == NYU13_NAMES
    expected = [12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5, 7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6,
                7, 7, 7, 7, 7, 7, 6, 7]
    assert (to13 + 1).tolist() == expected


@needs_h5py
def test_nyuv2_mat_reads_transposed_images_depth_and_mapped_labels(tmp_path):
    truth = write_nyuv2_mat(tmp_path / "nyu_depth_v2_labeled.mat")
    write_split_json(tmp_path / "split.json")
    data = FolderDataset(tmp_path, ("depth", "semseg"), format="auto", split="train",
                         options={"split_file": str(tmp_path / "split.json")})
    assert data.format == "nyuv2" and data.ids == ("0001", "0003") and data.class_names == NYU13_NAMES
    sample = data[1]  # NYU image 3 = 0-based 2
    assert sample["image"].shape == (3, NYU_H, NYU_W)
    assert sample["image"][0, 1, 5] == pytest.approx((200 + 2) / 255)
    torch.testing.assert_close(sample["image"], torch.from_numpy(truth["images"][2]).permute(2, 0, 1).float() / 255)
    assert sample["targets"]["depth"][0, 2, 3] == pytest.approx(3.5)
    semseg = sample["targets"]["semseg"]
    wall, bed = NYU13_NAMES.index("wall"), NYU13_NAMES.index("bed")
    assert (semseg[0] == wall).all() and (semseg[1] == bed).all() and (semseg[2] == 255).all()
    assert (semseg[3:] == NYU13_NAMES.index("chair")).all()
    forty = FolderDataset(tmp_path, ("semseg",), format="nyuv2", split="test",
                          options={"classes": 40, "split_file": str(tmp_path / "split.json")})
    assert forty.ids == ("0002", "0004") and len(forty.class_names) == 40
    assert forty[0]["targets"]["semseg"][1, 0] == 3 and forty[0]["targets"]["semseg"][0, 0] == 0  # bed, wall
    everything = FolderDataset(tmp_path / "nyu_depth_v2_labeled.mat", ("depth",), format="nyuv2", split="all",
                               options={"depth": "rawDepths"})
    assert len(everything) == NYU_N and everything[0]["targets"]["depth"][0, 0, 0] == 0  # raw: holes


@needs_h5py
def test_nyuv2_mat_training_access_and_pickling(tmp_path):
    write_nyuv2_mat(tmp_path / "nyu_depth_v2_labeled.mat")
    write_split_json(tmp_path / "splits.json")
    options = {"split_file": str(tmp_path / "splits.json")}
    train = FolderDataset(tmp_path, ("depth", "semseg"), format="nyuv2", split="train", options=options,
                          image_size=(4, 6), transform=build_train_transform(DataConfig(train="x").augment))
    batch = batch_of_two(train)
    assert batch["image"].shape == (2, 3, 4, 6) and batch["targets"]["semseg"].shape == (2, 4, 6)
    assert batch["valid"]["depth"].all() and batch["valid"]["semseg"].all()
    _ = train[0]  # opens the HDF5 handle in this process
    clone = pickle.loads(pickle.dumps(train))  # what spawned DataLoader workers get
    torch.testing.assert_close(clone[1]["targets"]["depth"], train[1]["targets"]["depth"])
    plain = FolderDataset(tmp_path, ("depth",), format="nyuv2", split="train", options=options)
    _ = plain[0]  # the parent's handle is open when the (forked) worker starts
    loader = DataLoader(plain, batch_size=2, num_workers=1, collate_fn=collate)
    torch.testing.assert_close(next(iter(loader))["targets"]["depth"][1], plain[1]["targets"]["depth"])
    test = FolderDataset(tmp_path, ("depth",), format="nyuv2", split="val", options=options)
    assert test.split == "test" and test.root != train.root and test.fingerprint() != train.fingerprint()


@needs_h5py
def test_nyuv2_official_splits_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    write_nyuv2_mat(tmp_path / "nyu_depth_v2_labeled.mat")
    scipy_io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[2], [3], [4]]), "testNdxs": np.array([[1]])})
    train = FolderDataset(tmp_path, ("depth",), format="nyuv2")  # splits.mat next to the file, split train
    assert train.ids == ("0002", "0003", "0004")
    assert layout_class(tmp_path).splits(tmp_path) == ["train", "test"]


@needs_h5py
def test_nyuv2_mat_malformed(tmp_path):
    mat = tmp_path / "nyu_depth_v2_labeled.mat"
    write_nyuv2_mat(mat, drop="labels")
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat has no dataset\(s\) labels"):
        FolderDataset(mat, ("semseg",), format="nyuv2", split="all")
    write_nyuv2_mat(mat, bad_label=900)
    data = FolderDataset(mat, ("semseg",), format="nyuv2", split="all")
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled\.mat\[labels\]\[1\] holds label ids 900"):
        data[1]
    with pytest.raises(DataError, match=r"split 'train' needs the official splits\.mat .*split_file"):
        FolderDataset(mat, ("depth",), format="nyuv2", split="train")
    bad_split = write_split_json(tmp_path / "bad.json", train=(1, 9))
    with pytest.raises(DataError, match=r"bad\.json: 'train' holds 9.*1-based indices of the 4"):
        FolderDataset(mat, ("depth",), format="nyuv2", split="train", options={"split_file": str(bad_split)})
    broken = tmp_path / "broken.mat"
    broken.write_bytes(b"MATLAB 7.3 MAT-file" + b"\0" * 600)  # the right header, no HDF5 behind it
    with pytest.raises(DataError, match=r"cannot open .*broken\.mat as HDF5"):
        FolderDataset(broken, ("depth",), format="nyuv2", split="all")
    v5 = tmp_path / "old.mat"
    v5.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 200)
    with pytest.raises(DataError, match=r"old\.mat is not a MATLAB v7\.3 \.mat file"):
        FolderDataset(v5, ("depth",), format="nyuv2", split="all")


# ------------------------------------------------------------------------------------------------ NYUv2 .npy


def test_nyuv2_npy_layout(tmp_path):
    root = write_nyuv2_npy(tmp_path / "nyuv2")
    train = FolderDataset(root, ("depth", "semseg"), format="auto")
    assert train.format == "nyuv2_npy" and train.ids == ("0", "1", "2") and train.class_names == NYU13_NAMES
    sample = train[1]
    assert sample["image"].shape == (3, NPY_H, NPY_W)
    assert sample["image"][:, 0, 0].tolist() == [1.0, 0.0, 0.5]
    semseg, depth = sample["targets"]["semseg"], sample["targets"]["depth"]
    assert (semseg[0] == 255).all() and (semseg[1] == NYU13_NAMES.index("wall")).all() and semseg[2, 0] == 4
    assert depth.shape == (1, NPY_H, NPY_W) and depth[0, 0, 0] == 0 and depth[0, 1, 1] == pytest.approx(4.0)
    batch = batch_of_two(train)
    assert batch["targets"]["depth"].shape == (2, 1, NPY_H, NPY_W) and batch["valid"]["semseg"].all()
    val = FolderDataset(root, ("depth",), format="nyuv2_npy", split="val")
    assert len(val) == 2 and val.root == root / "val"


def test_nyuv2_npy_malformed(tmp_path):
    root = write_nyuv2_npy(tmp_path / "nyuv2", counts=(("train", 3),))
    np.save(root / "train/label/1.npy", np.full((NPY_H, NPY_W), 13.0, np.float32))
    np.save(root / "train/image/2.npy", np.zeros((NPY_H, NPY_W, 3), np.uint8))
    data = FolderDataset(root, ("semseg",), format="nyuv2_npy")
    with pytest.raises(DataError, match=r"train/label/1\.npy holds label values 13"):
        data[1]
    with pytest.raises(DataError, match=r"train/image/2\.npy holds a uint8 array"):
        data[2]
    (root / "train/depth/0.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(DataError, match=r"cannot read .*train/depth/0\.npy"):
        FolderDataset(root, ("depth",), format="nyuv2_npy")[0]
    with pytest.raises(DataError, match=r"val/image does not exist.*splits here: train"):
        FolderDataset(root, ("depth",), format="nyuv2_npy", split="val")


# ------------------------------------------------------------------------------------------------ Cityscapes


def test_cityscapes_labels_depth_and_intrinsics(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")
    data = FolderDataset(root, ("depth", "semseg"), format="auto")
    assert data.format == "cityscapes" and data.split == "train" and data.ids == tuple(sorted(CS_IDS["train"]))
    assert data.class_names == CS_CLASSES and data.ignore_index == 255
    sample = data[0]
    semseg = sample["targets"]["semseg"]
    assert semseg.shape == (CS_H, CS_W)
    assert (semseg[0] == CS_CLASSES.index("road")).all() and (semseg[1] == CS_CLASSES.index("car")).all()
    assert (semseg[2] == 255).all() and (semseg[3] == CS_CLASSES.index("bicycle")).all()
    assert (semseg[4] == CS_CLASSES.index("building")).all()
    depth = sample["targets"]["depth"][0]
    baseline, fx = CAMERA["extrinsic"]["baseline"], CAMERA["intrinsic"]["fx"]
    assert depth[0, 0] == 0 and depth[0, 1] == 0  # p = 0: invalid; p = 1: zero disparity
    assert depth[0, 2] == pytest.approx(baseline * fx / 1.0, rel=1e-5)  # p = 257 -> d = 1 px
    assert depth[0, 3] == pytest.approx(baseline * fx / 20.0, rel=1e-5)  # p = 5121 -> d = 20 px
    assert depth[5, 5] == pytest.approx(baseline * fx / 10.0, rel=1e-5)
    k = sample["meta"]["intrinsics"]
    assert k[0, 0] == pytest.approx(fx) and k[1, 2] == pytest.approx(CAMERA["intrinsic"]["v0"])
    assert sample["image"][0, 0, 3] == pytest.approx(30 / 255)
    val = FolderDataset(root, ("semseg",), format="cityscapes", split="val")
    assert val.ids == tuple(sorted(CS_IDS["val"])) and val.root == root / "leftImg8bit" / "val"


def test_cityscapes_training_access_and_cache_keys(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes")
    transform = build_train_transform(DataConfig(train="x", augment={"hflip": 1.0, "scale": (1.0, 1.0)}).augment)
    train = FolderDataset(root, ("depth", "semseg"), format="cityscapes", transform=transform)
    batch = batch_of_two(train)
    assert batch["image"].shape == (2, 3, CS_H, CS_W) and batch["valid"]["depth"].all()
    assert batch["image"][0, 0, 0, 0] == pytest.approx(150 / 255)  # flipped: column 15 is now column 0
    depth = batch["targets"]["depth"][0, 0]
    assert depth[0, -1] == 0 and depth[0, -3] > depth[0, -4] > 0  # the disparity row, mirrored
    assert (batch["targets"]["semseg"][:, 0] == CS_CLASSES.index("road")).all()
    assert torch.equal(batch["meta"]["intrinsics"][0][0, 0], torch.tensor(CAMERA["intrinsic"]["fx"]))
    plain = FolderDataset(root, ("depth", "semseg"), format="cityscapes", image_size=(4, 8))
    assert plain.label_counts() == {"depth": 3, "semseg": 3} and plain.has_any_label(0)
    val = FolderDataset(root, ("depth", "semseg"), format="cityscapes", split="val", image_size=(4, 8))
    assert cache_slot([], plain) != cache_slot([], val) and plain.fingerprint() != val.fingerprint()
    assert plain.fingerprint() == FolderDataset(root, ("depth",), format="cityscapes", image_size=(4, 8)).fingerprint()


def test_cityscapes_malformed(tmp_path):
    root = write_cityscapes(tmp_path / "cityscapes", splits=("train",))
    sid = CS_IDS["train"][1]
    camera = cityscapes_file(root, "train", sid, "camera")
    camera.unlink()
    with pytest.raises(DataError, match=rf"{sid}_disparity\.png: has no camera file .*{sid}_camera\.json"):
        FolderDataset(root, ("depth",), format="cityscapes")
    camera.write_text('{"extrinsic": {"baseline": 0.2}, "intrinsic": {"fy": 1.0}}')
    with pytest.raises(DataError, match=rf"{sid}_camera\.json lacks or has a non-number 'fx'"):
        FolderDataset(root, ("depth",), format="cityscapes")[1]
    camera.write_text("{not json")
    with pytest.raises(DataError, match=rf"cannot parse .*{sid}_camera\.json"):
        FolderDataset(root, ("depth",), format="cityscapes")[1]
    camera.write_text(json.dumps(CAMERA))
    label = cityscapes_file(root, "train", sid, "gtFine")
    from PIL import Image

    Image.fromarray(np.full((CS_H, CS_W), 40, np.uint8)).save(label)
    with pytest.raises(DataError, match=rf"{sid}_gtFine_labelIds\.png holds label ids 40.*not Cityscapes label ids"):
        FolderDataset(root, ("semseg",), format="cityscapes")[1]
    Image.fromarray(np.zeros((CS_H, CS_W - 2), np.uint8)).save(label)
    with pytest.raises(DataError, match=rf"{sid}_gtFine_labelIds\.png is 8x14 but .*{sid}_leftImg8bit\.png is 8x16"):
        FolderDataset(root, ("semseg",), format="cityscapes")[1]
    image = cityscapes_file(root, "train", sid, "leftImg8bit")
    image.write_bytes(image.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match=rf"cannot read .*{sid}_leftImg8bit\.png"):
        FolderDataset(root, ("semseg",), format="cityscapes")[1]
    with pytest.raises(DataError, match=r"leftImg8bit/test does not exist.*splits here: train"):
        FolderDataset(root, ("semseg",), format="cityscapes", split="test")


# ------------------------------------------------------------------------------------------------ COCO


def test_coco_boxes_and_panoptic_semseg(tmp_path):
    root = write_coco(tmp_path / "coco")
    data = FolderDataset(root, ("semseg", "detection"), format="auto")
    assert data.format == "coco" and data.split == "val2017" and data.ids == ("000000000139", "000000000285")
    assert data.class_names == ("person", "car", "dog", "tree-merged", "wall-other-merged")
    assert data.box_class_names == ("person", "car", "dog")
    sample = data[0]
    boxes = sample["targets"]["detection"]
    # the car [x, y, w, h] = [2, 3, 10, 5] -> [x0, y0, x1, y1] = [2, 3, 12, 8], class 'car'; the crowd is skipped
    assert boxes.tolist() == [[2.0, 3.0, 12.0, 8.0, 1.0], [20.0, 4.0, 30.0, 20.0, 0.0]]
    semseg = sample["targets"]["semseg"]
    assert semseg.shape == (COCO_H, COCO_W) and (semseg[0] == 255).all()
    assert (semseg[1:, : COCO_W // 2] == 1).all() and (semseg[1:, COCO_W // 2:] == 4).all()
    other = data[1]
    assert other["valid"] == {"semseg": False, "detection": True}
    assert other["targets"]["detection"].tolist() == [[1.0, 1.0, 9.0, 9.0, 2.0]]
    batch = batch_of_two(FolderDataset(root, ("semseg", "detection"), format="coco", image_size=(12, 16)))
    assert batch["targets"]["detection"].shape == (2, 2, 5) and batch["valid"]["semseg"].tolist() == [True, False]
    crowd = FolderDataset(root, ("detection",), format="coco", options={"crowd": "keep"})
    assert len(crowd[0]["targets"]["detection"]) == 3


def test_coco_detection_classes_in_a_run_config(tmp_path):
    root = write_coco(tmp_path / "coco")
    cfg = load_config(base={"data": {"train": str(root), "format": "coco"}, "tasks": {"detection": {}}})
    data = FolderDataset(root, ("detection",), format="coco")
    opts = resolve_task_options(cfg, data)["detection"]
    assert opts["class_names"] == ["person", "car", "dog"] and opts["source_ids"] == [0, 1, 2]


def test_coco_malformed(tmp_path):
    root = write_coco(tmp_path / "coco")
    (root / "val2017/000000000285.jpg").unlink()
    with pytest.raises(DataError, match=r"val2017/000000000285\.jpg: is listed in the annotations but missing"):
        FolderDataset(root, ("detection",), format="coco")
    write_coco(root)
    pan = root / "annotations/panoptic_val2017/000000000139.png"
    from PIL import Image

    Image.fromarray(np.full((COCO_H, COCO_W, 3), 7, np.uint8)).save(pan)
    with pytest.raises(DataError, match=r"000000000139\.png holds segment ids 460551 that segments_info"):
        FolderDataset(root, ("semseg",), format="coco")[0]
    instances = root / "annotations/instances_val2017.json"
    data = json.loads(instances.read_text())
    data["annotations"][0]["bbox"] = [1, 1, -3, 2]
    instances.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2017\.json: annotation 0 \(id 1\) has bbox \[1, 1, -3, 2\]"):
        FolderDataset(root, ("detection",), format="coco")
    data["annotations"][0]["bbox"], data["annotations"][0]["category_id"] = [1, 1, 3, 2], 99
    instances.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation 0 \(id 1\) has category_id 99"):
        FolderDataset(root, ("detection",), format="coco")
    instances.write_text('{"images": [')
    with pytest.raises(DataError, match=r"cannot parse .*instances_val2017\.json"):
        FolderDataset(root, ("detection",), format="coco")
    with pytest.raises(DataError, match=r"there is no split 'train2017'; the COCO splits here are val2017"):
        FolderDataset(root, ("detection",), format="coco", split="train2017")


# ------------------------------------------------------------------------------------------------ in a run


def test_config_splits_of_one_root_and_a_tiny_training_run(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cityscapes")
    base = {"data": {"train": str(root), "val": str(root), "height": 8, "width": 16, "batch_size": 2},
            "tasks": {"depth": {}, "semseg": {}},
            "student": {"backbone": "test_efficientnet", "neck_channels": 8},
            "train": {"max_steps": 2, "val_every": 2, "warmup_steps": 1, "progress": False, "report": False}}
    train, plain, val = build_datasets(load_config(base=base))
    assert (plain.split, val.split, len(val)) == ("train", "val", 2)
    assert "data.train:" in capsys.readouterr().out  # auto says what it found
    same = {**base, "data": {**base["data"], "val_split": "train"}}
    with pytest.raises(ConfigError, match="data.val is the training folder"):
        build_datasets(load_config(base=same))
    result = train_run(load_config(base=base), tmp_path / "run")
    assert result.spec.tasks["semseg"]["class_names"] == list(CS_CLASSES)
    assert {"depth", "semseg"} <= set(result.fit.best_metrics)
