"""Partial labels: the per-task sampler, teacher terms on unlabelled images only, feature imitation (MSE and
disagreement-weighted), per-term teacher weights, and a tiny end-to-end run with pseudo-labels."""

from __future__ import annotations

import pytest
import torch

from polydistill.config import load_config
from polydistill.distill import Objective
from polydistill.engine.sampler import TaskBalancedSampler
from polydistill.errors import ConfigError
from polydistill.pipeline.train import train_run
from polydistill.tasks import build_task
from tests.conftest import tiny_config, write_tiny_dataset


def test_task_balanced_sampler_takes_one_batch_per_group_in_turn_and_resumes_exactly():
    groups = [list(range(0, 10)), list(range(10, 14))]  # unequal groups
    sampler = TaskBalancedSampler(groups, seed=1, epoch=0, batch_size=2)
    indices = list(sampler)
    batches = [indices[i:i + 2] for i in range(0, len(indices), 2)]
    assert sampler.batches_per_epoch() == 10 and len(batches) == 10  # 5 rounds of the larger group, 2 groups
    for k, batch in enumerate(batches):
        assert set(batch) <= set(groups[k % 2])  # group 0, group 1, group 0, ...
    assert sorted(i for b in batches[0::2] for i in b) == list(range(10))  # the larger group once per epoch
    assert len(set(tuple(b) for b in batches[1::2])) >= 2  # the smaller one cycles with fresh permutations
    assert list(TaskBalancedSampler(groups, seed=1, epoch=0, batch_size=2, skip_batches=4)) == indices[8:]
    assert list(TaskBalancedSampler(groups, seed=1, epoch=1, batch_size=2)) != indices
    shards = [list(TaskBalancedSampler(groups, seed=1, epoch=0, batch_size=2, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(shards[0][:4]) & set(shards[1][:4])


def test_teacher_terms_on_unlabelled_images_only():
    task = build_task("semseg", num_classes=3)
    raw = torch.randn(2, 3, 4, 4, requires_grad=True)
    batch = {"targets": {"semseg": torch.zeros(2, 4, 4, dtype=torch.long)},
             "valid": {"semseg": torch.tensor([True, False])}}
    teacher = {"t": {"semseg": torch.randn(2, 3, 4, 4)}}
    every = Objective({"semseg": task}, {"semseg": ["t"]})({"semseg": raw}, batch, teacher)
    gaps = Objective({"semseg": task}, {"semseg": ["t"]}, teacher_targets="unlabelled")({"semseg": raw}, batch,
                                                                                          teacher)
    assert every[("semseg", "t")].mask.tolist() == [True, True]
    assert gaps[("semseg", "t")].mask.tolist() == [False, True]  # the labelled image learns from its label only
    torch.testing.assert_close(gaps[("semseg", "t")].value, every[("semseg", "t")].per_sample[1])


def test_mse_feature_imitation_and_disagreement_weights():
    features = build_task("f", type="features", channels=4, projector="linear", norm="none", grid_stride=4,
                          cos_weight=0.0, l1_weight=0.0, mse_weight=2.0, weight_by="detection")
    features.build_head(8, input_stride=4)
    student, teacher = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    assert float(features.distill_loss(student, teacher, kind="default")[0]) == pytest.approx(2.0)
    detection = build_task("detection", num_classes=2)
    detection.stride = 4
    det_teacher = torch.zeros(1, 6, 2, 2)
    det_teacher[0, 0, 0, 0] = 1.0  # the teacher sees an object in one cell; the student (logits -inf) nowhere
    det_raw = torch.full((1, 6, 2, 2), -30.0)
    weights = detection.disagreement(det_raw, det_teacher)
    assert weights.mean() == pytest.approx(1.0) and weights[0, 0, 0, 0] == pytest.approx(4.0)
    objective = Objective({"detection": detection, "f": features}, {"f": ["t"]})
    table = objective({"detection": det_raw, "f": student}, {"targets": {}, "valid": {}},
                      {"t": {"f": teacher, "detection": det_teacher}})
    # all the weight sits on the one cell: MSE 2 there, x4, averaged over 4 cells
    assert float(table[("f", "t")].value) == pytest.approx(2.0)


def test_a_task_teacher_weight_switches_one_term_off(tmp_path):
    from polydistill.config import DistillConfig
    from polydistill.distill.weighting import StepContext, build_weighting
    from polydistill.pipeline.train import check_names

    data = write_tiny_dataset(tmp_path / "d", 8, seed=1)
    cfg = tiny_config(data, None, max_steps=2)
    cfg["teachers"] = [{"name": "t", "path": str(tmp_path), "tasks": ["depth", "semseg"]}]
    cfg["distill"] = {"teacher_weights": {"dept/t": 0.0}}
    with pytest.raises(ConfigError, match="unknown teacher 'dept/t'.*depth/t"):
        check_names(load_config(base=cfg))
    tasks = {"depth": build_task("depth"), "semseg": build_task("semseg", num_classes=3)}
    raw = {"depth": torch.randn(2, 1, 4, 4), "semseg": torch.randn(2, 3, 4, 4)}
    teacher = {"t": {"depth": torch.rand(2, 1, 4, 4) + 1, "semseg": torch.randn(2, 3, 4, 4)}}
    batch = {"targets": {}, "valid": {}}
    table = Objective(tasks, {"depth": ["t"], "semseg": ["t"]})(raw, batch, teacher)
    ctx = StepContext(step=0, steps_per_epoch=1, seed=0)
    totals = {}
    for weights in ({}, {"semseg/t": 0.0}):
        weighting = build_weighting(DistillConfig(teacher_weights=weights), tasks, {"depth": ["t"], "semseg": ["t"]})
        loss, _ = weighting.total(weighting.task_losses(table, ctx), ctx, None)
        totals[len(weights)] = float(loss)
    depth_only = float(table[("depth", "t")].value)
    assert totals[1] == pytest.approx(depth_only, rel=1e-5) and totals[0] > totals[1]


def test_partial_labels_end_to_end_with_pseudo_labels(tiny_data, teacher_runs, tmp_path):
    """Images with boxes only or masks only, one batch per task per step, a segmentation teacher's masks on
    the images without masks; the detection head learns, and the teacher term never sees a labelled image."""
    labels = [("boxes",) if i % 2 else ("semseg",) for i in range(24)]
    data = write_tiny_dataset(tmp_path / "partial", 24, seed=5, labels=labels)
    val = write_tiny_dataset(tmp_path / "val", 8, seed=6, labels=("semseg", "boxes"))
    cfg = tiny_config(data, val, max_steps=4, val_every=4)
    cfg["tasks"] = {"semseg": {"distill": "hard"}, "detection": {"class_names": ["box"]}}
    cfg["data"]["sampler"] = "per_task"
    cfg["teachers"] = [{"name": "s", "path": str(teacher_runs["semseg"])}]
    cfg["distill"] = {"teacher_targets": "unlabelled", "teacher_cache": str(tmp_path / "cache")}
    result = train_run(load_config(base=cfg), tmp_path / "run")
    assert result.fit.steps == 4
    metrics = result.fit.last_metrics
    assert 0.0 <= metrics["detection"]["map50"] <= 1.0 and 0.0 <= metrics["semseg"]["miou"] <= 1.0
    spec = result.spec
    assert spec.tasks["detection"]["source_ids"] == [2]  # 'box' is class 2 of classes.yaml
    cfg["data"]["batch_size"] = 16  # 12 images per task: fewer than one batch
    with pytest.raises(ConfigError, match="only 12 training images carry"):
        train_run(load_config(base=cfg), tmp_path / "run2")
