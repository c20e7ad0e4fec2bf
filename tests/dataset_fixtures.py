"""Tiny datasets written in the exact upstream formats (file names, dtypes, storage order, JSON keys).

Each writer returns the values a test can check: which pixel holds which raw id, what depth a disparity
pixel means, which box an annotation describes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------- NYUv2 .mat

NYU_H, NYU_W, NYU_N = 6, 8, 4


def matlab_v73_header() -> bytes:
    """The 128-byte text header MATLAB writes into the 512-byte user block of a v7.3 (HDF5) .mat file."""
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    return text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"


def write_nyuv2_mat(path: Path, *, drop: str | None = None, bad_label: int | None = None) -> dict:
    """A labelled-NYUv2-like file: N images of H x W stored as MATLAB does (transposed: (N, 3, W, H) ...).

    Image i (0-based) has: pixel (row 1, col 5) red = 200 + i; depth (row 2, col 3) = 1.5 + i metres;
    labels: row 0 = 21 (wall), row 1 = 157 (bed), row 2 = 0 (unlabelled), the rest 5 (chair).
    """
    import h5py

    images = np.zeros((NYU_N, NYU_H, NYU_W, 3), np.uint8)
    depths = np.full((NYU_N, NYU_H, NYU_W), 2.0, np.float32)
    labels = np.full((NYU_N, NYU_H, NYU_W), 5, np.uint16)
    for i in range(NYU_N):
        images[i, 1, 5] = (200 + i, 10, 20)
        depths[i, 2, 3] = 1.5 + i
    labels[:, 0], labels[:, 1], labels[:, 2] = 21, 157, 0
    if bad_label is not None:
        labels[1, 4, 4] = bad_label
    arrays = {
        "images": images.transpose(0, 3, 2, 1),  # (N, H, W, 3) -> MATLAB's column-major view (N, 3, W, H)
        "depths": depths.transpose(0, 2, 1),
        "rawDepths": np.where(depths > 1.9, 0.0, depths).astype(np.float32).transpose(0, 2, 1),
        "labels": labels.transpose(0, 2, 1),
        "instances": np.zeros_like(labels).transpose(0, 2, 1).astype(np.uint8),
    }
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, value in arrays.items():
            if key != drop:
                f.create_dataset(key, data=value)
    with open(path, "r+b") as f:
        f.write(matlab_v73_header())
    return {"images": images, "depths": depths, "labels": labels}


def write_split_json(path: Path, train=(1, 3), test=(2, 4)) -> Path:
    path.write_text(json.dumps({"train": list(train), "test": list(test)}))
    return path


# ---------------------------------------------------------------------------------------------- NYUv2 .npy

NPY_H, NPY_W = 6, 8


def write_nyuv2_npy(root: Path, counts=(("train", 3), ("val", 2))) -> Path:
    """MTAN/LibMTL layout: image (H, W, 3) float [0, 1]; label (H, W) float, −1 = unlabelled; depth (H, W, 1)."""
    for split, count in counts:
        for sub in ("image", "label", "depth", "normal"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = np.full((NPY_H, NPY_W, 3), 0.25, np.float32)
            image[0, 0] = (1.0, 0.0, 0.5)
            label = np.full((NPY_H, NPY_W), 4.0, np.float32)  # 4 = floor
            label[0, :] = -1.0
            label[1, :] = 11.0  # wall
            depth = np.full((NPY_H, NPY_W, 1), 3.0 + i, np.float32)
            depth[0, 0, 0] = 0.0  # no measurement
            normal = np.zeros((NPY_H, NPY_W, 3), np.float32)
            for sub, value in (("image", image), ("label", label), ("depth", depth), ("normal", normal)):
                np.save(root / split / sub / f"{i}.npy", value)
    return root


# ---------------------------------------------------------------------------------------------- Cityscapes

CS_H, CS_W = 8, 16
CAMERA = {"extrinsic": {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0, "x": 1.7, "y": 0.1, "yaw": -0.0195,
                        "z": 1.18},
          "intrinsic": {"fx": 2262.52, "fy": 2265.3017905988554, "u0": 1096.98, "v0": 513.137}}
CS_IDS = {"train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
          "val": ["frankfurt_000000_000294", "lindau_000000_000019"]}


def write_cityscapes(root: Path, splits=("train", "val")) -> Path:
    """Label ids: row 0 = 7 (road), row 1 = 26 (car), row 2 = 0 (unlabelled), row 3 = 33 (bicycle), rest 11
    (building). Disparity: (0, 0) = 0 (invalid), (0, 1) = 1 (zero disparity), (0, 2) = 257 (d = 1 px),
    (0, 3) = 5121 (d = 20 px), rest 2561 (d = 10 px)."""
    for split in splits:
        for sample_id in CS_IDS[split]:
            city = sample_id.split("_")[0]
            paths = {kind: root / kind / split / city / f"{sample_id}_{suffix}" for kind, suffix in (
                ("leftImg8bit", "leftImg8bit.png"), ("gtFine", "gtFine_labelIds.png"),
                ("disparity", "disparity.png"), ("camera", "camera.json"))}
            for p in paths.values():
                p.parent.mkdir(parents=True, exist_ok=True)
            rgb = np.zeros((CS_H, CS_W, 3), np.uint8)
            rgb[:, :, 0] = np.arange(CS_W, dtype=np.uint8)[None] * 10
            Image.fromarray(rgb).save(paths["leftImg8bit"])
            ids = np.full((CS_H, CS_W), 11, np.uint8)
            ids[0], ids[1], ids[2], ids[3] = 7, 26, 0, 33
            Image.fromarray(ids).save(paths["gtFine"])
            disparity = np.full((CS_H, CS_W), 2561, np.uint16)
            disparity[0, :4] = (0, 1, 257, 5121)
            Image.fromarray(disparity).save(paths["disparity"])
            paths["camera"].write_text(json.dumps(CAMERA, indent=4))
    return root


def cityscapes_file(root: Path, split: str, sample_id: str, kind: str) -> Path:
    suffix = {"leftImg8bit": "leftImg8bit.png", "gtFine": "gtFine_labelIds.png", "disparity": "disparity.png",
              "camera": "camera.json"}[kind]
    return root / kind / split / sample_id.split("_")[0] / f"{sample_id}_{suffix}"


# ---------------------------------------------------------------------------------------------- COCO

COCO_H, COCO_W = 24, 32
THINGS = [{"supercategory": "person", "id": 1, "name": "person"},
          {"supercategory": "vehicle", "id": 3, "name": "car"},
          {"supercategory": "animal", "id": 18, "name": "dog"}]
STUFF = [{"supercategory": "plant", "isthing": 0, "id": 184, "name": "tree-merged", "color": [107, 142, 35]},
         {"supercategory": "wall", "isthing": 0, "id": 199, "name": "wall-other-merged", "color": [102, 102, 156]}]


def rgb_of(segment_id: int) -> tuple[int, int, int]:
    """COCO panoptic encoding: id = R + 256 G + 256² B."""
    return segment_id % 256, (segment_id // 256) % 256, segment_id // (256 * 256)


def write_coco(root: Path, split: str = "val2017", panoptic: bool = True) -> Path:
    """Two images. 000000000139: a car box [2, 3, 10, 5] (xywh), a person box, a crowd person; its panoptic
    PNG: left half segment 3226956 (car), right half segment 266 (wall-other-merged), row 0 void.
    000000000285: one dog box, no panoptic annotation."""
    images_dir, ann_dir = root / split, root / "annotations"
    images_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images = [{"license": 1, "file_name": "000000000139.jpg", "coco_url": "", "height": COCO_H, "width": COCO_W,
               "date_captured": "2013-11-21 01:34:01", "flickr_url": "", "id": 139},
              {"license": 1, "file_name": "000000000285.jpg", "coco_url": "", "height": COCO_H, "width": COCO_W,
               "date_captured": "2013-11-18 22:27:28", "flickr_url": "", "id": 285}]
    for image in images:
        Image.fromarray(np.full((COCO_H, COCO_W, 3), 120, np.uint8)).save(images_dir / image["file_name"],
                                                                          quality=95)
    annotations = [
        {"segmentation": [[2, 3, 12, 3, 12, 8]], "area": 50.0, "iscrowd": 0, "image_id": 139,
         "bbox": [2.0, 3.0, 10.0, 5.0], "category_id": 3, "id": 1},
        {"segmentation": [[20, 4, 30, 4, 30, 20]], "area": 160.0, "iscrowd": 0, "image_id": 139,
         "bbox": [20.0, 4.0, 10.0, 16.0], "category_id": 1, "id": 2},
        {"segmentation": {"counts": [0, 10], "size": [COCO_H, COCO_W]}, "area": 10.0, "iscrowd": 1,
         "image_id": 139, "bbox": [0.0, 0.0, 4.0, 4.0], "category_id": 1, "id": 3},
        {"segmentation": [[1, 1, 9, 1, 9, 9]], "area": 64.0, "iscrowd": 0, "image_id": 285,
         "bbox": [1.0, 1.0, 8.0, 8.0], "category_id": 18, "id": 4},
    ]
    instances = {"info": {"description": "COCO 2017 Dataset"}, "licenses": [], "images": images,
                 "annotations": annotations, "categories": THINGS}
    (ann_dir / f"instances_{split}.json").write_text(json.dumps(instances))
    if panoptic:
        pan_dir = ann_dir / f"panoptic_{split}"
        pan_dir.mkdir(exist_ok=True)
        png = np.zeros((COCO_H, COCO_W, 3), np.uint8)
        png[1:, : COCO_W // 2] = rgb_of(3226956)
        png[1:, COCO_W // 2:] = rgb_of(266)
        Image.fromarray(png).save(pan_dir / "000000000139.png")
        categories = [{**c, "isthing": 1, "color": [220, 20, 60]} for c in THINGS] + STUFF
        pan = {"info": {}, "licenses": [], "images": images, "categories": categories, "annotations": [
            {"segments_info": [{"id": 3226956, "category_id": 3, "iscrowd": 0, "bbox": [0, 1, 16, 23], "area": 368},
                               {"id": 266, "category_id": 199, "iscrowd": 0, "bbox": [16, 1, 16, 23], "area": 368}],
             "file_name": "000000000139.png", "image_id": 139}]}
        (ann_dir / f"panoptic_{split}.json").write_text(json.dumps(pan))
    return root
