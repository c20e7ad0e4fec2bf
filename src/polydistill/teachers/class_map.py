"""Label-space maps: a teacher trained on other classes (e.g. ADE20K's 150) teaches the student's classes.

A map file (YAML) names, for every student class, the teacher classes that belong to it (many-to-one);
teacher classes named nowhere are *unmapped*::

    teacher_classes: [wall, building, sky, floor, ...]   # optional: else the teacher's own id2label
    student_classes: [floor, wall, person]               # optional: checked against the student's
    map:
      floor: [floor, rug]
      wall: [wall]
      person: [person]

Mapping works on probabilities, never on arg-max labels: ``p_student[c] = Σ_{s ∈ map(c)} p_teacher[s]``.
The result has C + 1 channels of log-probabilities, the last one the mass of unmapped teacher classes;
the segmentation loss renormalises the first C and weights each pixel by ``1 − p_unmapped``, so a pixel
the teacher sees as "something we have no class for" teaches nothing instead of teaching a wrong class.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ConfigError
from ..registry import did_you_mean

EPS = 1e-6
#: maps shipped with polydistill, usable by name (``class_map: ade20k_to_cityscapes19``)
SHIPPED_MAPS = Path(__file__).resolve().parent.parent / "class_maps"


def find_class_map(path: str | Path) -> Path:
    """A map file by path, or a shipped map by name (e.g. ``ade20k_to_nyuv2_13``)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    shipped = SHIPPED_MAPS / f"{path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SHIPPED_MAPS.glob("*.yaml")) if SHIPPED_MAPS.is_dir() else []
    raise ConfigError(f"class map file not found: {path} (shipped maps: {', '.join(names) or 'none'})")


