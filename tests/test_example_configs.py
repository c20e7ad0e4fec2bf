"""The foundation-model example configs build and train offline, with tiny local stand-ins for the hub models.

Each config is loaded as shipped; only what needs the internet or a GPU is swapped: hub ids point at tiny
random-weight models saved to a folder (the same ``hf:`` loading path), the data at a tiny folder dataset,
the student at a tiny timm backbone, sizes and steps shrink, bf16 and pretrained weights are off. A few
distillation steps must then reduce every feature teacher's loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from polydistill.config import load_config
from polydistill.engine.logging import read_steps
from polydistill.pipeline.train import train_run
from tests.conftest import write_tiny_dataset
from tests.test_hf_features import tiny_clip, tiny_dinov2, tiny_sam
from tests.test_hf_teacher import tiny_depth_anything, tiny_segformer

ROOT = Path(__file__).resolve().parents[1]
MAPS = ROOT / "src" / "polydistill" / "class_maps"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def shrink(cfg: dict, train: Path, val: Path | None, steps: int = 16) -> dict:
    cfg["data"].update(train=str(train), val=str(val) if val else None, height=32, width=48, batch_size=4,
                       num_workers=0)
    cfg["student"].update(backbone="test_efficientnet", pretrained=False, neck_channels=16)
    cfg["train"].update(mixed_precision="no", max_steps=steps, epochs=1, lr=5e-3, val_every=steps, log_every=1,
                        progress=False, warmup_steps=1)
    return cfg


def assert_feature_losses_fall(run: Path, terms: list[str]) -> None:
    rows = read_steps(run / "steps.csv")
    for term in terms:
        values = [r[f"loss/{term}"] for r in rows]
        assert np.mean(values[-4:]) < np.mean(values[:4]), (term, values)


def test_nyuv2_foundation_config_builds_and_distills(tmp_path):
    tiny_depth_anything(tmp_path / "da")
    ade = yaml.safe_load((MAPS / "ade20k_to_nyuv2_13.yaml").read_text())
    tiny_segformer(tmp_path / "segformer", labels=tuple(ade["teacher_classes"]))
    tiny_dinov2(tmp_path / "dino", registers=4)
    data = {}
    for split, seed in (("train", 1), ("val", 2)):
        data[split] = write_tiny_dataset(tmp_path / split, 16 if split == "train" else 4, seed=seed)
        (data[split] / "classes.yaml").write_text(yaml.safe_dump({"names": ade["student_classes"],
                                                                   "ignore_index": 255}))
    cfg = shrink(load_config(ROOT / "configs" / "nyuv2_foundation_teachers.yaml").model_dump(), data["train"],
                 data["val"])
    local = {"depth_anything": "da", "segformer_ade": "segformer", "dinov2": "dino"}
    for t in cfg["teachers"]:
        t["path"] = f"hf:{tmp_path / local[t['name']]}"  # the shipped hf: prefix, on a local folder
    result = train_run(load_config(base=cfg), tmp_path / "run")
    assert set(result.fit.best_metrics) == {"depth", "semseg"}
    assert_feature_losses_fall(tmp_path / "run", ["dino/dinov2"])


def test_sak_configs_build_and_run_both_stages(tmp_path):
    tiny_dinov2(tmp_path / "dino")
    tiny_clip(tmp_path / "clip")
    tiny_sam(tmp_path / "sam")
    images = write_tiny_dataset(tmp_path / "generic", 16, seed=3, labels=())
    labelled = write_tiny_dataset(tmp_path / "train", 12, seed=1)
    val = write_tiny_dataset(tmp_path / "val", 4, seed=2)

    def local(cfg: dict) -> dict:
        for t in cfg["teachers"]:
            t["path"] = f"hf:{tmp_path / t['tasks'][0]}"
        return cfg

    stage1 = shrink(load_config(ROOT / "configs" / "sak_stage1.yaml").model_dump(), images, None, steps=20)
    assert stage1["student"]["layout"] == "sak"
    train_run(load_config(base=local(stage1)), tmp_path / "runs" / "sak_stage1")
    assert_feature_losses_fall(tmp_path / "runs" / "sak_stage1", ["dino/dinov2", "clip/clip", "sam/sam"])

    stage2 = shrink(load_config(ROOT / "configs" / "sak_stage2.yaml").model_dump(), labelled, val, steps=4)
    stage2["train"]["init_from"] = str(tmp_path / "runs" / "sak_stage1")
    result = train_run(load_config(base=local(stage2)), tmp_path / "runs" / "sak_stage2")
    assert set(result.fit.best_metrics) == {"depth", "semseg"}
    assert (tmp_path / "runs" / "sak_stage2" / "init_from.json").is_file()
