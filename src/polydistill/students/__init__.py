"""Students: compact multi-task networks trained by distillation."""

from .student import Student, build_student, create_backbone

__all__ = ["Student", "build_student", "create_backbone"]