class ClassMap:
    def __init__(self, mapping: dict[str, list[str | int]], teacher_classes: list[str],
                 student_classes: list[str], source: str = "class map"):
        index = {name: i for i, name in enumerate(teacher_classes)}
        matrix = torch.zeros(len(student_classes) + 1, len(teacher_classes))
        used: dict[int, str] = {}
        for student_class, members in mapping.items():
            if student_class not in student_classes:
                raise ConfigError(f"{source}: '{student_class}' is not a student class"
                                  f"{did_you_mean(str(student_class), student_classes)}")
            row = student_classes.index(student_class)
            for member in members:
                if isinstance(member, int):
                    if not 0 <= member < len(teacher_classes):
                        raise ConfigError(f"{source}: teacher class id {member} is out of range "
                                          f"(the teacher has {len(teacher_classes)} classes)")
                    col = member
                elif member in index:
                    col = index[member]
                else:
                    raise ConfigError(f"{source}: '{member}' is not a teacher class"
                                      f"{did_you_mean(str(member), teacher_classes)}")
                if col in used:
                    raise ConfigError(f"{source}: teacher class '{teacher_classes[col]}' is mapped to both "
                                      f"'{used[col]}' and '{student_class}' (the map must be many-to-one)")
                used[col] = student_class
                matrix[row, col] = 1.0
        unmapped = [c for c in range(len(teacher_classes)) if c not in used]
        matrix[-1, unmapped] = 1.0
        self.matrix = matrix
        self.teacher_classes = list(teacher_classes)
        self.student_classes = list(student_classes)
        self.unmapped = [teacher_classes[c] for c in unmapped]

    @classmethod
    def from_file(cls, path: str | Path, teacher_classes: list[str] | None,
                  student_classes: list[str]) -> ClassMap:
        path = find_class_map(path)
        data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data.get("map"), dict):
            raise ConfigError(f"{path}: a class map needs a 'map:' section (student class -> teacher classes)")
        teacher_classes = data.get("teacher_classes") or teacher_classes
        if not teacher_classes:
            raise ConfigError(f"{path}: list 'teacher_classes' (the teacher does not name its classes)")
        declared = data.get("student_classes")
        if declared is not None and list(declared) != list(student_classes):
            raise ConfigError(f"{path}: student_classes {declared} differ from the student's {student_classes}")
        return cls(data["map"], list(teacher_classes), list(student_classes), source=str(path))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Teacher logits ``(B, K, H, W)`` → student log-probabilities ``(B, C + 1, H, W)`` (last: unmapped)."""
        if logits.shape[1] != self.matrix.shape[1]:
            raise ValueError(f"class map expects {self.matrix.shape[1]} teacher classes, the teacher gave "
                             f"{logits.shape[1]} channels")
        probs = torch.softmax(logits.float(), dim=1)
        mapped = torch.einsum("ck,bkhw->bchw", self.matrix.to(probs.device), probs)
        return torch.log(mapped.clamp_min(EPS))


def resolve_class_map(teacher: str, path: str | None, teacher_classes: list[str] | None,
                      student_classes: list[str] | None, num_teacher_classes: int) -> ClassMap | None:
    """The class map a segmentation teacher needs, or None when it already predicts the student's classes.

    Errors say what to do: a teacher with other classes and no map, a map without a segmentation student.
    """
    if path is None:
        if student_classes is not None and num_teacher_classes != len(student_classes):
            raise ConfigError(
                f"teacher '{teacher}' predicts {num_teacher_classes} classes but the student has "
                f"{len(student_classes)}; give the teacher a class_map (YAML: student class -> teacher classes)"
            )
        if student_classes is not None and teacher_classes and not _generic(teacher_classes):
            if [c.strip().lower() for c in teacher_classes] != [c.strip().lower() for c in student_classes]:
                raise ConfigError(
                    f"teacher '{teacher}' names its classes {teacher_classes[:6]}... but the student's are "
                    f"{student_classes[:6]}...; give the teacher a class_map (an identity map in the student's order "
                    "if they only differ in order or spelling)"
                )
        return None
    if student_classes is None:
        raise ConfigError(f"teacher '{teacher}': class_map needs a semseg task (with class names) in the student")
    names = teacher_classes or [str(i) for i in range(num_teacher_classes)]
    return ClassMap.from_file(path, names if teacher_classes else None, student_classes)


def _generic(names: list[str]) -> bool:
    """Placeholder names (``LABEL_3``, ``class_3``, ``3``) say nothing about what a class is: nothing to compare."""
    return all(re.fullmatch(r"(label_|class_)?\d+", str(n).strip().lower()) for n in names)


def _names(names: list[str]) -> list[str]:
    return [str(n).strip().lower() for n in names]


def _listed(names: list[str]) -> str:
    return f"{list(names[:30])}{' ...' if len(names) > 30 else ''}"


def match_classes(teacher: str, task: str, teacher_classes: list[str], student_classes: list[str], *,
                  unmapped_mass: bool) -> list[int] | ClassMap | None:
    """How a teacher's classes for ``task`` meet the student's, matched **by name** (case and spaces ignored).

    ``None``: the same classes in the same order (or placeholder names, ``class_3``, of the same count: nothing
    to compare). A list: per student class, the teacher's channel of that name — the same classes in another
    order, or (without ``unmapped_mass``) a teacher with more classes whose extra channels are dropped. A
    :class:`ClassMap` (with ``unmapped_mass``: outputs that are a distribution over classes): a teacher with
    more classes (their mass goes to the unmapped channel) or fewer (the student's others get none).
    Anything else is an error that lists both classes.
    """
    teacher_classes, student_classes = [str(c) for c in teacher_classes], [str(c) for c in student_classes]
    t, s = _names(teacher_classes), _names(student_classes)
    both = f"the teacher's: {_listed(teacher_classes)}; the student's: {_listed(student_classes)}"
    if t == s:
        return None
    if _generic(teacher_classes) or _generic(student_classes):
        if len(t) == len(s):
            return None
        raise ConfigError(f"teacher '{teacher}' predicts {len(t)} '{task}' classes but the student has {len(s)} "
                          f"({both}); train the student on the teacher's classes or name both lists in "
                          "classes.yaml so they can be matched by name")
    if len(set(t)) != len(t) or len(set(s)) != len(s):
        raise ConfigError(f"teacher '{teacher}': a '{task}' class name is listed twice ({both}); class names must "
                          "be unique to be matched")
    if set(t) == set(s) or (set(s) < set(t) and not unmapped_mass):
        return [t.index(n) for n in s]
    if unmapped_mass and (set(s) < set(t) or set(t) < set(s)):
        mapping: dict[str, list[str | int]] = {student_classes[k]: [t.index(n)] for k, n in enumerate(s) if n in t}
        return ClassMap(mapping, teacher_classes, student_classes, source=f"teacher '{teacher}' ({task} classes)")
    missing = [c for c, n in zip(student_classes, s, strict=True) if n not in t]
    raise ConfigError(f"teacher '{teacher}' has no '{task}' class named {missing} ({both}); classes are matched by "
                      "name: train the student on the teacher's class names, or give the teacher a class_map "
                      "(YAML: student class -> teacher classes)")
